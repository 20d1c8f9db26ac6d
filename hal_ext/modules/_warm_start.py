"""The warm-start coefficient schedule shared by WarmStartGradientReverseLayer and WarmStartGradientLayer."""
import math


def warm_start_coeff(alpha: float, lo: float, hi: float, iter_num: int, max_iters: float) -> float:
    r""":math:`\frac{2 (hi - lo)}{1 + \exp(-\alpha i / N)} - (hi - lo) + lo`: lo at step 0, rising to hi."""
    return 2.0 * (hi - lo) / (1.0 + math.exp(-alpha * iter_num / max_iters)) - (hi - lo) + lo


class WarmStartSchedule:
    """Step counter and coefficient of the warm-start layers (tllib's attribute names)."""

    def _init_schedule(self, alpha, lo, hi, max_iters, auto_step):
        self.alpha = alpha
        self.lo = lo
        self.hi = hi
        self.iter_num = 0
        self.max_iters = max_iters
        self.auto_step = auto_step

    def coeff(self) -> float:
        return warm_start_coeff(self.alpha, self.lo, self.hi, self.iter_num, self.max_iters)

    def step(self):
        """Increase the iteration number by 1."""
        self.iter_num += 1

#pragma once
#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>
#include <vector>

namespace hal_ext {

// Returns (loss, stats, argmax): stats (8, M) and argmax (2, M) are the per-row values the backward
// reads (M = number of samples), see mdd_math.h. The loss has dtype out_dtype (common/loss_dtype.h).
std::tuple<at::Tensor, at::Tensor, at::Tensor> classification_mdd(
    const at::Tensor& y_s, const at::Tensor& y_s_adv, const at::Tensor& y_t, const at::Tensor& y_t_adv,
    const std::optional<at::Tensor>& w_s, const std::optional<at::Tensor>& w_t, double margin, int64_t reduction,
    std::optional<at::ScalarType> out_dtype = std::nullopt);

// Returns (loss, stats, argmax, grad_y_s_adv, grad_y_t_adv): the forward and the gradients for a unit
// incoming gradient (ones for 'none'), which the backward then only scales. Used where the forward's
// exponentials are cheaper to keep than to recompute (the CPU kernels).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> _classification_mdd_with_grad(
    const at::Tensor& y_s, const at::Tensor& y_s_adv, const at::Tensor& y_t, const at::Tensor& y_t_adv,
    const std::optional<at::Tensor>& w_s, const std::optional<at::Tensor>& w_t, double margin, int64_t reduction);

std::tuple<at::Tensor, at::Tensor> _classification_mdd_backward(const at::Tensor& grad, const at::Tensor& y_s_adv,
                                                                const at::Tensor& y_t_adv, const at::Tensor& stats,
                                                                const at::Tensor& argmax, int64_t reduction);

at::Tensor regression_mdd(const at::Tensor& y_s, const at::Tensor& y_s_adv, const at::Tensor& y_t,
                          const at::Tensor& y_t_adv, const std::optional<at::Tensor>& w_s,
                          const std::optional<at::Tensor>& w_t, double margin, int64_t loss_kind, int64_t reduction,
                          std::optional<at::ScalarType> out_dtype = std::nullopt);

std::tuple<at::Tensor, at::Tensor> _regression_mdd_backward(
    const at::Tensor& grad, const at::Tensor& y_s, const at::Tensor& y_s_adv, const at::Tensor& y_t,
    const at::Tensor& y_t_adv, const std::optional<at::Tensor>& w_s, const std::optional<at::Tensor>& w_t,
    double margin, int64_t loss_kind, int64_t reduction);

// Shared argument checks and shape helpers of the CPU and CUDA kernels (defined in mdd.cpp).
namespace mdd_detail {

struct ClassificationGeometry {
  int64_t n = 0;  // batch
  int64_t c = 0;  // classes
  int64_t d = 1;  // prod(d1..dk): the class stride
  int64_t m = 0;  // samples = n * d
  std::vector<int64_t> sample_shape;
};

ClassificationGeometry check_classification(const at::Tensor& y_s, const at::Tensor& y_s_adv, const at::Tensor& y_t,
                                            const at::Tensor& y_t_adv, const std::optional<at::Tensor>& w_s,
                                            const std::optional<at::Tensor>& w_t, int64_t reduction);

void check_regression(const at::Tensor& y_s, const at::Tensor& y_s_adv, const at::Tensor& y_t,
                      const at::Tensor& y_t_adv, const std::optional<at::Tensor>& w_s,
                      const std::optional<at::Tensor>& w_t, int64_t loss_kind, int64_t reduction);

// The weight as a contiguous tensor of `shape` in `like`'s dtype, or an undefined tensor for None.
at::Tensor expand_weight(const std::optional<at::Tensor>& w, at::IntArrayRef shape, const at::Tensor& like);

void check_reduced_grad(const at::Tensor& grad, int64_t reduction, at::IntArrayRef sample_shape);

// The arguments of _classification_mdd_backward, for the CPU and CUDA kernels alike: shapes, dtypes,
// devices, and (on the host) every saved argmax inside [0, C), since the CPU kernel writes through it.
ClassificationGeometry check_classification_backward(const at::Tensor& grad, const at::Tensor& y_s_adv,
                                                     const at::Tensor& y_t_adv, const at::Tensor& stats,
                                                     const at::Tensor& argmax, int64_t reduction);

// Logits whose unit gradients a CPU forward writes itself ((N, C) float/double): the half types would
// round the unit gradient before the incoming gradient scales it, K-dim logits have no fused path.
bool fused_grad_supported(const at::Tensor& y_adv);

// _classification_mdd_with_grad as the forward, then the backward with a unit incoming gradient
// (every input the fused CPU kernel does not take, every device without one).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> classification_mdd_with_grad_composite(
    const at::Tensor& y_s, const at::Tensor& y_s_adv, const at::Tensor& y_t, const at::Tensor& y_t_adv,
    const std::optional<at::Tensor>& w_s, const std::optional<at::Tensor>& w_t, double margin, int64_t reduction);

// The regression op's inputs made contiguous and its weights expanded to the per-element shape:
// what both the CPU and the CUDA kernels read.
struct RegressionInputs {
  at::Tensor y_s, y_s_adv, y_t, y_t_adv, w_s, w_t;
};

RegressionInputs prepare_regression(const at::Tensor& y_s, const at::Tensor& y_s_adv, const at::Tensor& y_t,
                                    const at::Tensor& y_t_adv, const std::optional<at::Tensor>& w_s,
                                    const std::optional<at::Tensor>& w_t);

}  // namespace mdd_detail
}  // namespace hal_ext

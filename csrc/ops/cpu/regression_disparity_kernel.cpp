// CPU kernels of hal_ext::regression_disparity (math in pseudo_label_math.h and joints_loss_math.h).
//
//   (x, y)_{b,k} = first argmax of y[b, k] (truncated generator: (0, 0) unless the max is > 0)
//   target[b, k] = 'min': G_k                      (G_j: keypoint j's Gaussian, tllib's truncated or Fast)
//                  'max': clamp(sum_{j != k} G_j, 0, 1)   (exact double sum, one rounding: clamp_false)
//   loss         = JointsMSELoss / JointsKLLoss(y_adv, target, weight) (joints_loss_math.h)
//
// No target map is built. Row (b, k)'s target is a per-sample *base* outside keypoint k's window and
// the window's own values inside it: base = 0 in mode 'min'; in mode 'max' base_p = clamp_false(T_p)
// with T = the exact double sum of the sample's K windows (built once per sample, cache-resident), and
// inside the window x_p = clamp_false(T_p - G_k(p)). A row reads y_adv (and the base) in its dense
// passes and visits its window's pixels one by one, so 'max' costs what 'min' costs:
//   MSE: sum_p 0.5 (z_p - base_p)^2 + sum_{p in window} [0.5 (z_p - x_p)^2 - 0.5 (z_p - base_p)^2]
//   KL:  with x'_p = x_p + eps, S = sum_p x'_p, t_p = x'_p / S, P = sum_p x'_p log x'_p:
//        sum_p [xlogy(t_p, t_p) - t_p z_p] = (P - sum_p x'_p z_p) / S - log S
//        S, P and sum x'_p z_p: the base's sums (S and P once per sample) corrected over the window (in
//        mode 'min' the corrections of S and P once per distinct window: MinWindowTerms).
// Row sums accumulate in double across blocks (joints_loss_rows.h). A row with a non-finite logit takes the
// dense form instead (its inf/NaN as torch's). The backward evaluates every pixel's target from the
// same base and window (bit for bit the dense gradient) and writes only grad_y_adv. For float/double on
// the autograd path the forward writes that gradient for a unit incoming gradient itself
// (_regression_disparity_with_grad), each row's while the row is in cache: MSE as the backward; KL from
// the exp(z_p - max) that the loss's pass stored (kl_grad_from_exp: no second exp, a few ulp from the
// backward's), rows with a non-finite logit as the backward.
// The peaks, with the KL criterion (y and y_adv of one dtype): each row's exp pass reads a map of y
// together with its row of y_adv and finds that map's peak, so that y is not read in a pass of its own.
// In mode 'min' the map is the row's own (its target needs its own peak only); in mode 'max', where a
// sample's rows need all K of its peaks first, it is the same keypoint's map in the task's next sample
// (the task's first sample finds its K peaks on its own). Otherwise pass 1, one task per map, finds them.
// The Gaussian values of every window offset, once per call (GaussianTable). Pass 2, one task per range
// of samples. The windows and a row's target: regression_disparity_targets.h; the rows:
// regression_disparity_rows.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <type_traits>
#include <vector>

#include "common/cpu_parallel.h"
#include "ops/cpu/joints_loss_rows.h"
#include "ops/cpu/map_argmax.h"
#include "ops/cpu/regression_disparity_rows.h"
#include "ops/cpu/regression_disparity_targets.h"
#include "ops/joints_loss_common.h"
#include "ops/pseudo_label_math.h"
#include "ops/regression_disparity.h"
#include "ops/regression_disparity_args.h"

namespace hal_ext {
namespace {

namespace plm = pseudo_label_math;
using namespace joints_loss_cpu;
using namespace regression_disparity_rows;
using regression_disparity_args::Args;
using regression_disparity_args::check_args;

// Sample b of a task's samples [b0, b1).
struct TaskSample {
  int64_t b, b0, b1;
  bool first() const { return b == b0; }
};

// One task per range of samples, sample by sample: start(s) (the forward's per-sample state, its peaks when
// the task's rows find them); in mode 'max' the base built from its K windows; then info = on_sample(base,
// scratch, s) (scratch: n doubles for the KL criterion in mode 'max', the caller's per sample), and
// on_row(row, target, info) for its K rows (target: the row's window as `windows` holds it when the sample
// starts; rows that find their own peak build their own).
template <typename Start, typename OnSample, typename OnRow>
void for_each_sample(const Args& a, const RowWindows& windows, const Start& start, const OnSample& on_sample,
                     const OnRow& on_row) {
  const int64_t n = a.n();
  at::parallel_for(0, a.B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<double> total(a.max_mode ? n : 0), scratch(a.max_mode && a.kl ? n : 0);
    std::vector<float> base(a.max_mode ? n : 0);
    for (int64_t b = b0; b < b1; ++b) {
      const TaskSample s{b, b0, b1};
      start(s);
      if (a.max_mode) {
        std::fill(total.begin(), total.end(), 0.0);
        for (int64_t k = 0; k < a.K; ++k) {
          windows[b * a.K + k].for_each_chunk([&](int64_t p0, const float* v, int64_t count) {
            HAL_SIMD
            for (int64_t i = 0; i < kWindowLanes; ++i) {
              if (i < count) total[p0 + i] += static_cast<double>(v[i]);
            }
          });
        }
        HAL_SIMD
        for (int64_t p = 0; p < n; ++p) base[p] = plm::clamp_false(total[p]);
      }
      const float* base_ptr = a.max_mode ? base.data() : nullptr;
      const auto info = on_sample(base_ptr, scratch.data(), s);
      for (int64_t k = 0; k < a.K; ++k) {
        const int64_t r = b * a.K + k;
        on_row(r, SparseTarget{base_ptr, a.max_mode ? total.data() : nullptr, windows[r]}, info);
      }
    }
  });
}

// What the backward divides the incoming gradient by: the MSE's pixel count, and the row count for 'mean'.
template <typename acc_t>
acc_t grad_divisor(const Args& a) {
  const acc_t row_div = a.kl ? acc_t(1) : static_cast<acc_t>(a.n());
  return a.mean ? static_cast<acc_t>(a.rows()) * row_div : row_div;
}

// The peaks {x, y} of rows [r0, r1) of y (a scalar_t map per row): each map's first argmax, placed by the
// generator's rule.
template <typename scalar_t>
void find_peaks(const Args& a, const void* y, int64_t r0, int64_t r1, int64_t* peaks) {
  const scalar_t* yp = static_cast<const scalar_t*>(y);
  const int64_t n = a.n();
  for (int64_t r = r0; r < r1; ++r) {
    int64_t px = 0, py = 0;  // empty maps (H or W = 0) have no pixel to read
    if (n > 0) {
      const auto best = map_argmax(yp + r * n, n);
      plm::peak_position(best.index, best.value, a.W, /*max_rule=*/!a.fast, &px, &py);
    }
    peaks[2 * r] = px;
    peaks[2 * r + 1] = py;
  }
}

using FindPeaks = void (*)(const Args&, const void*, int64_t, int64_t, int64_t*);

// Where the forward's peaks come from (see the top of the file): pass 1; each KL row's exp pass, for its
// own map ('min'); or for the same keypoint's map in its task's next sample ('max').
enum class PeakSource { kPass, kOwnRow, kNextSample };

// The forward: (loss, peaks, stats). With `unit_grad` (float/double y_adv only), each row's gradient for
// a unit incoming gradient is also written right after the row's forward, while the row is in cache: bit
// for bit what the backward writes for grad = 1 (1 * w is w).
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward(const at::Tensor& y, const at::Tensor& y_adv,
                                                       const std::optional<at::Tensor>& weight, int64_t mode,
                                                       double sigma, int64_t generator, int64_t criterion,
                                                       int64_t reduction, double epsilon, at::Tensor* unit_grad) {
  const Args a = check_args(y_adv, weight, mode, sigma, generator, criterion, reduction);
  joints_loss::check_heatmap(y, "y");
  check_same_device(y_adv, "y_adv", y, "y");
  check_same_shape(y_adv, "y_adv", y, "y");
  const auto acc = joints_loss::acc_dtype(y_adv.scalar_type());
  const at::Tensor yc = y.contiguous(), z = y_adv.contiguous();
  const at::Tensor w = joints_loss::weight_rows(weight, acc);
  const int64_t rows = a.rows(), n = a.n();
  at::Tensor peaks = at::empty({a.B, a.K, 2}, y.options().dtype(at::kLong));
  at::Tensor stats = at::empty({a.B, a.K, 2}, y.options().dtype(acc));
  at::Tensor out = a.mean ? at::empty({}, y_adv.options().dtype(acc)) : at::empty({a.B, a.K}, y_adv.options().dtype(acc));
  int64_t* pk = peaks.mutable_data_ptr<int64_t>();
  if (unit_grad) *unit_grad = at::empty_like(z);
  FindPeaks find_peaks_of = nullptr;  // y's dtype may differ from y_adv's
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, yc.scalar_type(), "regression_disparity_peaks",
                                  [&] { find_peaks_of = &find_peaks<scalar_t>; });
  const void* yv = yc.const_data_ptr();
  // The KL rows find the peaks in their exp passes (y of y_adv's dtype), or pass 1 finds them all.
  const PeakSource source = !a.kl || yc.scalar_type() != z.scalar_type() ? PeakSource::kPass
                            : a.max_mode                                  ? PeakSource::kNextSample
                                                                          : PeakSource::kOwnRow;
  if (source == PeakSource::kPass && n > 0) {
    at::parallel_for(0, rows, row_grain(n), [&](int64_t r0, int64_t r1) { find_peaks_of(a, yv, r0, r1, pk); });
  }
  // Only the KL rows have statistics (and none without pixels): keep the output defined.
  if (n == 0 || !a.kl) stats.zero_();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "regression_disparity_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    const scalar_t* yp = source == PeakSource::kPass ? nullptr : static_cast<const scalar_t*>(yv);
    const acc_t* wp = w.defined() ? w.const_data_ptr<acc_t>() : nullptr;
    acc_t* st = stats.mutable_data_ptr<acc_t>();
    scalar_t* gp = unit_grad ? unit_grad->mutable_data_ptr<scalar_t>() : nullptr;
    const acc_t eps = static_cast<acc_t>(epsilon), divisor = grad_divisor<acc_t>(a);
    std::vector<acc_t> row(rows);
    auto run = [&](auto fast_tag) {
      RowWindows windows(a, source == PeakSource::kPass ? pk : nullptr, fast_tag);
      const auto set_peak = [&](int64_t r, int64_t index, acc_t value) {
        plm::peak_position(index, value, a.W, /*max_rule=*/!a.fast, &pk[2 * r], &pk[2 * r + 1]);
        windows.set(r, pk[2 * r], pk[2 * r + 1]);
      };
      // The window terms of each task (mode 'min', KL), by the task's first sample.
      std::vector<std::optional<MinWindowTerms<acc_t>>> min_terms(a.kl && !a.max_mode ? a.B : 0);
      const auto start_sample = [&](TaskSample s) {
        if (!min_terms.empty() && s.first()) min_terms[s.b].emplace(eps);
        if (source == PeakSource::kNextSample && s.first()) {  // no earlier sample of the task found these
          find_peaks_of(a, yv, s.b * a.K, (s.b + 1) * a.K, pk);
          windows.set_rows(pk, s.b * a.K, (s.b + 1) * a.K);
        }
      };
      struct SampleInfo {
        BaseSums sums;
        MinWindowTerms<acc_t>* min_terms;  // the task's (null: none)
        int64_t task_end;  // the row after the task's last
      };
      auto on_sample = [&](const float* base, double* scratch, TaskSample s) {
        return SampleInfo{a.kl ? base_sums<acc_t>(base, n, eps, scratch) : BaseSums{0, 0, nullptr},
                          min_terms.empty() ? nullptr : &*min_terms[s.b0], s.b1 * a.K};
      };
      for_each_sample(a, windows, start_sample, on_sample, [&](int64_t r, const SparseTarget& sample_target,
                                                               const SampleInfo& info) {
        const scalar_t* zr = zp + r * n;
        scalar_t* gr = gp ? gp + r * n : nullptr;  // this row's unit gradient, when asked for
        const acc_t scale = row_grad_scale(acc_t(1), wp, r, divisor);
        std::vector<float> dense;  // the dense target, for rows with a non-finite logit
        const auto dense_target = [&](const SparseTarget& t) {
          dense.resize(n);
          build_target(dense.data(), t, n);
          return dense.data();
        };
        acc_t v;
        if (a.kl) {
          // The map of y whose peak the row's exp pass finds: its own, the same keypoint's in the task's
          // next sample (when the task has one), or none (-1).
          const int64_t peak_row = source == PeakSource::kOwnRow                                  ? r
                                   : source == PeakSource::kNextSample && r + a.K < info.task_end ? r + a.K
                                                                                                    : -1;
          const scalar_t* yr = peak_row >= 0 ? yp + peak_row * n : nullptr;
          const FirstPass<acc_t> first = kl_first_pass<acc_t>(zr, n, sample_target.base, eps);
          // The next row of the task, and the map of y it reads: none past the task's end (another task's).
          const NextMaps<scalar_t> next{r + 1 < info.task_end ? zr + n : nullptr,
                                        yr && peak_row + 1 < info.task_end ? yr + n : nullptr};
          // A non-finite logit makes sum x'_p z_p non-finite: no exp pass, the dense form below.
          const bool finite = std::isfinite(first.z_sum);
          plm::ArgMax<acc_t> best{};
          double Z = 0;
          if (finite) {
            Z = gr ? kl_exp_pass<true, acc_t>(zr, n, first.m, gr, next, yr, &best)
                   : kl_exp_pass<false, acc_t>(zr, n, first.m, gr, next, yr, &best);
          } else if (yr) {
            best = map_argmax(yr, n);
          }
          if (yr) set_peak(peak_row, best.index, best.value);
          const SparseTarget t =
              source == PeakSource::kOwnRow ? SparseTarget{nullptr, nullptr, windows[r]} : sample_target;
          const WindowTerms* terms = info.min_terms ? &info.min_terms->of(t.window) : nullptr;
          std::optional<KLRowStats<acc_t>> k;
          if (finite) k = kl_sparse_stats<acc_t>(zr, n, t, first, Z, info.sums, terms, eps);
          if (k) {
            if (gr) kl_sparse_grad_from_exp<acc_t>(n, t, eps, *k, scale, gr);
          } else {
            k = kl_row_forward<acc_t>(zr, dense_target(t), n, eps);
            if (gr) kl_sparse_grad<acc_t>(zr, n, t, eps, k->lse, k->S, scale, gr);
          }
          v = k->loss;
          st[2 * r] = k->lse;
          st[2 * r + 1] = k->S;
        } else {
          const SparseTarget& t = sample_target;
          const double s =
              gr ? mse_sparse_sum<true, acc_t>(zr, n, t, scale, gr) : mse_sparse_sum<false, acc_t>(zr, n, t);
          v = std::isfinite(s) ? static_cast<acc_t>(s) : mse_row_sum<acc_t>(zr, dense_target(t), n);
        }
        row[r] = wp ? v * wp[r] : v;
      });
    };
    if (n == 0) {
      find_peaks_of(a, yv, 0, rows, pk);
      for (int64_t r = 0; r < rows; ++r) row[r] = a.kl ? acc_t(0) : (wp ? acc_t(0) * wp[r] : acc_t(0));
    } else if (a.fast) {
      run(std::true_type{});
    } else {
      run(std::false_type{});
    }
    acc_t* o = out.mutable_data_ptr<acc_t>();
    const acc_t none_div = a.kl ? acc_t(1) : static_cast<acc_t>(n);
    if (!a.mean) {
      for (int64_t r = 0; r < rows; ++r) o[r] = row[r] / none_div;
    } else {
      acc_t total = 0;
      for (const acc_t v : row) total += v;
      *o = total / (static_cast<acc_t>(rows) * none_div);
    }
  });
  return {out, peaks, stats};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> regression_disparity_forward_cpu(
    const at::Tensor& y, const at::Tensor& y_adv, const std::optional<at::Tensor>& weight, int64_t mode, double sigma,
    int64_t generator, int64_t criterion, int64_t reduction, double epsilon) {
  return forward(y, y_adv, weight, mode, sigma, generator, criterion, reduction, epsilon, nullptr);
}

at::Tensor regression_disparity_cpu(const at::Tensor& y, const at::Tensor& y_adv,
                                    const std::optional<at::Tensor>& weight, int64_t mode, double sigma,
                                    int64_t generator, int64_t criterion, int64_t reduction, double epsilon) {
  return std::get<0>(forward(y, y_adv, weight, mode, sigma, generator, criterion, reduction, epsilon, nullptr));
}

std::tuple<at::Tensor, at::Tensor> regression_disparity_with_grad_cpu(const at::Tensor& y, const at::Tensor& y_adv,
                                                                      const std::optional<at::Tensor>& weight,
                                                                      int64_t mode, double sigma, int64_t generator,
                                                                      int64_t criterion, int64_t reduction,
                                                                      double epsilon) {
  if (!regression_disparity_detail::fused_grad_supported(y_adv)) {  // half types (or input the checks reject)
    return regression_disparity_detail::with_grad_composite(y, y_adv, weight, mode, sigma, generator, criterion,
                                                            reduction, epsilon);
  }
  at::Tensor grad;
  at::Tensor loss = std::get<0>(forward(y, y_adv, weight, mode, sigma, generator, criterion, reduction, epsilon, &grad));
  return {loss, grad};
}

at::Tensor regression_disparity_backward_cpu(const at::Tensor& grad, const at::Tensor& y_adv,
                                             const std::optional<at::Tensor>& weight, const at::Tensor& peaks,
                                             const at::Tensor& stats, int64_t mode, double sigma, int64_t generator,
                                             int64_t criterion, int64_t reduction, double epsilon) {
  const Args a = check_args(y_adv, weight, mode, sigma, generator, criterion, reduction);
  joints_loss::check_grad(grad, y_adv, reduction, a.B, a.K);
  regression_disparity_args::check_saved(y_adv, peaks, stats, a);
  const auto acc = joints_loss::acc_dtype(y_adv.scalar_type());
  const at::Tensor z = y_adv.contiguous(), pk = peaks.contiguous(), st = stats.contiguous();
  const at::Tensor w = joints_loss::weight_rows(weight, acc);
  const at::Tensor g = grad.to(acc).contiguous();
  at::Tensor result = at::empty_like(z);
  const int64_t n = a.n();
  if (result.numel() == 0) return result;
  const int64_t* pp = pk.const_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "regression_disparity_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    const acc_t* wp = w.defined() ? w.const_data_ptr<acc_t>() : nullptr;
    const acc_t* gp = g.const_data_ptr<acc_t>();
    const acc_t* sp = st.const_data_ptr<acc_t>();
    scalar_t* o = result.mutable_data_ptr<scalar_t>();
    const acc_t eps = static_cast<acc_t>(epsilon), divisor = grad_divisor<acc_t>(a);
    auto run = [&](auto fast_tag) {
      const RowWindows windows(a, pp, fast_tag);
      const auto no_sample_info = [](const float*, double*, TaskSample) { return 0; };
      for_each_sample(a, windows, [](TaskSample) {}, no_sample_info, [&](int64_t r, const SparseTarget& t, int) {
        const acc_t scale = row_grad_scale(a.mean ? gp[0] : gp[r], wp, r, divisor);
        if (a.kl) {
          kl_sparse_grad<acc_t>(zp + r * n, n, t, eps, sp[2 * r], sp[2 * r + 1], scale, o + r * n);
        } else {
          mse_sparse_grad<acc_t>(zp + r * n, n, t, scale, o + r * n);
        }
      });
    };
    if (a.fast) run(std::true_type{});
    else run(std::false_type{});
  });
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(hal_ext, CPU, m) {
  m.impl("regression_disparity", &regression_disparity_cpu);
  m.impl("_regression_disparity_forward", &regression_disparity_forward_cpu);
  m.impl("_regression_disparity_backward", &regression_disparity_backward_cpu);
  m.impl("_regression_disparity_with_grad", &regression_disparity_with_grad_cpu);
}

}  // namespace hal_ext

// CPU kernels of hal_ext::mcd_entropy (math in mcd_entropy_math.h).
//   H(p) = -(1/M) sum_k log(m_k + 1e-6),  m_k = (1/N) sum_i p[i, k];  dH/dp[i, k] = -g / (M N (m_k + 1e-6))
// Forward: column sums over fixed row blocks x column chunks (the partition depends only on the shape,
// never on the thread count), block partials added in block order, then the vectorised log terms summed
// per column chunk and the chunk sums added in order: bitwise reproducible. Backward: the per-column
// gradient written once: the row that the autograd kernel broadcasts over the batch.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/checks.h"
#include "common/cpu_reduce.h"
#include "common/loss_dtype.h"
#include "common/macros.h"
#include "ops/mcd_entropy.h"
#include "ops/mcd_entropy_math.h"

namespace hal_ext {
namespace {

namespace math = mcd_entropy_math;

constexpr int64_t kColChunk = 4096;    // columns per task
constexpr int64_t kMaxRowBlocks = 64;  // bounds the partial-sum buffer to 64 * M
// Below this many elements the tasks run on the calling thread (same partition, same result): small
// losses are overhead-bound and waking threads costs more than it saves, worst on a busy machine.
constexpr int64_t kParallelMin = int64_t(1) << 18;

template <typename Body>
void maybe_parallel(int64_t tasks, int64_t elements, const Body& body) {
  if (elements < kParallelMin || tasks <= 1) {
    body(int64_t(0), tasks);
  } else {
    at::parallel_for(0, tasks, 1, body);
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// s[k] = sum over `rows` rows (stride m) of in[i * m + k], k < cols. A plain function: inside the
// lambdas that at::parallel_for runs, GCC reads captured pointers through the closure and leaves the
// loops scalar.
template <typename scalar_t, typename acc_t>
void column_sums(const scalar_t* in, int64_t m, int64_t rows, int64_t cols, acc_t* s) {
  HAL_SIMD
  for (int64_t k = 0; k < cols; ++k) s[k] = acc_t(0);
  for (int64_t i = 0; i < rows; ++i) {
    const scalar_t* row = in + i * m;
    HAL_SIMD
    for (int64_t k = 0; k < cols; ++k) s[k] += static_cast<acc_t>(row[k]);
  }
}

// Columns [0, cols) of the means: the `blocks` partial sums (stride m; null when the sums are already
// in `mean`) added in block order, divided by the count; returns the sum of their log terms.
template <typename acc_t>
acc_t means_and_log_sum(const acc_t* partial, int64_t blocks, int64_t m, int64_t cols, acc_t count, acc_t* mean) {
  if (partial) {
    HAL_SIMD
    for (int64_t k = 0; k < cols; ++k) mean[k] = partial[k];
    for (int64_t b = 1; b < blocks; ++b) {
      const acc_t* s = partial + b * m;
      HAL_SIMD
      for (int64_t k = 0; k < cols; ++k) mean[k] += s[k];
    }
  }
  acc_t log_sum = 0;
  HAL_SIMD_SUM(log_sum)
  for (int64_t k = 0; k < cols; ++k) {
    const acc_t mk = mean[k] / count;  // 0 / 0 = NaN for an empty batch, as torch.mean
    mean[k] = mk;
    log_sum += math::log_term<acc_t>(mk);
  }
  return log_sum;
}

// The one stored row of the gradient: o[k] = -g / (M N (m_k + 1e-6)).
template <typename scalar_t, typename acc_t>
void column_grads(acc_t g_over_mn, const acc_t* mean, int64_t m, scalar_t* o) {
  HAL_SIMD
  for (int64_t k = 0; k < m; ++k) o[k] = static_cast<scalar_t>(math::grad<acc_t>(g_over_mn, mean[k]));
}

int64_t row_size(const at::Tensor& t) {
  int64_t m = 1;
  for (int64_t d = 1; d < t.dim(); ++d) m *= t.size(d);
  return m;
}

std::tuple<at::Tensor, at::Tensor> mcd_entropy_cpu(const at::Tensor& predictions,
                                                   std::optional<at::ScalarType> out_dtype) {
  check_mcd_entropy_input(predictions);
  const at::Tensor p = predictions.contiguous();
  const int64_t n = p.size(0), m = row_size(p);
  const auto acc_type = at::toOpMathType(p.scalar_type());
  at::Tensor loss = at::empty({}, p.options().dtype(result_dtype(out_dtype, p.scalar_type())));
  at::Tensor means = at::empty(p.sizes().slice(1), p.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "mcd_entropy_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* in = p.const_data_ptr<scalar_t>();
    acc_t* mean = means.mutable_data_ptr<acc_t>();
    const int64_t chunk = std::max<int64_t>(1, std::min(m, kColChunk));
    const int64_t col_chunks = ceil_div(m, chunk);
    const int64_t rows_per_block =
        std::max({int64_t(1), ceil_div(kCpuReduceBlock, chunk), ceil_div(n, kMaxRowBlocks)});
    const int64_t row_blocks = std::max<int64_t>(1, ceil_div(n, rows_per_block));
    std::vector<acc_t> partial_buffer(row_blocks > 1 ? row_blocks * m : 0);
    acc_t* partial = row_blocks > 1 ? partial_buffer.data() : mean;

    // 1. Column sums of each row block (block b into partial[b * m ...]).
    maybe_parallel(row_blocks * col_chunks, n * m, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / col_chunks, c = t % col_chunks;
        const int64_t k0 = c * chunk, k1 = std::min(m, k0 + chunk);
        const int64_t i0 = b * rows_per_block, i1 = std::min(n, i0 + rows_per_block);
        column_sums(in + i0 * m + k0, m, i1 - i0, k1 - k0, partial + b * m + k0);
      }
    });

    // 2. Block partials in block order -> column means -> log terms, one sum per column chunk.
    std::vector<acc_t> log_sums(col_chunks, acc_t(0));
    const acc_t count = static_cast<acc_t>(n);
    maybe_parallel(col_chunks, row_blocks * m, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t k0 = c * chunk, k1 = std::min(m, k0 + chunk);
        log_sums[c] = means_and_log_sum(row_blocks > 1 ? partial + k0 : nullptr, row_blocks, m, k1 - k0, count,
                                        mean + k0);
      }
    });
    acc_t total = 0;
    for (const acc_t s : log_sums) total += s;
    with_scalar_or_acc_type<scalar_t>(loss.scalar_type(), [&](auto tag) {
      using out_t = typename decltype(tag)::type;
      *loss.mutable_data_ptr<out_t>() = static_cast<out_t>(math::loss<acc_t>(total, m));
    });
  });
  return {loss, means};
}

at::Tensor mcd_entropy_backward_cpu(const at::Tensor& grad, const at::Tensor& column_means, int64_t batch_size,
                                    std::optional<at::ScalarType> out_dtype) {
  const auto dtype = check_mcd_entropy_backward_input(grad, column_means, batch_size, out_dtype);
  const at::Tensor means = column_means.contiguous();
  const int64_t n = batch_size, m = means.numel();
  at::Tensor out = at::empty(means.sizes(), means.options().dtype(dtype));
  if (n == 0 || m == 0) return out.zero_();  // no row to differentiate: a defined (zero) column gradient
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "mcd_entropy_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    acc_t g = 0;
    with_scalar_or_acc_type<scalar_t>(grad.scalar_type(), [&](auto tag) {
      g = static_cast<acc_t>(*grad.const_data_ptr<typename decltype(tag)::type>());
    });
    const acc_t g_over_mn = g / (static_cast<acc_t>(m) * static_cast<acc_t>(n));
    column_grads(g_over_mn, means.const_data_ptr<acc_t>(), m, out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(hal_ext, CPU, m) {
  m.impl("mcd_entropy", &mcd_entropy_cpu);
  m.impl("_mcd_entropy_backward", &mcd_entropy_backward_cpu);
}

}  // namespace hal_ext

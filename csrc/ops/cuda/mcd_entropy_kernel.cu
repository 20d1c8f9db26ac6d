// CUDA kernels of hal_ext::mcd_entropy (math in mcd_entropy_math.h).
//   H(p) = -(1/M) sum_k log(m_k + 1e-6),  m_k = (1/N) sum_i p[i, k];  dH/dp[i, k] = -g / (M N (m_k + 1e-6))
// Forward, up to kDirectRows rows: ONE launch of the deterministic ordered sum over the M columns, each
// term summing its column over the rows (coalesced across threads), writing m_k and returning the log
// term. More rows: a first kernel writes per-row-split column sums (splits beyond grid.y's 65535 taken
// by a block-stride loop), which the terms then add in split order. No atomics: bitwise reproducible.
// Backward: one launch that reads g on the device and writes the M-element gradient row that the autograd kernel broadcasts over the batch.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/cuda_reduce.cuh"
#include "common/loss_dtype.h"
#include "ops/mcd_entropy.h"
#include "ops/mcd_entropy_math.h"

namespace hal_ext {
namespace {

namespace math = mcd_entropy_math;
constexpr int64_t kDirectRows = 2048;  // rows summed by one thread per column
constexpr int kThreads = 256;

// Column k summed over rows [0, n) of p (stride m), or over `splits` partial rows of `partials`.
template <typename scalar_t, typename acc_t>
struct ColumnLogTerm {
  const scalar_t* p;
  const acc_t* partials;
  acc_t* means;
  int64_t n, m, splits;
  __device__ acc_t operator()(int64_t k) const {
    acc_t s = 0;
    if (partials == nullptr) {
      for (int64_t i = 0; i < n; ++i) s += static_cast<acc_t>(p[i * m + k]);
    } else {
      for (int64_t r = 0; r < splits; ++r) s += partials[r * m + k];
    }
    const acc_t mk = s / static_cast<acc_t>(n);  // 0 / 0 = NaN for an empty batch, as torch.mean
    means[k] = mk;
    return math::log_term<acc_t>(mk);
  }
};

template <typename out_t, typename acc_t>
struct WriteLoss {
  out_t* out;
  int64_t m;
  __device__ void operator()(acc_t total) const { *out = static_cast<out_t>(math::loss<acc_t>(total, m)); }
};

// partials[r, k] = sum of p[i, k] over rows [r * kDirectRows, (r + 1) * kDirectRows), for the
// `splits` row splits r = blockIdx.y + j * gridDim.y (grid.y is capped at the device's 65535).
template <typename scalar_t, typename acc_t>
__global__ void column_partials_kernel(const scalar_t* p, acc_t* partials, int64_t n, int64_t m, int64_t splits) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= m) return;
  for (int64_t r = blockIdx.y; r < splits; r += gridDim.y) {
    const int64_t i0 = r * kDirectRows, i1 = i0 + kDirectRows < n ? i0 + kDirectRows : n;
    acc_t s = 0;
    for (int64_t i = i0; i < i1; ++i) s += static_cast<acc_t>(p[i * m + k]);
    partials[r * m + k] = s;
  }
}

template <typename scalar_t, typename acc_t, typename grad_t>
__global__ void mcd_entropy_backward_kernel(const grad_t* grad, const acc_t* means, scalar_t* out, int64_t n,
                                            int64_t m) {
  const acc_t g_over_mn = static_cast<acc_t>(*grad) / (static_cast<acc_t>(m) * static_cast<acc_t>(n));
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < m; k += stride) {
    out[k] = static_cast<scalar_t>(math::grad<acc_t>(g_over_mn, means[k]));
  }
}

std::tuple<at::Tensor, at::Tensor> mcd_entropy_cuda(const at::Tensor& predictions,
                                                    std::optional<at::ScalarType> out_dtype) {
  check_mcd_entropy_input(predictions);
  cuda::DeviceGuard guard(predictions.device());
  const at::Tensor p = predictions.contiguous();
  const int64_t n = p.size(0);
  int64_t m = 1;
  for (int64_t d = 1; d < p.dim(); ++d) m *= p.size(d);
  const auto acc_type = at::toOpMathType(p.scalar_type());
  at::Tensor loss = at::empty({}, p.options().dtype(result_dtype(out_dtype, p.scalar_type())));
  at::Tensor means = at::empty(p.sizes().slice(1), p.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "mcd_entropy_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* in = p.const_data_ptr<scalar_t>();
    acc_t* mean = means.mutable_data_ptr<acc_t>();
    with_scalar_or_acc_type<scalar_t>(loss.scalar_type(), [&](auto tag) {
      using out_t = typename decltype(tag)::type;
      const WriteLoss<out_t, acc_t> finish{loss.mutable_data_ptr<out_t>(), m};
      if (n <= kDirectRows || m == 0) {
        cuda::launch_ordered_sum<acc_t>(p, m, ColumnLogTerm<scalar_t, acc_t>{in, nullptr, mean, n, m, 0}, finish);
        return;
      }
      const int64_t splits = (n + kDirectRows - 1) / kDirectRows;
      at::Tensor partials = at::empty({splits, m}, p.options().dtype(acc_type));
      acc_t* part = partials.mutable_data_ptr<acc_t>();
      // more than 2048 rows of m columns in memory: m < 2^27, so the column blocks fit grid.x
      const dim3 grid(static_cast<unsigned>((m + kThreads - 1) / kThreads),
                      cuda::grid_dim(splits, cuda::max_grid_y()));
      cuda::launch(column_partials_kernel<scalar_t, acc_t>, {grid, kThreads}, in, part, n, m, splits);
      cuda::launch_ordered_sum<acc_t>(p, m, ColumnLogTerm<scalar_t, acc_t>{in, part, mean, n, m, splits}, finish);
    });
  });
  return {loss, means};
}

at::Tensor mcd_entropy_backward_cuda(const at::Tensor& grad, const at::Tensor& column_means, int64_t batch_size,
                                     std::optional<at::ScalarType> out_dtype) {
  const auto dtype = check_mcd_entropy_backward_input(grad, column_means, batch_size, out_dtype);
  check_same_device(column_means, "column_means", grad, "grad");
  cuda::DeviceGuard guard(column_means.device());
  const at::Tensor means = column_means.contiguous();
  const int64_t n = batch_size, m = means.numel();
  at::Tensor out = at::empty(means.sizes(), means.options().dtype(dtype));
  if (n == 0 || m == 0) return out.zero_();  // no row to differentiate: a defined (zero) column gradient
  const at::Tensor g = grad.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "mcd_entropy_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    with_scalar_or_acc_type<scalar_t>(g.scalar_type(), [&](auto tag) {
      using grad_t = typename decltype(tag)::type;
      cuda::launch(mcd_entropy_backward_kernel<scalar_t, acc_t, grad_t>,
          {cuda::elementwise_blocks(m, kThreads), kThreads}, g.const_data_ptr<grad_t>(),
          means.const_data_ptr<acc_t>(), out.mutable_data_ptr<scalar_t>(), n, m);
    });
  });
  return out;
}

}  // namespace

HAL_CUDA_LIBRARY_IMPL(m) {
  m.impl("mcd_entropy", &mcd_entropy_cuda);
  m.impl("_mcd_entropy_backward", &mcd_entropy_backward_cuda);
}

}  // namespace hal_ext

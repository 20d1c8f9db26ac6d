// CUDA kernels of hal_ext::classification_mdd and hal_ext::regression_mdd (math and formula in
// mdd_math.h). Classification forward: one launch (rows spread over warps for (N, C) logits, over
// threads along d for K-dim logits, so loads stay coalesced); reductions add the per-row losses in a
// fixed order (one launch for small inputs, a second ordered pass of block partials otherwise).
// Backward: one elementwise launch for both gradients, reading the incoming gradient on the device.
// No atomics, no host synchronisation, 64-bit indexing.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <limits>

#include "common/checks.h"
#include "common/cuda_reduce.cuh"
#include "common/loss_dtype.h"
#include "common/reduction.h"
#include "ops/mdd.h"
#include "ops/mdd_math.h"

namespace hal_ext {
namespace {

namespace math = mdd_math;

constexpr int kThreads = 256;

// out_t: the loss dtype, scalar_t or acc_t (common/loss_dtype.h).
template <typename scalar_t, typename acc_t, typename out_t>
struct ClsParams {
  const scalar_t* y[2];
  const scalar_t* z[2];
  const scalar_t* w[2];
  acc_t* stats;
  int64_t* argmax;
  out_t* out;
  acc_t* partials;
  int64_t m, c, d;
  acc_t margin;
  int reduction;
};

template <typename T, int LANES>
__device__ __forceinline__ T lanes_xor(T v, int offset) {
  return __shfl_xor_sync(0xffffffffu, v, offset, LANES);
}

template <typename out_t, typename acc_t>
__device__ __forceinline__ void write_reduced(out_t* out, acc_t total, int64_t m, int reduction) {
  *out = static_cast<out_t>(reduction == 1 ? total / static_cast<acc_t>(m) : total);
}

template <typename scalar_t, typename acc_t, typename out_t, int LANES>
__global__ void classification_mdd_forward_kernel(ClsParams<scalar_t, acc_t, out_t> p) {
  const int lane = threadIdx.x % LANES;
  const int64_t groups = static_cast<int64_t>(gridDim.x) * (blockDim.x / LANES);
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / LANES;
  acc_t partial = 0;
  for (int64_t r = first; r < p.m; r += groups) {
    const int64_t n = r / p.d, dd = r - n * p.d;
    const int64_t base = n * p.c * p.d + dd;
    acc_t mx[2], others[2], e_h[2], z_h[2];
    int64_t h[2];
    for (int side = 0; side < 2; ++side) {
      const scalar_t* y = p.y[side] + base;
      const scalar_t* z = p.z[side] + base;
      acc_t best = 0;
      int64_t bi = -1;
      for (int64_t c = lane; c < p.c; c += LANES) {
        const acc_t v = static_cast<acc_t>(y[c * p.d]);
        if (bi < 0 || math::argmax_takes(best, v)) {
          best = v;
          bi = c;
        }
      }
      for (int off = LANES / 2; off > 0; off >>= 1) {
        const acc_t ov = lanes_xor<acc_t, LANES>(best, off);
        const int64_t oi = lanes_xor<int64_t, LANES>(bi, off);
        if (oi >= 0 && (bi < 0 || math::argmax_second_wins(best, bi, ov, oi))) {
          best = ov;
          bi = oi;
        }
      }
      acc_t m = -std::numeric_limits<acc_t>::infinity();
      for (int64_t c = lane; c < p.c; c += LANES) m = math::max_of(m, static_cast<acc_t>(z[c * p.d]));
      for (int off = LANES / 2; off > 0; off >>= 1) m = math::max_of(m, lanes_xor<acc_t, LANES>(m, off));
      acc_t o = 0;
      for (int64_t c = lane; c < p.c; c += LANES) {
        const acc_t e = hal_exp(static_cast<acc_t>(z[c * p.d]) - m);
        o += c != bi ? e : acc_t(0);
      }
      for (int off = LANES / 2; off > 0; off >>= 1) o += lanes_xor<acc_t, LANES>(o, off);
      mx[side] = m;
      others[side] = o;
      h[side] = bi;
      z_h[side] = static_cast<acc_t>(z[bi * p.d]);
      e_h[side] = hal_exp(z_h[side] - m);
    }
    if (lane == 0) {
      acc_t inv_s, q_s, inv_t, q_t, coef_t;
      const acc_t l_s = math::source_term(mx[0], others[0], e_h[0], z_h[0], inv_s, q_s);
      const acc_t l_t = math::target_term(others[1], e_h[1], inv_t, q_t, coef_t);
      const acc_t w_s = p.w[0] ? static_cast<acc_t>(p.w[0][r]) : acc_t(1);
      const acc_t w_t = p.w[1] ? static_cast<acc_t>(p.w[1][r]) : acc_t(1);
      const acc_t loss = math::combine(p.margin, l_s, w_s, l_t, w_t);
      acc_t* st = p.stats;
      st[math::kStatMaxS * p.m + r] = mx[0];
      st[math::kStatInvS * p.m + r] = inv_s;
      st[math::kStatCoefS * p.m + r] = -p.margin * w_s;
      st[math::kStatQS * p.m + r] = q_s;
      st[math::kStatMaxT * p.m + r] = mx[1];
      st[math::kStatInvT * p.m + r] = inv_t;
      st[math::kStatCoefT * p.m + r] = w_t * coef_t;
      st[math::kStatQT * p.m + r] = q_t;
      p.argmax[r] = h[0];
      p.argmax[p.m + r] = h[1];
      if (p.reduction == 0) p.out[r] = static_cast<out_t>(loss);
      else partial += loss;
    }
  }
  if (p.reduction != 0) {
    const acc_t s = cuda::block_sum(partial);
    if (threadIdx.x == 0) {
      if (gridDim.x == 1) write_reduced(p.out, s, p.m, p.reduction);
      else p.partials[blockIdx.x] = s;
    }
  }
}

template <typename out_t, typename acc_t>
struct WriteReduced {
  out_t* out;
  int64_t m;
  int reduction;
  __device__ void operator()(acc_t total) const { write_reduced(out, total, m, reduction); }
};

template <typename scalar_t, typename acc_t>
__global__ void classification_mdd_backward_kernel(const acc_t* grad, const scalar_t* zs, const scalar_t* zt,
                                                   const acc_t* st, const int64_t* am, scalar_t* gs, scalar_t* gt,
                                                   int64_t m, int64_t c_count, int64_t d_count, int reduction) {
  const int64_t total = m * c_count;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const acc_t g_scalar = reduction == 0 ? acc_t(0) : (reduction == 1 ? grad[0] / static_cast<acc_t>(m) : grad[0]);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t n = i / (c_count * d_count);
    const int64_t rem = i - n * c_count * d_count;
    const int64_t c = rem / d_count;
    const int64_t r = n * d_count + (rem - c * d_count);
    const acc_t g = reduction == 0 ? grad[r] : g_scalar;
    for (int side = 0; side < 2; ++side) {
      const int k = side * 4;
      // The host checks the saved argmax only on the CPU (mdd_detail::check_classification_backward).
      CUDA_KERNEL_ASSERT(am[side * m + r] >= 0 && am[side * m + r] < c_count && "argmax must hold indices in [0, C)");
      const acc_t gc = g * st[(k + 2) * m + r];
      const acc_t e = hal_exp(static_cast<acc_t>((side == 0 ? zs : zt)[i]) - st[k * m + r]);
      const acc_t v = math::logit_grad(am[side * m + r] == c, gc * st[(k + 1) * m + r], e, gc * st[(k + 3) * m + r]);
      (side == 0 ? gs : gt)[i] = static_cast<scalar_t>(v);
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> classification_mdd_cuda(
    const at::Tensor& y_s_in, const at::Tensor& y_s_adv_in, const at::Tensor& y_t_in, const at::Tensor& y_t_adv_in,
    const std::optional<at::Tensor>& w_s_in, const std::optional<at::Tensor>& w_t_in, double margin,
    int64_t reduction, std::optional<at::ScalarType> out_dtype) {
  const auto geo = mdd_detail::check_classification(y_s_in, y_s_adv_in, y_t_in, y_t_adv_in, w_s_in, w_t_in, reduction);
  cuda::DeviceGuard guard(y_s_in.device());
  const at::Tensor y_s = y_s_in.contiguous(), y_s_adv = y_s_adv_in.contiguous();
  const at::Tensor y_t = y_t_in.contiguous(), y_t_adv = y_t_adv_in.contiguous();
  const at::Tensor w_s = mdd_detail::expand_weight(w_s_in, geo.sample_shape, y_s_adv);
  const at::Tensor w_t = mdd_detail::expand_weight(w_t_in, geo.sample_shape, y_s_adv);
  const auto dtype = y_s_adv.scalar_type();
  const auto acc_dtype = at::toOpMathType(dtype);
  const int64_t M = geo.m;
  at::Tensor stats = at::empty({math::kStats, M}, y_s_adv.options().dtype(acc_dtype));
  at::Tensor argmax = at::empty({2, M}, y_s_adv.options().dtype(at::kLong));
  const bool none = reduction == 0;
  const auto loss_options = y_s_adv.options().dtype(result_dtype(out_dtype, dtype));
  at::Tensor out = none ? at::empty(geo.sample_shape, loss_options) : at::empty({}, loss_options);
  if (none && M == 0) return {out, stats, argmax};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "classification_mdd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    with_scalar_or_acc_type<scalar_t>(out.scalar_type(), [&](auto tag) {
      using out_t = typename decltype(tag)::type;
      ClsParams<scalar_t, acc_t, out_t> p;
      p.y[0] = y_s.const_data_ptr<scalar_t>();
      p.y[1] = y_t.const_data_ptr<scalar_t>();
      p.z[0] = y_s_adv.const_data_ptr<scalar_t>();
      p.z[1] = y_t_adv.const_data_ptr<scalar_t>();
      p.w[0] = w_s.defined() ? w_s.const_data_ptr<scalar_t>() : nullptr;
      p.w[1] = w_t.defined() ? w_t.const_data_ptr<scalar_t>() : nullptr;
      p.stats = stats.mutable_data_ptr<acc_t>();
      p.argmax = argmax.mutable_data_ptr<int64_t>();
      p.out = out.mutable_data_ptr<out_t>();
      p.partials = nullptr;
      p.m = M;
      p.c = geo.c;
      p.d = geo.d;
      p.margin = static_cast<acc_t>(margin);
      p.reduction = static_cast<int>(reduction);
      const bool warp_rows = geo.d == 1;
      const int64_t rows_per_block = warp_rows ? kThreads / 32 : kThreads;
      int64_t blocks = std::max<int64_t>(1, std::min<int64_t>((M + rows_per_block - 1) / rows_per_block, 4096));
      if (!none && M * geo.c <= (int64_t(1) << 18)) blocks = 1;  // small: one launch, one block
      at::Tensor partials;
      if (blocks > 1 && !none) {
        partials = at::empty({blocks}, y_s_adv.options().dtype(acc_dtype));
        p.partials = partials.mutable_data_ptr<acc_t>();
      }
      if (warp_rows) {
        cuda::launch(classification_mdd_forward_kernel<scalar_t, acc_t, out_t, 32>,
                     {static_cast<unsigned>(blocks), kThreads}, p);
      } else {
        cuda::launch(classification_mdd_forward_kernel<scalar_t, acc_t, out_t, 1>,
                     {static_cast<unsigned>(blocks), kThreads}, p);
      }
      if (blocks > 1 && !none) {
        cuda::launch(cuda::sum_partials_kernel<acc_t, WriteReduced<out_t, acc_t>>, {1, cuda::kReduceThreads},
                     p.partials, blocks, WriteReduced<out_t, acc_t>{p.out, M, p.reduction});
      }
    });
  });
  return {out, stats, argmax};
}

std::tuple<at::Tensor, at::Tensor> classification_mdd_backward_cuda(const at::Tensor& grad, const at::Tensor& y_s_adv_in,
                                                                    const at::Tensor& y_t_adv_in,
                                                                    const at::Tensor& stats_in,
                                                                    const at::Tensor& argmax_in, int64_t reduction) {
  const auto geo =
      mdd_detail::check_classification_backward(grad, y_s_adv_in, y_t_adv_in, stats_in, argmax_in, reduction);
  const int64_t M = geo.m, C = geo.c, d = geo.d;
  const auto acc_dtype = at::toOpMathType(y_s_adv_in.scalar_type());
  cuda::DeviceGuard guard(y_s_adv_in.device());
  const at::Tensor zs = y_s_adv_in.contiguous(), zt = y_t_adv_in.contiguous();
  const at::Tensor stats = stats_in.contiguous(), argmax = argmax_in.contiguous();
  const at::Tensor g = grad.to(acc_dtype).contiguous();
  at::Tensor gs = at::empty(zs.sizes(), zs.options()), gt = at::empty(zt.sizes(), zt.options());
  const int64_t total = M * C;
  if (total == 0) return {gs, gt};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, zs.scalar_type(), "classification_mdd_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    cuda::launch(classification_mdd_backward_kernel<scalar_t, acc_t>, {cuda::elementwise_blocks(total, kThreads), kThreads},
        g.const_data_ptr<acc_t>(), zs.const_data_ptr<scalar_t>(), zt.const_data_ptr<scalar_t>(),
        stats.const_data_ptr<acc_t>(), argmax.const_data_ptr<int64_t>(), gs.mutable_data_ptr<scalar_t>(),
        gt.mutable_data_ptr<scalar_t>(), M, C, d, static_cast<int>(reduction));
  });
  return {gs, gt};
}

// ---- regression ----

template <typename scalar_t, typename acc_t>
struct RegTerm {
  const scalar_t *ys, *zs, *yt, *zt, *ws, *wt;
  acc_t margin;
  int kind;
  __device__ acc_t operator()(int64_t i) const {
    const acc_t l_s = math::regression_term<acc_t>(static_cast<acc_t>(zs[i]) - static_cast<acc_t>(ys[i]), kind);
    const acc_t l_t = math::regression_term<acc_t>(static_cast<acc_t>(zt[i]) - static_cast<acc_t>(yt[i]), kind);
    return math::combine<acc_t>(margin, l_s, ws ? static_cast<acc_t>(ws[i]) : acc_t(1), l_t,
                                wt ? static_cast<acc_t>(wt[i]) : acc_t(1));
  }
};

template <typename scalar_t, typename acc_t, typename out_t>
__global__ void regression_none_kernel(RegTerm<scalar_t, acc_t> term, out_t* out, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    out[i] = static_cast<out_t>(term(i));
  }
}

template <typename scalar_t, typename acc_t>
__global__ void regression_backward_kernel(RegTerm<scalar_t, acc_t> t, const acc_t* grad, scalar_t* gs, scalar_t* gt,
                                           int64_t n, int reduction) {
  const acc_t g_scalar = reduction == 0 ? acc_t(0) : (reduction == 1 ? grad[0] / static_cast<acc_t>(n) : grad[0]);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const acc_t g = reduction == 0 ? grad[i] : g_scalar;
    const acc_t a_s = (g * (t.ws ? static_cast<acc_t>(t.ws[i]) : acc_t(1))) * -t.margin;
    const acc_t a_t = g * (t.wt ? static_cast<acc_t>(t.wt[i]) : acc_t(1));
    gs[i] = static_cast<scalar_t>(
        a_s * math::regression_grad<acc_t>(static_cast<acc_t>(t.zs[i]) - static_cast<acc_t>(t.ys[i]), t.kind));
    gt[i] = static_cast<scalar_t>(
        a_t * math::regression_grad<acc_t>(static_cast<acc_t>(t.zt[i]) - static_cast<acc_t>(t.yt[i]), t.kind));
  }
}

template <typename scalar_t, typename acc_t>
RegTerm<scalar_t, acc_t> make_term(const mdd_detail::RegressionInputs& in, double margin, int64_t kind) {
  return {in.y_s.const_data_ptr<scalar_t>(), in.y_s_adv.const_data_ptr<scalar_t>(), in.y_t.const_data_ptr<scalar_t>(),
          in.y_t_adv.const_data_ptr<scalar_t>(), in.w_s.defined() ? in.w_s.const_data_ptr<scalar_t>() : nullptr,
          in.w_t.defined() ? in.w_t.const_data_ptr<scalar_t>() : nullptr, static_cast<acc_t>(margin),
          static_cast<int>(kind)};
}

at::Tensor regression_mdd_cuda(const at::Tensor& y_s, const at::Tensor& y_s_adv, const at::Tensor& y_t,
                               const at::Tensor& y_t_adv, const std::optional<at::Tensor>& w_s,
                               const std::optional<at::Tensor>& w_t, double margin, int64_t loss_kind,
                               int64_t reduction, std::optional<at::ScalarType> out_dtype) {
  mdd_detail::check_regression(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t, loss_kind, reduction);
  cuda::DeviceGuard guard(y_s.device());
  const mdd_detail::RegressionInputs in = mdd_detail::prepare_regression(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t);
  const int64_t n = in.y_s.numel();
  const bool none = reduction == 0;
  const auto loss_options = y_s_adv.options().dtype(result_dtype(out_dtype, y_s_adv.scalar_type()));
  at::Tensor out = none ? at::empty(y_s.sizes(), loss_options) : at::empty({}, loss_options);
  if (none && n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y_s_adv.scalar_type(), "regression_mdd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto term = make_term<scalar_t, acc_t>(in, margin, loss_kind);
    with_scalar_or_acc_type<scalar_t>(out.scalar_type(), [&](auto tag) {
      using out_t = typename decltype(tag)::type;
      if (none) {
        cuda::launch(regression_none_kernel<scalar_t, acc_t, out_t>, {cuda::elementwise_blocks(n, kThreads), kThreads},
                     term, out.mutable_data_ptr<out_t>(), n);
      } else {
        cuda::launch_ordered_sum<acc_t>(in.y_s_adv, n, term,
                                        WriteReduced<out_t, acc_t>{out.mutable_data_ptr<out_t>(), n,
                                                                   static_cast<int>(reduction)});
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> regression_mdd_backward_cuda(
    const at::Tensor& grad, const at::Tensor& y_s, const at::Tensor& y_s_adv, const at::Tensor& y_t,
    const at::Tensor& y_t_adv, const std::optional<at::Tensor>& w_s, const std::optional<at::Tensor>& w_t,
    double margin, int64_t loss_kind, int64_t reduction) {
  mdd_detail::check_regression(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t, loss_kind, reduction);
  mdd_detail::check_reduced_grad(grad, reduction, y_s.sizes());
  check_same_device(y_s, "y_s", grad, "grad");
  cuda::DeviceGuard guard(y_s.device());
  const mdd_detail::RegressionInputs in = mdd_detail::prepare_regression(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t);
  const int64_t n = in.y_s.numel();
  at::Tensor gs = at::empty(y_s_adv.sizes(), y_s_adv.options()), gt = at::empty(y_t_adv.sizes(), y_t_adv.options());
  if (n == 0) return {gs, gt};
  const at::Tensor g = grad.to(at::toOpMathType(y_s_adv.scalar_type())).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y_s_adv.scalar_type(), "regression_mdd_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    cuda::launch(regression_backward_kernel<scalar_t, acc_t>, {cuda::elementwise_blocks(n, kThreads), kThreads},
        make_term<scalar_t, acc_t>(in, margin, loss_kind), g.const_data_ptr<acc_t>(), gs.mutable_data_ptr<scalar_t>(),
        gt.mutable_data_ptr<scalar_t>(), n, static_cast<int>(reduction));
  });
  return {gs, gt};
}

}  // namespace

HAL_CUDA_LIBRARY_IMPL(m) {
  m.impl("classification_mdd", &classification_mdd_cuda);
  m.impl("_classification_mdd_backward", &classification_mdd_backward_cuda);
  m.impl("regression_mdd", &regression_mdd_cuda);
  m.impl("_regression_mdd_backward", &regression_mdd_backward_cuda);
}

}  // namespace hal_ext

// Deliberately broken (and one correct) kernels that show the emulator's checks fire (emulated build
// only; tests/test_simt.py). torch.ops.hal_simt.selftest(case) runs one of them and returns what it
// wrote; a detected error raises.
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <stdexcept>
#include <string>

#include "common/cuda_launch.cuh"

namespace hal_ext {
namespace {

// Threads below `split` wait at one __syncthreads, the others at another: divergent.
__global__ void divergent_barrier_kernel(float* out, int split) {
  if (static_cast<int>(threadIdx.x) < split) {
    out[threadIdx.x] = 1.0f;
    __syncthreads();
    out[threadIdx.x] += 1.0f;
  } else {
    __syncthreads();
    out[threadIdx.x] = 3.0f;
  }
}

// Every thread shuffles with a full mask: wrong in a partial last warp.
__global__ void full_mask_shuffle_kernel(float* out) {
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, static_cast<float>(threadIdx.x), 1);
}

// out[t] = value of lane t + 1 (width 8 segments), via __shfl_xor_sync then __shfl_down_sync.
__global__ void shuffle_kernel(float* out) {
  const float v = static_cast<float>(threadIdx.x);
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, v, 1, 8);
  out[blockDim.x + threadIdx.x] = __shfl_xor_sync(0xffffffffu, v, 3);
}

// Reads shared memory no thread wrote: the poison.
__global__ void uninitialised_shared_kernel(float* out) {
  HAL_SHARED(float, cells, 4);
  out[threadIdx.x] = cells[threadIdx.x];
}

// out[i] = the i-th block to run (block order).
__global__ void block_order_kernel(int64_t* out, int64_t* counter) {
  if (threadIdx.x == 0) out[(*counter)++] = blockIdx.x;
}

__global__ void empty_kernel() {}

// Thread 3 throws (host C++ in emulated device code, say a failing check in a helper) while the others
// go on to a barrier: the launch reports it, and abandons the threads at the barrier.
__global__ void throwing_kernel(float* out) {
  out[threadIdx.x] = 1.0f;
  if (threadIdx.x == 3) throw std::runtime_error("thrown by thread 3");
  __syncthreads();
  out[threadIdx.x] = 2.0f;
}

at::Tensor selftest(const std::string& name) {
  const auto opts = at::TensorOptions().dtype(at::kFloat);
  if (name == "divergent_barrier") {
    at::Tensor out = at::zeros({64}, opts);
    cuda::launch(divergent_barrier_kernel, {1, 64}, out.mutable_data_ptr<float>(), 5);
    return out;
  }
  if (name == "partial_warp_full_mask") {
    at::Tensor out = at::zeros({40}, opts);
    cuda::launch(full_mask_shuffle_kernel, {1, 40}, out.mutable_data_ptr<float>());
    return out;
  }
  if (name == "shuffles") {
    at::Tensor out = at::zeros({64}, opts);
    cuda::launch(shuffle_kernel, {1, 32}, out.mutable_data_ptr<float>());
    return out;
  }
  if (name == "uninitialised_shared") {
    at::Tensor out = at::zeros({4}, opts);
    cuda::launch(uninitialised_shared_kernel, {1, 4}, out.mutable_data_ptr<float>());
    return out;
  }
  if (name == "block_order") {
    at::Tensor out = at::zeros({64}, at::kLong), counter = at::zeros({1}, at::kLong);
    cuda::launch(block_order_kernel, {64, 32}, out.mutable_data_ptr<int64_t>(), counter.mutable_data_ptr<int64_t>());
    return out;
  }
  if (name == "kernel_exception") {
    at::Tensor out = at::zeros({64}, opts);
    cuda::launch(throwing_kernel, {1, 64}, out.mutable_data_ptr<float>());
    return out;
  }
  if (name == "grid_y") {
    cuda::launch(empty_kernel, {dim3(1, static_cast<unsigned>(cuda::max_grid_y() + 1)), 32});
    return at::Tensor();
  }
  if (name == "block_too_large") {
    cuda::launch(empty_kernel, {1, 1025});
    return at::Tensor();
  }
  if (name == "shared_without_opt_in") {
    cuda::launch(empty_kernel, {1, 32, static_cast<size_t>(cuda::max_dynamic_shared() + 1)});
    return at::Tensor();
  }
  TORCH_CHECK_VALUE(false, "unknown selftest case '", name, "'");
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(hal_simt, m) { m.def("selftest(str name) -> Tensor", &selftest); }

}  // namespace hal_ext

#pragma once
// What the CUDA kernels need from the CUDA runtime, in one place, so that csrc/ops/cuda/*.cu compile
// both with nvcc (the real thing) and, with HAL_SIMT defined, with the host C++ compiler against the
// SIMT emulator (csrc/simt/simt.h; scripts/build_simt.py, tests/test_simt.py):
// - cuda::launch(kernel, {grid, block, dynamic_shared}, args...): nvcc: the triple-chevron launch on
//   the current stream, then the launch check; emulated: the emulator runs every thread of the grid.
// - HAL_SHARED(T, name, N) and HAL_DYNAMIC_SHARED(T, name): static and dynamic (extern) shared arrays.
// - cuda::DeviceGuard, the device limits the launchers plan with (grid sizes, shared memory, SMs),
//   and HAL_CUDA_LIBRARY_IMPL(m): registration of the launchers (emulated: namespace hal_ext_simt,
//   dispatch key CPU, so tests call them on CPU tensors).
#include <c10/core/Device.h>
#include <c10/util/Exception.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

#if defined(HAL_SIMT)
#include <source_location>
#include <tuple>

#include "simt/simt.h"
#define HAL_SHARED(T, name, N)                                             \
  alignas(16) static T name[N];                                            \
  static uint64_t name##_block_stamp = 0;                                  \
  ::hal_simt::shared_array(name, sizeof(name), &name##_block_stamp)
#define HAL_DYNAMIC_SHARED(T, name) T* name = static_cast<T*>(::hal_simt::dynamic_shared())
#define HAL_CUDA_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(hal_ext_simt, CPU, m)
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#define HAL_SHARED(T, name, N) __shared__ alignas(16) T name[N]
#define HAL_DYNAMIC_SHARED(T, name) extern __shared__ T name[]
#define HAL_CUDA_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(hal_ext, CUDA, m)
#endif

namespace hal_ext {
namespace cuda {

struct LaunchConfig {
  dim3 grid, block;
  size_t dynamic_shared = 0;
#if defined(HAL_SIMT)
  std::source_location where;
  LaunchConfig(dim3 g, dim3 b, size_t smem = 0, std::source_location w = std::source_location::current())
      : grid(g), block(b), dynamic_shared(smem), where(w) {}
#else
  LaunchConfig(dim3 g, dim3 b, size_t smem = 0) : grid(g), block(b), dynamic_shared(smem) {}
#endif
};

// kernel<<<grid, block, dynamic_shared, current stream>>>(args...), then the launch check. Arguments
// convert to the kernel's parameter types, as in a triple-chevron launch.
template <typename... Params>
void launch(void (*kernel)(Params...), const LaunchConfig& c, std::type_identity_t<Params>... args) {
#if defined(HAL_SIMT)
  const std::tuple<Params...> params(args...);
  const std::string where = std::string(c.where.file_name()) + ":" + std::to_string(c.where.line());
  ::hal_simt::launch(reinterpret_cast<const void*>(kernel), where.c_str(), c.grid, c.block, c.dynamic_shared,
                     [&params, kernel] {
                       std::tuple<Params...> own = params;  // each thread its own copy of the parameters
                       std::apply(kernel, own);
                     });
#else
  kernel<<<c.grid, c.block, c.dynamic_shared, c10::cuda::getCurrentCUDAStream()>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
}

// Lets `kernel` use up to `bytes` of dynamic shared memory (above 48 KiB needs this opt-in).
template <typename... Params>
void allow_dynamic_shared(void (*kernel)(Params...), size_t bytes) {
#if defined(HAL_SIMT)
  ::hal_simt::set_max_dynamic_shared(reinterpret_cast<const void*>(kernel), static_cast<int64_t>(bytes));
#else
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
#endif
}

#if defined(HAL_SIMT)
struct DeviceGuard {
  explicit DeviceGuard(c10::Device) {}
};
inline int64_t max_grid_x() { return ::hal_simt::limits().max_grid_x; }
inline int64_t max_grid_y() { return ::hal_simt::limits().max_grid_yz; }
inline int64_t max_dynamic_shared() { return ::hal_simt::limits().max_dynamic_shared; }
inline int64_t max_dynamic_shared_optin(c10::DeviceIndex) { return ::hal_simt::limits().max_dynamic_shared_optin; }
inline int multiprocessors(c10::DeviceIndex) { return static_cast<int>(::hal_simt::limits().multiprocessors); }
#else
using DeviceGuard = c10::cuda::CUDAGuard;
inline int64_t max_grid_x() { return (int64_t(1) << 31) - 1; }
inline int64_t max_grid_y() { return 65535; }
inline int64_t max_dynamic_shared() { return 48 * 1024; }
inline int64_t max_dynamic_shared_optin(c10::DeviceIndex device) {
  int bytes = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return bytes;
}
inline int multiprocessors(c10::DeviceIndex device) {
  static int cached[64] = {0};
  if (device >= 0 && device < 64 && cached[device] > 0) return cached[device];
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  if (device >= 0 && device < 64) cached[device] = count;
  return count;
}
#endif

// A grid dimension for `count` blocks that a kernel covers with a block-stride loop: at most `limit`.
inline unsigned grid_dim(int64_t count, int64_t limit) {
  TORCH_INTERNAL_ASSERT(count >= 1, "a grid needs at least one block, got ", count);
  return static_cast<unsigned>(count < limit ? count : limit);
}

}  // namespace cuda
}  // namespace hal_ext

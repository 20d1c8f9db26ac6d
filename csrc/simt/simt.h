#pragma once
// A small SIMT emulator: runs the CUDA kernels of csrc/ops/cuda/ on the CPU, from the very source
// nvcc compiles, so that CI exercises them without a GPU (tests/test_simt.py). The emulated build
// (scripts/build_simt.py) compiles each .cu file as C++ with HAL_SIMT defined; the kernels reach
// this header through common/cuda_launch.cuh.
//
// Model
// - A launch runs its blocks one at a time, in an order shuffled by a seeded generator (no kernel
//   may depend on block order). Each CUDA thread of a block is a fiber (ucontext) with its own
//   stack; `threadIdx`, `blockIdx`, `blockDim`, `gridDim` are globals the scheduler sets before it
//   switches to a fiber. Why fibers and not one OS thread per CUDA thread: the CI machine has two
//   shared cores, and a 512-thread block that meets a barrier every few lines would cost hundreds of
//   kernel-level context switches per barrier; fibers switch in user space, a stuck barrier is
//   detected exactly (no timeout), and a seed replays a schedule. The threads still interleave: at
//   every __syncthreads and warp intrinsic the scheduler switches, and it resumes a random lane of
//   the runnable warp with the highest priority, the warps' priorities a random permutation per
//   block: between two barriers the warps run one after another in a random order (the most
//   adverse order for a missing barrier: a warp reads what later warps have not written yet, poison).
// - __syncthreads is a block barrier over the threads that have not exited (sm_70 semantics). When
//   every live thread waits but not all at the same __syncthreads call site (divergent control
//   flow), the launch fails with a report naming the threads; it never hangs.
// - __shfl_down_sync / __shfl_xor_sync: a rendezvous of the lanes named in the mask, exact 32-lane
//   semantics including `width`. Every lane in the mask must exist (partial warps!), be alive, and
//   arrive at the same intrinsic with the same mask, width and delta; a source lane outside the mask
//   is an error (undefined on hardware).
// - Shared memory: static __shared__ arrays (HAL_SHARED) are function statics, correct because
//   blocks are serialised; dynamic shared memory (HAL_DYNAMIC_SHARED) is a heap buffer of exactly
//   the launch's size (ASan sees overflows). Both are filled with a poison at every block start:
//   the 32-bit word 0xFFF5A5A5 (a NaN in float32, a signalling NaN in float64).
// - Launch limits as on sm_80/sm_90: block <= 1024 threads (x, y <= 1024, z <= 64), grid.x < 2^31,
//   grid.y, grid.z <= 65535, dynamic shared memory <= 48 KiB unless the kernel opted in
//   (cudaFuncSetAttribute), <= 227 KiB then. Tests may lower these limits (set_limits) to reach the
//   code paths that large shapes take on a GPU, with small, fast shapes.
// - A launch counter for tests (launch_count()).
// - Sanitizers: under TSan, fibers are TSan fibers switched without synchronisation, and the
//   barriers, warp rendezvous, block start and block end are expressed as __tsan_release/acquire,
//   so TSan sees exactly the happens-before edges CUDA guarantees (the emulator's own bookkeeping is
//   compiled without TSan instrumentation); the threads of a failed launch, never resumed, are
//   released at its end. Under ASan, stack switches are announced with
//   __sanitizer_start/finish_switch_fiber. Either runtime must be preloaded together with libstdc++
//   (scripts/build_simt.py --test).
// What this cannot show: GPU memory ordering (x86 is stronger; a missing __threadfence passes),
// nvcc/ptxas code generation (FMA contraction, intrinsics' rounding), register/occupancy limits,
// timing. scripts/gpu_check.sh (compute-sanitizer) remains the check on real hardware.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned x, y, z;
};

extern uint3 threadIdx;
extern uint3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict

namespace hal_simt {

// The hardware limits the emulator enforces (defaults: sm_80/sm_90).
struct Limits {
  int64_t max_grid_x = (int64_t(1) << 31) - 1;
  int64_t max_grid_yz = 65535;
  int64_t max_dynamic_shared = 48 * 1024;          // without opt-in
  int64_t max_dynamic_shared_optin = 227 * 1024;   // cudaDevAttrMaxSharedMemoryPerBlockOptin
  int64_t multiprocessors = 132;
};
Limits limits();
void set_limits(const Limits& l);
void reset_limits();

int64_t launch_count();
void set_seed(uint64_t seed);

// Records cudaFuncSetAttribute(kernel, MaxDynamicSharedMemorySize, bytes).
void set_max_dynamic_shared(const void* kernel, int64_t bytes);

// Runs body() once per CUDA thread of every block. Raises (c10::Error) on a launch-limit violation
// or a synchronisation error detected while running.
void launch(const void* kernel, const char* name, dim3 grid, dim3 block, size_t dynamic_shared,
            const std::function<void()>& body);

// --- device side (called from kernels through the macros and templates below) ---------------------
void syncthreads(const void* site);
// Poisons a static shared array the first time a thread of the current block reaches it.
void shared_array(void* p, size_t bytes, uint64_t* block_stamp);
void* dynamic_shared();
// Rendezvous of the lanes in `mask`; returns the 8-byte value of this lane's source lane.
uint64_t warp_shuffle(uint64_t value, unsigned mask, int kind, int arg, int width);

enum ShuffleKind { kShflDown = 0, kShflXor = 1 };

template <typename T>
T shuffle(unsigned mask, T v, int kind, int arg, int width) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffled values are at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = warp_shuffle(bits, mask, kind, arg, width);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

}  // namespace hal_simt

template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return hal_simt::shuffle(mask, v, hal_simt::kShflDown, static_cast<int>(delta), width);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return hal_simt::shuffle(mask, v, hal_simt::kShflXor, lane_mask, width);
}
// Each call site is identified by its return address (divergence detection).
__attribute__((noinline)) inline void __syncthreads() { hal_simt::syncthreads(__builtin_return_address(0)); }

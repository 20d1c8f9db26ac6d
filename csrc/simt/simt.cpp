// The SIMT emulator's scheduler, barriers, warp rendezvous and shared memory (model: simt.h).
// Compiled without TSan instrumentation in the TSan build (HAL_SIMT_TSAN): its bookkeeping is the
// "hardware"; the kernels see only the happens-before edges announced below.
#include "simt/simt.h"

#include <c10/util/Exception.h>
#include <ucontext.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <unordered_map>
#include <vector>

#if defined(HAL_SIMT_TSAN)
extern "C" {
void* __tsan_get_current_fiber(void);
void* __tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void* fiber);
void __tsan_switch_to_fiber(void* fiber, unsigned flags);
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
}
#define HAL_TSAN_ACQUIRE(p) __tsan_acquire(p)
#define HAL_TSAN_RELEASE(p) __tsan_release(p)
#else
#define HAL_TSAN_ACQUIRE(p) ((void)0)
#define HAL_TSAN_RELEASE(p) ((void)0)
#endif

#if defined(HAL_SIMT_ASAN)
extern "C" {
void __sanitizer_start_switch_fiber(void** fake_stack_save, const void* bottom, size_t size);
void __sanitizer_finish_switch_fiber(void* fake_stack_save, const void** bottom_old, size_t* size_old);
}
#endif

uint3 threadIdx;
uint3 blockIdx;
dim3 blockDim;
dim3 gridDim;

namespace hal_simt {
namespace {

#if defined(HAL_SIMT_ASAN)
constexpr size_t kStackBytes = 512 * 1024;
#else
constexpr size_t kStackBytes = 128 * 1024;
#endif
constexpr uint32_t kPoisonWord = 0xFFF5A5A5u;  // float32: NaN; float64 (two words): signalling NaN

enum class State { Runnable, AtBarrier, AtShuffle, Exited };

struct Fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack;
  State state = State::Runnable;
  const void* barrier_site = nullptr;
  uint3 index{0, 0, 0};
#if defined(HAL_SIMT_TSAN)
  void* tsan = nullptr;
#endif
#if defined(HAL_SIMT_ASAN)
  void* fake_stack = nullptr;
#endif
};

struct Warp {
  unsigned arrived = 0, mask = 0;
  int kind = 0, arg = 0, width = 0;
  unsigned generation = 0;
  uint64_t values[32];
  uint64_t results[32];
  char tsan_sync[2];
};

struct Emulator {
  std::mutex launch_mutex;  // one launch at a time, process-wide (the globals above are shared)
  Limits limits;
  int64_t launches = 0;
  std::mt19937_64 rng{0};
  std::unordered_map<const void*, int64_t> opt_in;

  // the running launch
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  std::vector<int> runnable;
  std::vector<int> warp_rank;  // this block's random warp priorities (lower runs first)
  const std::function<void()>* body = nullptr;
  std::unique_ptr<unsigned char[]> dynamic;
  size_t dynamic_bytes = 0;
  uint64_t block_serial = 0;
  int threads = 0, live = 0, at_barrier = 0, current = -1;
  unsigned barrier_generation = 0;
  char barrier_sync[2];
  char block_start_sync, block_end_sync;
  std::string error;
  ucontext_t scheduler;
#if defined(HAL_SIMT_TSAN)
  void* scheduler_tsan = nullptr;
#endif
#if defined(HAL_SIMT_ASAN)
  void* scheduler_fake_stack = nullptr;
  const void* scheduler_stack = nullptr;
  size_t scheduler_stack_size = 0;
#endif
};

Emulator& emu() {
  static Emulator* e = new Emulator();  // never destroyed: fibers may be abandoned mid-kernel
  return *e;
}

std::string describe_thread(int t) {
  const Fiber& f = emu().fibers[t];
  std::ostringstream s;
  s << "thread (" << f.index.x << "," << f.index.y << "," << f.index.z << ") of block (" << blockIdx.x << ","
    << blockIdx.y << "," << blockIdx.z << ")";
  return s.str();
}

// Switch from the running fiber back to the scheduler; returns when the scheduler resumes it.
void yield_to_scheduler(bool exiting = false) {
  Emulator& e = emu();
  Fiber& f = e.fibers[e.current];
#if defined(HAL_SIMT_TSAN)
  __tsan_switch_to_fiber(e.scheduler_tsan, 1 /* __tsan_switch_to_fiber_no_sync */);
#endif
#if defined(HAL_SIMT_ASAN)
  __sanitizer_start_switch_fiber(exiting ? nullptr : &f.fake_stack, e.scheduler_stack, e.scheduler_stack_size);
#endif
  (void)exiting;
  swapcontext(&f.context, &e.scheduler);
#if defined(HAL_SIMT_ASAN)
  __sanitizer_finish_switch_fiber(f.fake_stack, nullptr, nullptr);
#endif
}

// A synchronisation error inside a kernel: recorded, and this fiber is never resumed.
[[noreturn]] void fail(const std::string& message) {
  Emulator& e = emu();
  if (e.error.empty()) e.error = message;
  // The fiber ends here: what it did, its report included (written through libstdc++, whose memcpy
  // and operator new TSan intercepts), happens before the host reads the report.
  HAL_TSAN_RELEASE(&e.block_end_sync);
  yield_to_scheduler(true);
  std::abort();  // unreachable: an aborted launch never resumes its fibers
}

void make_runnable(int t) {
  emu().fibers[t].state = State::Runnable;
  emu().runnable.push_back(t);
}

// When every live thread waits at a barrier: release it, or report divergence.
void try_release_barrier() {
  Emulator& e = emu();
  if (e.at_barrier == 0 || e.at_barrier != e.live) return;
  const void* site = nullptr;
  int first = -1;
  for (int t = 0; t < e.threads; ++t) {
    const Fiber& f = e.fibers[t];
    if (f.state != State::AtBarrier) continue;
    if (first < 0) {
      first = t;
      site = f.barrier_site;
    } else if (f.barrier_site != site) {
      std::ostringstream s;
      s << "divergent __syncthreads: " << describe_thread(first) << " waits at " << site << " but "
        << describe_thread(t) << " waits at " << f.barrier_site << " (a different __syncthreads)";
      fail(s.str());
    }
  }
  e.at_barrier = 0;
  ++e.barrier_generation;
  for (int t = 0; t < e.threads; ++t) {
    if (e.fibers[t].state == State::AtBarrier) make_runnable(t);
  }
}

void fiber_main() {
  Emulator& e = emu();
#if defined(HAL_SIMT_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &e.scheduler_stack, &e.scheduler_stack_size);
#endif
  HAL_TSAN_ACQUIRE(&e.block_start_sync);
  // A kernel's C++ exception is reported after its catch block has ended: fail() abandons this fiber, and
  // abandoned inside the handler it would leave the exception on the OS thread's list of caught
  // exceptions (shared by every fiber and the scheduler), never released.
  bool threw = false;
  std::string what;
  try {
    (*e.body)();
  } catch (const std::exception& ex) {
    threw = true;
    what = ex.what();
  }
  if (threw) fail("exception in kernel: " + what);
  const int t = e.current;
  const int warp = t / 32, lane = t % 32;
  HAL_TSAN_RELEASE(&e.block_end_sync);
  e.fibers[t].state = State::Exited;
  --e.live;
  const Warp& w = e.warps[warp];
  if (w.arrived != 0 && (w.mask >> lane & 1u)) {
    fail(describe_thread(t) + " exited while lanes of its warp wait for it in a shuffle (mask names it)");
  }
  try_release_barrier();
  yield_to_scheduler(true);
  std::abort();  // an exited fiber is never resumed
}

void poison(void* p, size_t bytes) {
  unsigned char* c = static_cast<unsigned char*>(p);
  size_t i = 0;
  for (; i + 4 <= bytes; i += 4) std::memcpy(c + i, &kPoisonWord, 4);
  for (; i < bytes; ++i) c[i] = 0xA5;
}

std::string deadlock_report() {
  Emulator& e = emu();
  std::ostringstream s;
  s << "the block cannot make progress: ";
  for (size_t w = 0; w < e.warps.size(); ++w) {
    const Warp& wp = e.warps[w];
    if (wp.arrived == 0) continue;
    const unsigned missing = wp.mask & ~wp.arrived;
    s << "warp " << w << " waits in a shuffle with mask 0x" << std::hex << wp.mask << " for lanes 0x" << missing
      << std::dec << " that never arrive (exited or at __syncthreads); ";
  }
  if (e.at_barrier > 0) s << e.at_barrier << " of " << e.live << " live threads wait at __syncthreads";
  return s.str();
}

void run_block(dim3 block) {
  Emulator& e = emu();
  ++e.block_serial;
  if (e.dynamic_bytes > 0) poison(e.dynamic.get(), e.dynamic_bytes);
  e.live = e.threads;
  e.at_barrier = 0;
  e.runnable.clear();
  for (Warp& w : e.warps) w.arrived = 0;
  e.warp_rank.resize(e.warps.size());
  for (size_t w = 0; w < e.warp_rank.size(); ++w) e.warp_rank[w] = static_cast<int>(w);
  std::shuffle(e.warp_rank.begin(), e.warp_rank.end(), e.rng);
  for (int t = 0; t < e.threads; ++t) {
    Fiber& f = e.fibers[t];
    f.index = {static_cast<unsigned>(t % block.x), static_cast<unsigned>(t / block.x % block.y),
               static_cast<unsigned>(t / (block.x * block.y))};
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack.get();
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = nullptr;
    makecontext(&f.context, fiber_main, 0);
    make_runnable(t);
  }
  HAL_TSAN_RELEASE(&e.block_start_sync);
  while (e.live > 0 && e.error.empty()) {
    if (e.runnable.empty()) {
      e.error = deadlock_report();
      break;
    }
    // The runnable thread of the highest-priority warp (a random lane of it): between two barriers
    // the warps run one after another in a random order, the most adverse order for a missing one.
    int best_rank = INT32_MAX;
    size_t candidates = 0, i = 0;
    for (size_t j = 0; j < e.runnable.size(); ++j) {
      const int rank = e.warp_rank[e.runnable[j] / 32];
      if (rank < best_rank) {
        best_rank = rank;
        candidates = 0;
      }
      if (rank == best_rank && std::uniform_int_distribution<size_t>(0, candidates++)(e.rng) == 0) i = j;
    }
    const int t = e.runnable[i];
    e.runnable[i] = e.runnable.back();
    e.runnable.pop_back();
    e.current = t;
    threadIdx = e.fibers[t].index;
#if defined(HAL_SIMT_TSAN)
    __tsan_switch_to_fiber(e.fibers[t].tsan, 1);
#endif
#if defined(HAL_SIMT_ASAN)
    __sanitizer_start_switch_fiber(&e.scheduler_fake_stack, e.fibers[t].stack.get(), kStackBytes);
#endif
    swapcontext(&e.scheduler, &e.fibers[t].context);
#if defined(HAL_SIMT_ASAN)
    __sanitizer_finish_switch_fiber(e.scheduler_fake_stack, nullptr, nullptr);
#endif
  }
  e.current = -1;
#if defined(HAL_SIMT_TSAN)
  // A failed block's threads that have not exited are abandoned, never to run again, so what they did
  // happens before the host goes on (and frees, say, the tensors they wrote). TSan learns it from a
  // release made on each one's behalf: its TSan state is switched in for the release, without running
  // it (no stack switch; the scheduler's code here is uninstrumented, so nothing else is attributed).
  if (!e.error.empty()) {
    for (int t = 0; t < e.threads; ++t) {
      if (e.fibers[t].state == State::Exited) continue;
      __tsan_switch_to_fiber(e.fibers[t].tsan, 1);
      __tsan_release(&e.block_end_sync);
      __tsan_switch_to_fiber(e.scheduler_tsan, 1);
    }
  }
#endif
  HAL_TSAN_ACQUIRE(&e.block_end_sync);
}

std::string dims(dim3 d) {
  std::ostringstream s;
  s << "(" << d.x << ", " << d.y << ", " << d.z << ")";
  return s.str();
}

}  // namespace

Limits limits() { return emu().limits; }
void set_limits(const Limits& l) { emu().limits = l; }
void reset_limits() { emu().limits = Limits{}; }
int64_t launch_count() { return emu().launches; }
void set_seed(uint64_t seed) { emu().rng.seed(seed); }
void set_max_dynamic_shared(const void* kernel, int64_t bytes) {
  TORCH_CHECK(bytes >= 0 && bytes <= emu().limits.max_dynamic_shared_optin,
              "cudaFuncSetAttribute(MaxDynamicSharedMemorySize): ", bytes, " bytes exceeds the device's ",
              emu().limits.max_dynamic_shared_optin);
  emu().opt_in[kernel] = bytes;
}

void launch(const void* kernel, const char* where, dim3 grid, dim3 block, size_t dynamic_shared,
            const std::function<void()>& body) {
  Emulator& e = emu();
  std::lock_guard<std::mutex> lock(e.launch_mutex);
  ++e.launches;
  const Limits& L = e.limits;
  const int64_t threads = int64_t(block.x) * block.y * block.z;
  const std::string at = std::string("simt launch at ") + where + " with grid " + dims(grid) + ", block " +
                         dims(block) + ", " + std::to_string(dynamic_shared) + " bytes of dynamic shared memory: ";
  TORCH_CHECK(threads >= 1 && threads <= 1024 && block.x <= 1024 && block.y <= 1024 && block.z <= 64,
              at, "a block has 1 to 1024 threads (x, y <= 1024, z <= 64)");
  TORCH_CHECK(grid.x >= 1 && int64_t(grid.x) <= L.max_grid_x, at, "grid.x must be in [1, ", L.max_grid_x, "]");
  TORCH_CHECK(grid.y >= 1 && grid.z >= 1 && int64_t(grid.y) <= L.max_grid_yz && int64_t(grid.z) <= L.max_grid_yz,
              at, "grid.y and grid.z must be in [1, ", L.max_grid_yz, "]");
  const auto opted = e.opt_in.find(kernel);
  const int64_t smem_limit =
      opted == e.opt_in.end() ? L.max_dynamic_shared : std::min(opted->second, L.max_dynamic_shared_optin);
  TORCH_CHECK(static_cast<int64_t>(dynamic_shared) <= smem_limit, at, "the kernel may use at most ", smem_limit,
              " bytes of dynamic shared memory",
              opted == e.opt_in.end() ? " (it did not opt in with cudaFuncSetAttribute)" : "");
  const int64_t blocks = int64_t(grid.x) * grid.y * grid.z;
  TORCH_CHECK(blocks <= (int64_t(1) << 24), at, "the emulator runs at most 2^24 blocks per launch");

  e.threads = static_cast<int>(threads);
  if (e.fibers.size() < static_cast<size_t>(threads)) {
    const size_t old = e.fibers.size();
    e.fibers.resize(threads);
    for (size_t t = old; t < e.fibers.size(); ++t) e.fibers[t].stack.reset(new char[kStackBytes]);
  }
  e.warps.assign((threads + 31) / 32, Warp{});
  e.body = &body;
  e.dynamic_bytes = dynamic_shared;
  e.dynamic.reset(new unsigned char[dynamic_shared > 0 ? dynamic_shared : 1]);
  e.error.clear();
#if defined(HAL_SIMT_TSAN)
  e.scheduler_tsan = __tsan_get_current_fiber();
  for (int t = 0; t < e.threads; ++t) e.fibers[t].tsan = __tsan_create_fiber(0);
#endif
  std::vector<int64_t> order(blocks);
  for (int64_t b = 0; b < blocks; ++b) order[b] = b;
  std::shuffle(order.begin(), order.end(), e.rng);
  gridDim = grid;
  blockDim = block;
  for (int64_t b : order) {
    blockIdx = {static_cast<unsigned>(b % grid.x), static_cast<unsigned>(b / grid.x % grid.y),
                static_cast<unsigned>(b / (int64_t(grid.x) * grid.y))};
    run_block(block);
    if (!e.error.empty()) break;
  }
#if defined(HAL_SIMT_TSAN)
  for (int t = 0; t < e.threads; ++t) __tsan_destroy_fiber(e.fibers[t].tsan);
#endif
  e.body = nullptr;
  e.dynamic.reset();
  TORCH_CHECK(e.error.empty(), at, e.error);
}

void syncthreads(const void* site) {
  Emulator& e = emu();
  Fiber& f = e.fibers[e.current];
  char* sync = &e.barrier_sync[e.barrier_generation & 1];
  HAL_TSAN_RELEASE(sync);
  f.state = State::AtBarrier;
  f.barrier_site = site;
  ++e.at_barrier;
  try_release_barrier();
  yield_to_scheduler();
  HAL_TSAN_ACQUIRE(sync);
}

void shared_array(void* p, size_t bytes, uint64_t* block_stamp) {
  Emulator& e = emu();
  if (*block_stamp == e.block_serial) return;
  *block_stamp = e.block_serial;
  poison(p, bytes);
}

void* dynamic_shared() { return emu().dynamic.get(); }

uint64_t warp_shuffle(uint64_t value, unsigned mask, int kind, int arg, int width) {
  Emulator& e = emu();
  const int t = e.current, lane = t % 32;
  Warp& w = e.warps[t / 32];
  const int lanes = std::min(32, e.threads - (t / 32) * 32);
  const unsigned existing = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
  const char* name = kind == kShflDown ? "__shfl_down_sync" : "__shfl_xor_sync";
  if (!(mask >> lane & 1u)) fail(describe_thread(t) + " calls " + name + " with a mask that does not name its lane");
  if (mask & ~existing) {
    std::ostringstream s;
    s << describe_thread(t) << " calls " << name << " with mask 0x" << std::hex << mask << std::dec
      << ", which names lanes that do not exist (this warp has " << lanes << " threads)";
    fail(s.str());
  }
  if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
    fail(std::string(name) + ": width must be a power of 2 up to 32");
  }
  if (w.arrived == 0) {
    w.mask = mask;
    w.kind = kind;
    w.arg = arg;
    w.width = width;
  } else if (w.mask != mask || w.kind != kind || w.arg != arg || w.width != width) {
    fail(describe_thread(t) + " reaches a different warp intrinsic (or mask/offset/width) than the lanes of its "
         "warp already waiting in a shuffle");
  }
  for (int l = 0; l < lanes; ++l) {
    if ((mask >> l & 1u) && e.fibers[(t / 32) * 32 + l].state == State::Exited) {
      fail(describe_thread(t) + " calls " + name + " with a mask that names an exited lane");
    }
  }
  char* sync = &w.tsan_sync[w.generation & 1];
  HAL_TSAN_RELEASE(sync);
  w.values[lane] = value;
  w.arrived |= 1u << lane;
  Fiber& f = e.fibers[t];
  f.state = State::AtShuffle;
  if (w.arrived == mask) {
    for (int l = 0; l < 32; ++l) {
      if (!(mask >> l & 1u)) continue;
      int src = l;
      if (kind == kShflDown) {
        if ((l % width) + arg < width) src = l + arg;
      } else {
        const int x = l ^ arg;
        if (x / width <= l / width && x < 32) src = x;
      }
      if (!(mask >> src & 1u)) {
        std::ostringstream s;
        s << name << ": lane " << l << " reads lane " << src << ", which is not in the mask 0x" << std::hex << mask;
        fail(s.str());
      }
      w.results[l] = w.values[src];
    }
    w.arrived = 0;
    ++w.generation;
    for (int l = 0; l < 32; ++l) {
      if (mask >> l & 1u) make_runnable((t / 32) * 32 + l);
    }
  }
  yield_to_scheduler();
  HAL_TSAN_ACQUIRE(sync);
  return w.results[lane];
}

}  // namespace hal_simt

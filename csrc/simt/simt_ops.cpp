// Test controls of the SIMT emulator, as operators: torch.ops.hal_simt.launch_count(), set_seed(s),
// set_limits(...), reset_limits() (see simt.h; used by tests/simt.py).
#include <torch/library.h>

#include "simt/simt.h"

namespace {

int64_t launch_count() { return hal_simt::launch_count(); }

void set_seed(int64_t seed) { hal_simt::set_seed(static_cast<uint64_t>(seed)); }

void set_limits(int64_t max_grid_x, int64_t max_grid_yz, int64_t max_dynamic_shared,
                int64_t max_dynamic_shared_optin, int64_t multiprocessors) {
  hal_simt::set_limits({max_grid_x, max_grid_yz, max_dynamic_shared, max_dynamic_shared_optin, multiprocessors});
}

std::vector<int64_t> limits() {
  const hal_simt::Limits l = hal_simt::limits();
  return {l.max_grid_x, l.max_grid_yz, l.max_dynamic_shared, l.max_dynamic_shared_optin, l.multiprocessors};
}

void reset_limits() { hal_simt::reset_limits(); }

}  // namespace

TORCH_LIBRARY(hal_simt, m) {
  m.def("launch_count() -> int", &launch_count);
  m.def("set_seed(int seed) -> ()", &set_seed);
  m.def("set_limits(int max_grid_x, int max_grid_yz, int max_dynamic_shared, int max_dynamic_shared_optin, "
        "int multiprocessors) -> ()",
        &set_limits);
  m.def("limits() -> int[]", &limits);
  m.def("reset_limits() -> ()", &reset_limits);
}

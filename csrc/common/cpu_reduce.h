#pragma once
// Deterministic parallel sums on the CPU. The range is cut into blocks of a fixed size, each block
// is summed by one task, and the block sums are added in block order: the result does not depend
// on the number of threads or on scheduling, so it is bitwise reproducible.
#include "common/cpu_parallel.h"

#include <algorithm>
#include <cstdint>
#include <vector>

namespace hal_ext {

constexpr int64_t kCpuReduceBlock = 16384;

// block_sum(begin, end) returns the sum of the terms in [begin, end) as acc_t.
template <typename acc_t, typename BlockSum>
acc_t ordered_parallel_sum(int64_t n, const BlockSum& block_sum) {
  const int64_t blocks = (n + kCpuReduceBlock - 1) / kCpuReduceBlock;
  if (blocks <= 1) {
    return n > 0 ? block_sum(0, n) : acc_t(0);
  }
  std::vector<acc_t> partial(blocks);
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      partial[b] = block_sum(b * kCpuReduceBlock, std::min(n, (b + 1) * kCpuReduceBlock));
    }
  });
  acc_t total = 0;
  for (const acc_t p : partial) total += p;
  return total;
}

// Elementwise work in fixed-size chunks across threads.
template <typename Body>
void parallel_chunks(int64_t n, const Body& body) {
  at::parallel_for(0, n, kCpuReduceBlock, body);
}

}  // namespace hal_ext

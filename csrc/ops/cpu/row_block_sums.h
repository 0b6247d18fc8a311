// Column sums over the rows of a row-wise kernel that do not depend on the thread count (the
// norm's d gamma, the recomputing activation backward's d bias): each block of rows, fixed by the
// row count alone, sums into its own partial, and the partials are added in block order.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace arwrap::ops::cpu {

// fn(r0, n, partial) for blocks of rows [r0, r0 + n) (64 rows, longer where there would be over
// 256 blocks: at most 256 partials), each with its own zeroed partial of `width` floats, the
// blocks over at::parallel_for; returns the partials added in block order.
template <class Fn>
std::vector<float> row_block_sums(int64_t rows, int64_t width, Fn&& fn) {
  const int64_t block = std::max<int64_t>(64, (rows + 255) / 256);
  const int64_t blocks = (rows + block - 1) / block;
  std::vector<float> partial(static_cast<size_t>(blocks * width), 0.0f);
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, block * width));
  at::parallel_for(0, blocks, grain, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) fn(k * block, std::min(block, rows - k * block), partial.data() + k * width);
  });
  std::vector<float> sum(static_cast<size_t>(width), 0.0f);
  for (int64_t k = 0; k < blocks; ++k)
    for (int64_t j = 0; j < width; ++j) sum[j] += partial[k * width + j];
  return sum;
}

}  // namespace arwrap::ops::cpu

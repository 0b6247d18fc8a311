// How one thread block sweeps a row of V elements with 16-byte loads: the index
// arithmetic of row_read/row_map in cross_entropy_rows.cuh, kept free of CUDA so the CPU tests
// compile it and check that every element is visited exactly once
// (tests/ops/test_cuda_preflight.py).
//
// A row starts wherever the previous one ended (V * sizeof(T) bytes later), so at
// V = 50257 in bf16 only 1 row in 8 starts on a 16-byte boundary. Rather than falling
// back to scalar loads for the whole row, the sweep splits it into
//   head   elements before the first 16-byte boundary (fewer than one pack), scalar,
//   body   whole packs of 16 / sizeof(T) elements, 16-byte loads, kUnroll packs in
//          flight per thread (all issued before any is used),
//   tail   what is left after the last whole pack, scalar.
// A second row pointer (the gradient written beside the logits) must sit at the same
// offset modulo 16; if it does not, or the row is not even element-aligned, the whole
// row is "head" (scalar), as before.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define ARWRAP_HD __device__ __forceinline__  // only the kernels call it on the GPU
#else
#define ARWRAP_HD inline
#endif

namespace arwrap::ops::cuda {

struct RowSplit {
  int64_t head;  // scalar elements [0, head)
  int64_t nvec;  // packs: elements [head, head + nvec * vec)
};              // scalar tail: [head + nvec * vec, V)

// addr, addr2: byte addresses of the row's first element in the arrays read/written
// together (pass addr twice for one array).
ARWRAP_HD RowSplit row_split(uint64_t addr, uint64_t addr2, int64_t V, int elem_size) {
  const int vec = 16 / elem_size;
  if (addr % elem_size != 0 || addr % 16 != addr2 % 16) return {V, 0};
  int64_t head = static_cast<int64_t>((16 - addr % 16) % 16) / elem_size;
  if (head > V) head = V;
  return {head, (V - head) / vec};
}

// Calls scalar(j) for this thread's scalar elements, group(i, stride) for each group
// of kUnroll packs i, i + stride, ..., i + (kUnroll - 1) * stride (pack indices within
// the body), and one(i) for the packs left over; thread tid of nthreads.
template <int kUnroll, typename Scalar, typename Group, typename One>
ARWRAP_HD void row_sweep(RowSplit sp, int64_t V, int vec, int64_t tid, int64_t nthreads, Scalar&& scalar,
                         Group&& group, One&& one) {
  for (int64_t j = tid; j < sp.head; j += nthreads) scalar(j);
  int64_t i = tid;
  for (; i + (kUnroll - 1) * nthreads < sp.nvec; i += kUnroll * nthreads) group(i, nthreads);
  for (; i < sp.nvec; i += nthreads) one(i);
  for (int64_t j = sp.head + sp.nvec * vec + tid; j < V; j += nthreads) scalar(j);
}

}  // namespace arwrap::ops::cuda

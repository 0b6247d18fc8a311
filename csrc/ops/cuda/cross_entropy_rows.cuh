// Device building blocks of the CUDA cross-entropy (cross_entropy_launch.cu, the only
// file that includes this): the row index of logits (..., V) for any leading strides,
// block reductions, the online softmax state, the 16-byte row sweeps (row_sweep.h: a
// scalar head to the 16-byte boundary, then packs with 4 loads in flight per thread)
// and the gradient of one row (the math at the top of cross_entropy_launch.cu).
#pragma once

#include "../common.h"
#include "row_sweep.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

namespace arwrap::ops::cuda {
namespace {

using ull = unsigned long long;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kMaxRowThreads = 512;
constexpr int kMaxRowDims = 8;
constexpr ull kNoPosition = ~0ull;

template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return exp(x); }

// ---- rows of logits (..., V) for any strides of the leading dims -------------

struct RowIndex {
  int ndim = 0;  // leading dims after dropping size-1 dims and merging contiguous ones
  int64_t sizes[kMaxRowDims] = {};
  int64_t strides[kMaxRowDims] = {};
  __host__ __device__ int64_t offset(int64_t row) const {
    int64_t off = 0;
    for (int d = ndim - 1; d >= 0; --d) {
      off += (row % sizes[d]) * strides[d];
      row /= sizes[d];
    }
    return off;
  }
};

// False when more than kMaxRowDims leading dims remain after merging.
bool make_row_index(const at::Tensor& t, RowIndex& ri) {
  std::vector<std::pair<int64_t, int64_t>> dims;  // (size, stride), outermost first
  for (int64_t d = 0; d + 1 < t.dim(); ++d) {
    const int64_t s = t.size(d), st = t.stride(d);
    if (s == 1) continue;
    if (!dims.empty() && dims.back().second == st * s) {
      dims.back() = {dims.back().first * s, st};
    } else {
      dims.emplace_back(s, st);
    }
  }
  if (dims.size() > static_cast<size_t>(kMaxRowDims)) return false;
  ri = RowIndex{};
  ri.ndim = static_cast<int>(dims.size());
  for (size_t d = 0; d < dims.size(); ++d) {
    ri.sizes[d] = dims[d].first;
    ri.strides[d] = dims[d].second;
  }
  return true;
}

// ---- block reductions (blockDim.x a multiple of 32; every thread gets the result,
// bitwise the same in all threads: the last warp-level value is broadcast from lane 0)

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

template <typename A>
__device__ A block_sum(A v) {
  __shared__ A shm[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // shm may still be read by a previous call
  if (lane == 0) shm[warp] = v;
  __syncthreads();
  v = warp_sum(lane < nw ? shm[lane] : A(0));
  return __shfl_sync(kFullMask, v, 0);
}

// Online softmax state: running max m and sum_j exp(z_j - m) over the values seen.
template <typename A>
struct MaxSum {
  A m, s;
};

template <typename A>
__device__ __forceinline__ MaxSum<A> combine(MaxSum<A> a, MaxSum<A> b) {
  const A m = a.m > b.m ? a.m : b.m;
  const A ninf = -static_cast<A>(INFINITY);
  // a part whose max is -inf holds only -inf (s = 0) or NaN (s = NaN, kept)
  const A sa = a.m == ninf ? a.s : a.s * exp_(a.m - m);
  const A sb = b.m == ninf ? b.s : b.s * exp_(b.m - m);
  return {m, sa + sb};
}

template <typename A>
__device__ __forceinline__ MaxSum<A> warp_max_sum(MaxSum<A> v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    v = combine(v, MaxSum<A>{__shfl_xor_sync(kFullMask, v.m, o), __shfl_xor_sync(kFullMask, v.s, o)});
  }
  return v;
}

template <typename A>
__device__ MaxSum<A> block_max_sum(MaxSum<A> v) {
  __shared__ A shm_m[32], shm_s[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_max_sum(v);
  __syncthreads();
  if (lane == 0) {
    shm_m[warp] = v.m;
    shm_s[warp] = v.s;
  }
  __syncthreads();
  v = lane < nw ? MaxSum<A>{shm_m[lane], shm_s[lane]} : MaxSum<A>{-static_cast<A>(INFINITY), A(0)};
  v = warp_max_sum(v);
  return {__shfl_sync(kFullMask, v.m, 0), __shfl_sync(kFullMask, v.s, 0)};
}

// ---- row sweeps: this thread's share of a row, 16-byte packs (row_sweep.h) -------

template <typename T>
struct alignas(16) Pack {
  static constexpr int n = 16 / sizeof(T);
  T v[n];
};

constexpr int kUnroll = 4;  // 16-byte loads in flight per thread

// This thread's share of a split row: scalar(j) for the head and tail elements, pack(i, p) for
// each 16-byte pack i (at zp[i]), kUnroll packs loaded before any is used (the loads in flight).
template <typename T, typename Scalar, typename PackFn>
__device__ __forceinline__ void sweep_packs(const RowSplit& sp, int64_t V, const Pack<T>* zp, Scalar&& scalar,
                                            PackFn&& pack) {
  row_sweep<kUnroll>(
      sp, V, Pack<T>::n, threadIdx.x, blockDim.x, scalar,
      [&](int64_t i, int64_t stride) {
        Pack<T> p[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) p[u] = zp[i + u * stride];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) pack(i + u * stride, p[u]);
      },
      [&](int64_t i) { pack(i, zp[i]); });
}

// f(j, z_j) for j in this thread's share of the row.
template <typename T, typename A, typename F>
__device__ __forceinline__ void row_read(const T* z, int64_t V, F&& f) {
  constexpr int kVec = Pack<T>::n;
  const auto addr = reinterpret_cast<uint64_t>(z);
  const RowSplit sp = row_split(addr, addr, V, sizeof(T));
  const Pack<T>* zp = reinterpret_cast<const Pack<T>*>(z + sp.head);  // 16-byte aligned when sp.nvec > 0
  const auto unpack = [&](int64_t i, const Pack<T>& p) {
#pragma unroll
    for (int k = 0; k < kVec; ++k) f(sp.head + i * kVec + k, static_cast<A>(p.v[k]));
  };
  sweep_packs(sp, V, zp, [&](int64_t j) { f(j, static_cast<A>(z[j])); }, unpack);
}

// out_j = f(j, z_j) for j in this thread's share of the row; out may alias z (each
// element is read and written by the same thread).
template <typename T, typename A, typename F>
__device__ __forceinline__ void row_map(const T* z, T* out, int64_t V, F&& f) {
  constexpr int kVec = Pack<T>::n;
  const RowSplit sp = row_split(reinterpret_cast<uint64_t>(z), reinterpret_cast<uint64_t>(out), V, sizeof(T));
  const Pack<T>* zp = reinterpret_cast<const Pack<T>*>(z + sp.head);
  Pack<T>* op = reinterpret_cast<Pack<T>*>(out + sp.head);
  const auto map = [&](int64_t i, const Pack<T>& p) {
    Pack<T> o;
#pragma unroll
    for (int k = 0; k < kVec; ++k) o.v[k] = static_cast<T>(f(sp.head + i * kVec + k, static_cast<A>(p.v[k])));
    op[i] = o;
  };
  sweep_packs(sp, V, zp, [&](int64_t j) { out[j] = static_cast<T>(f(j, static_cast<A>(z[j]))); }, map);
}

// ---- device parts of the kernels -------------------------------------------------

// Gradient of one row (see the top of the file). Every thread must have read z[t]
// into zt, and the block synchronised, before this is called (out may alias z).
// Traffic: reads the row once, writes it once.
template <typename T, typename A>
__device__ void row_grad(const T* z, T* out, int64_t V, int64_t t, A zt, double lse, double c, double g_lse,
                         double eps, double w) {
  const double a = c * (1.0 + 2.0 * w * lse) + g_lse;
  const double b = -c * eps / static_cast<double>(V);
  if (a == 0.0 && b == 0.0 && t < 0) {  // ignored row, nothing flows back (uniform over the block)
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) out[j] = static_cast<T>(0.0f);
    return;
  }
  const A af = static_cast<A>(a), bf = static_cast<A>(b), lf = static_cast<A>(lse);
  A q = 0;  // sum_{j != t} p_j
  row_map<T, A>(z, out, V, [&](int64_t j, A x) {
    const A p = exp_(x - lf);
    if (j != t) q += p;
    return af * p + bf;
  });
  if (t < 0) return;  // uniform over the block
  q = block_sum(q);   // also orders every write above before the one below
  if (threadIdx.x == 0) {
    const double pt = exp(static_cast<double>(zt) - lse);
    out[t] = static_cast<T>(c * ((1.0 - eps) * (-static_cast<double>(q)) + eps * (pt - 1.0 / static_cast<double>(V)) + 2.0 * w * lse * pt) +
                            g_lse * pt);
  }
}

}  // namespace
}  // namespace arwrap::ops::cuda

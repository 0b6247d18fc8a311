// The row-tile loop of the fused linear cross-entropy, shared by the CPU kernel and the
// device-generic (CUDA) one, which differ only in how a tile of logits becomes its loss
// and gradient. Per tile of R rows:
//   Z    = H_t W^T + b             (R, V)  one GEMM into a reused buffer
//   rows(Z, r0, R)                 loss, lse, and dloss/dZ written over Z
//   dH_t = Z W                     (R, D)
//   dW  += Z^T H_t                 (V, D)  accumulated in float32 for bf16/fp16 (low_precision_mm.h)
//   db  += sum_rows Z
// Peak extra memory: dH + dW (+ db) + one tile.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>

#include "common.h"
#include "cpu/huge_page_buffer.h"
#include "low_precision_mm.h"

#include <omp.h>

#include <algorithm>
#include <array>
#include <optional>
#include <tuple>

// MKL's per-thread thread count, where torch's BLAS is MKL (libtorch_cpu exports it; its C name,
// which mkl_service.h spells mkl_set_num_threads_local: the lower-case symbol is the Fortran one,
// taking a pointer); null elsewhere.
extern "C" int MKL_Set_Num_Threads_Local(int) __attribute__((weak));

namespace arwrap::ops {

// One thread for the BLAS calls of this scope (MKL's local count; OpenMP's, which oneDNN plans
// by), restored at its end, an exception included: run inline (one block, or one thread), the
// OpenMP setting is the caller's own.
class SingleThreadedBlas {
 public:
  SingleThreadedBlas()
      : mkl_before_(MKL_Set_Num_Threads_Local ? MKL_Set_Num_Threads_Local(1) : 0), omp_before_(omp_get_max_threads()) {
    omp_set_num_threads(1);
  }
  ~SingleThreadedBlas() {
    omp_set_num_threads(omp_before_);
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(mkl_before_);  // 0: the global count again
  }
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;

 private:
  int mkl_before_, omp_before_;
};

// Runs fn(r0, rows) over [0, M) so that a product written by rows does not depend on the thread
// count: on the CPU, fixed blocks of rows (a function of M alone), one single-threaded GEMM each
// over at::parallel_for. A multi-threaded BLAS may split the sum over K between its threads: MKL
// on Intel Sapphire Rapids hosts does for dH = Z W at (700 x 2053) @ (2053 x 96), whose last bits
// then differ between 1 and 2 threads (tests/modules/test_determinism.py); and inside a parallel
// region it still plans for its global thread count, so each block sets MKL's local count to 1.
// Elsewhere (CUDA) fn runs once over all rows.
template <class Fn>
void for_row_blocks(const at::Tensor& like, int64_t M, Fn&& fn) {
  if (!like.is_cpu() || M == 0) {
    fn(int64_t{0}, M);
    return;
  }
  // at least 128 rows: a (64, 512) x (512, 32000) product ran at half the rate of a 128-row one
  // on one thread (bf16 on AMX: 17.7 against 12.3 ms per 256 rows; float32 62.6 against 56.7)
  const int64_t block = std::max<int64_t>(128, ((M + 7) / 8 + 15) / 16 * 16);
  const at::ThreadLocalState tls;  // the caller's dispatch state (below autograd, autocast) in every worker
  at::parallel_for(0, (M + block - 1) / block, 1, [&](int64_t b, int64_t e) {
    const at::ThreadLocalStateGuard guard(tls);
    const SingleThreadedBlas one;
    for (int64_t i = b; i < e; ++i) fn(i * block, std::min(block, M - i * block));
  });
}

// Rows per tile, from the shapes: about a fifth of the gradient buffers (so the tile
// never dominates memory), at least 256 rows: dW += Z^T H_t has K = R and reads and writes
// all of dW per tile, so few rows make it memory-bound where D is small (N 4096, D 256,
// V 32000, float32: 2.39 s with 64-row tiles, 1.76 s with 256, against 1.69-1.99 s for the
// logits + cross_entropy; bench/results/fused_head.md).
// An uninitialised buffer: on the CPU from cpu::empty_large (2 MiB pages from 16 MiB on).
inline at::Tensor empty_buffer(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return options.device().is_cpu() ? cpu::empty_large(sizes, options) : at::empty(sizes, options);
}

// A small vocabulary's tile may take 2 MiB all the same: a (4096, 256) bf16 head split into
// 848-row tiles ran 35 products of 128 rows per direction, each paying its call's fixed cost
// (3.8 ms of T's 140 ms bf16 step against about 1 ms in 512-row blocks).
inline int64_t linear_tile_rows(int64_t N, int64_t D, int64_t V, int64_t elem, int64_t max_rows) {
  const int64_t grads = (N * D + V * D) * elem, row = std::max<int64_t>(V * elem, 1);
  int64_t R = std::max(grads / 5 / row, (int64_t{2} << 20) / row);
  R = std::clamp<int64_t>(R, 256, max_rows) / 16 * 16;
  return std::max<int64_t>(1, std::min(R, N));
}

struct LinearGrads {
  at::Tensor hidden, weight, bias;  // undefined where not asked for
};

// h: (N, D) contiguous. need: which gradients to produce. rows(z, r0, rr) turns the
// logits tile z (rows r0 .. r0 + rr) into its loss and lse, and (when gradients are
// needed) into dloss/dz in place.
template <typename RowsFn>
LinearGrads linear_tiles(const at::Tensor& h, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                         std::array<bool, 3> need, int64_t max_rows, RowsFn&& rows) {
  const int64_t N = h.size(0), D = h.size(1), V = weight.size(0);
  const bool has_bias = bias.has_value() && bias->defined();
  const bool low = h.scalar_type() == at::kBFloat16 || h.scalar_type() == at::kHalf;
  const auto acc = low ? at::kFloat : h.scalar_type();
  LinearGrads g;
  if (need[0]) g.hidden = at::empty({N, D}, h.options());
  // d W: the first row tile writes it, the others add (no zero fill of a (V, D) buffer)
  // (on the CPU a large one on 2 MiB pages, cpu/huge_page_buffer.h: a fresh (32000, 512) float32
  // buffer faulted in 4 KiB pages each step; with it and the tile on 2 MiB pages C's bf16 step
  // took 20-35k minor faults instead of 56k, and 45-55 ms of system time instead of ~80)
  at::Tensor dw = need[1] ? empty_buffer({V, D}, h.options().dtype(acc)) : at::Tensor();
  at::Tensor db = need[2] && has_bias ? at::zeros({V}, h.options().dtype(acc)) : at::Tensor();
  const bool any = g.hidden.defined() || dw.defined() || db.defined();
  if (N > 0) {
    const int64_t R = linear_tile_rows(N, D, V, static_cast<int64_t>(h.element_size()), max_rows);
    at::Tensor tile = empty_buffer({R, V}, h.options());
    // the float32 route of low_precision_mm.h: the weight (and bias) upcast once, each tile's
    // products in float32 (ztile), the logits and their gradient rounded to h's dtype in
    // between as the low-precision GEMM would; peak extra memory + weight and a tile in float32
    const bool up = low && lowp_gemm_upcasts(h);
    const at::Tensor w32 = up ? weight.to(at::kFloat) : at::Tensor();
    const at::Tensor b32 = up && has_bias ? bias->to(at::kFloat) : at::Tensor();
    at::Tensor ztile = up ? at::empty({R, V}, h.options().dtype(at::kFloat)) : at::Tensor();
    const at::Tensor wt = weight.t();
    for (int64_t r0 = 0; r0 < N; r0 += R) {
      const int64_t rr = std::min(R, N - r0);
      const at::Tensor ht = h.narrow(0, r0, rr);
      const at::Tensor ht32 = up ? ht.to(at::kFloat) : at::Tensor();
      at::Tensor z = tile.narrow(0, 0, rr);
      at::Tensor z32 = up ? ztile.narrow(0, 0, rr) : at::Tensor();
      for_row_blocks(h, rr, [&](int64_t r, int64_t n) {
        at::Tensor zb = z.narrow(0, r, n);
        if (up) {
          at::Tensor zb32 = z32.narrow(0, r, n);
          if (has_bias) {
            at::addmm_out(zb32, b32, ht32.narrow(0, r, n), w32.t());
          } else {
            at::mm_out(zb32, ht32.narrow(0, r, n), w32.t());
          }
          zb.copy_(zb32);
        } else if (has_bias) {
          at::addmm_out(zb, *bias, ht.narrow(0, r, n), wt);
        } else {
          at::mm_out(zb, ht.narrow(0, r, n), wt);
        }
      });
      rows(z, r0, rr);
      if (!any) continue;
      if (up) z32.copy_(z);  // the gradient over the logits, exact in float32
      if (g.hidden.defined()) {
        at::Tensor gh = g.hidden.narrow(0, r0, rr);
        for_row_blocks(h, rr, [&](int64_t r, int64_t n) {
          at::Tensor ghb = gh.narrow(0, r, n);
          if (up) {
            ghb.copy_(at::mm(z32.narrow(0, r, n), w32));
          } else {
            at::mm_out(ghb, z.narrow(0, r, n), weight);
          }
        });
      }
      if (dw.defined()) {
        const bool first = r0 == 0;
        for_row_blocks(h, V, [&](int64_t r, int64_t n) {  // dW's rows: the vocabulary
          at::Tensor dwb = dw.narrow(0, r, n);
          if (up) {
            if (first) at::mm_out(dwb, z32.narrow(1, r, n).t(), ht32);
            else dwb.addmm_(z32.narrow(1, r, n).t(), ht32);
          } else {
            addmm_acc_(dwb, z.narrow(1, r, n).t(), ht, first);  // into float32: low_precision_mm.h's routes
          }
        });
      }
      if (db.defined()) db.add_(z.sum(0, false, acc));
    }
  }
  if (dw.defined() && N == 0) dw.zero_();  // no row tile wrote it
  if (dw.defined()) g.weight = dw.to(weight.scalar_type());
  if (db.defined()) g.bias = db.to(bias->scalar_type());
  return g;
}

// An operator's three gradient outputs: hidden's in hidden's shape, and an empty tensor for
// each one that was not asked for (or_empty).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> grad_outputs(const LinearGrads& g, const at::Tensor& hidden,
                                                                   const at::Tensor& weight) {
  const at::Tensor gh = g.hidden.defined() ? g.hidden.view(hidden.sizes()) : g.hidden;
  return {or_empty(gh, hidden), or_empty(g.weight, weight), or_empty(g.bias, weight)};
}

}  // namespace arwrap::ops

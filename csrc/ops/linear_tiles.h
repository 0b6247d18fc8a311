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

#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>

#include "common.h"
#include "low_precision_mm.h"

#include <algorithm>
#include <array>
#include <optional>
#include <tuple>

namespace arwrap::ops {

// Rows per tile, from the shapes: about a fifth of the gradient buffers (so the tile
// never dominates memory), at least 256 rows: dW += Z^T H_t has K = R and reads and writes
// all of dW per tile, so few rows make it memory-bound where D is small (N 4096, D 256,
// V 32000, float32: 2.39 s with 64-row tiles, 1.76 s with 256, against 1.69-1.99 s for the
// logits + cross_entropy; bench/results/fused_head.md).
inline int64_t linear_tile_rows(int64_t N, int64_t D, int64_t V, int64_t elem, int64_t max_rows) {
  const int64_t grads = (N * D + V * D) * elem;
  int64_t R = grads / 5 / std::max<int64_t>(V * elem, 1);
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
  at::Tensor dw = need[1] ? at::zeros({V, D}, h.options().dtype(acc)) : at::Tensor();
  at::Tensor db = need[2] && has_bias ? at::zeros({V}, h.options().dtype(acc)) : at::Tensor();
  const bool any = g.hidden.defined() || dw.defined() || db.defined();
  if (N > 0) {
    const int64_t R = linear_tile_rows(N, D, V, static_cast<int64_t>(h.element_size()), max_rows);
    at::Tensor tile = at::empty({R, V}, h.options());
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
      if (up) {
        if (has_bias) {
          at::addmm_out(z32, b32, ht32, w32.t());
        } else {
          at::mm_out(z32, ht32, w32.t());
        }
        z.copy_(z32);
      } else if (has_bias) {
        at::addmm_out(z, *bias, ht, wt);
      } else {
        at::mm_out(z, ht, wt);
      }
      rows(z, r0, rr);
      if (!any) continue;
      if (up) z32.copy_(z);  // the gradient over the logits, exact in float32
      if (g.hidden.defined()) {
        at::Tensor gh = g.hidden.narrow(0, r0, rr);
        if (up) {
          gh.copy_(at::mm(z32, w32));
        } else {
          at::mm_out(gh, z, weight);
        }
      }
      if (dw.defined()) {
        if (up) {
          dw.addmm_(z32.t(), ht32);
        } else {
          addmm_acc_(dw, z.t(), ht);  // bf16/fp16 x bf16/fp16 -> float32 where the backend can
        }
      }
      if (db.defined()) db.add_(z.sum(0, false, acc));
    }
  }
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

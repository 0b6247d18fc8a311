// The feed-forward block with its own backward (layers.h, lean_feed_forward): the norm, Linear,
// GELU/SiLU (or its GLU), Linear, as one torch::autograd::Function that saves the block's input
// y (the residual stream, which the layer keeps anyway), the pre-activation and nothing else; its
// backward recomputes the norm's output (norm_values: the norm operator, the forward's kernel;
// its gradient from the operator's backward, norm_grads) and the activation's output instead of
// keeping them, so the block keeps (dim + inner) values per row where the composition of ATen
// ops keeps (3 dim + 2 inner). The activation's output, d pre-activation and the first bias's
// gradient come from one in-place pass (activation_backward_recompute_: the output over
// d activation, d pre-activation over the pre-activation, which is this block's alone; with
// retain_graph over a copy of it): one exp per value and no separate column sum. Both
// directions run over chunks of rows (chunk_rows), so no inner-wide temporary holds the batch.
//
// Under autocast the products run in the autocast dtype, as at::linear under autocast does: the
// normed input and the weights are cast to it (the same .to() autocast makes), the
// pre-activation is kept in it, the gradients of the weights and the input come back in theirs
// (float32); the weights' gradients are summed over the chunks in float32.
#include "layers.h"

#include "../ops/detail.h"
#include "../ops/low_precision_mm.h"

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/graph_task.h>

#include <algorithm>

namespace arwrap::layers {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The activation of the pre-activation f (its GLU: the first half times act(second half)), by
// the activation operator (ops/activation.cpp: one fused pass on the CPU), below autograd.
at::Tensor activate(const at::Tensor& f, bool glu, bool swish) {
  const at::AutoDispatchBelowADInplaceOrView guard;
  return ops::detail::activation(f, glu, swish);
}

// The rows of one pass of the block (the forward's product, activation and second product;
// the backward's d activation, its in-place pass and the products after it): the inner-wide
// temporaries (the activation's output, d activation) then hold a chunk of rows, not the whole
// batch. On B (4096 rows, inner 1024, float32) the whole batch's 16 MB activation output was
// the step's peak, in the forward of the last layer and in every checkpoint_layers recompute
// (bench/bench_step_memory.py). A chunk of at most kChunkBytes of the widest row, and at least
// kMinRows rows: a product then still reads its weights once per many rows (chunks of 256 rows
// of A's inner 2048 made its step 2-3% slower, 512 rows 0-2%, B's and T's within the noise);
// fixed by the shape alone, so the thread count does not change a bit.
constexpr int64_t kChunkBytes = int64_t{2} << 20;
constexpr int64_t kMinRows = 512;

int64_t chunk_rows(int64_t rows, int64_t row_bytes) {
  const int64_t chunks = std::max<int64_t>(1, (rows * row_bytes + kChunkBytes - 1) / kChunkBytes);
  const int64_t n = (rows + chunks - 1) / chunks;
  return std::min(rows, std::max(n, kMinRows));
}

// out := x @ w^T + b (out 2-d rows of the result, x, w, b in one dtype), ATen's linear on 2-d x
// (addmm), on the float32 route of low_precision_mm.h where ATen's low-precision CPU GEMM is slow
void linear_into(at::Tensor out, const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  if (!ops::lowp_gemm_upcasts(x)) {
    at::addmm_out(out, b, x, w.t());
    return;
  }
  out.copy_(ops::linear_lowp(x, w, b));
}

class LeanFeedForward : public torch::autograd::Function<LeanFeedForward> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& y, const at::Tensor& gamma, const at::Tensor& w_in,
                            const at::Tensor& b_in, const at::Tensor& w_out, const at::Tensor& b_out, bool glu,
                            bool swish, bool rms, bool unit_offset) {
    const at::ScalarType dt = product_dtype(y);
    const at::Tensor wi = w_in.to(dt), bi = b_in.to(dt), bo = b_out.to(dt), wo = w_out.to(dt);
    const int64_t D = y.size(-1), rows = y.numel() / std::max<int64_t>(D, 1), w = wi.size(0), out_dim = wo.size(0);
    const at::Tensor y2 = y.reshape({rows, D});
    // f and the output in y's shape (the saved f keeps the block's (..., w) layout), filled by rows
    std::vector<int64_t> shape = y.sizes().vec();
    shape.back() = w;
    const at::Tensor f = at::empty(shape, y.options().dtype(dt));
    shape.back() = out_dim;
    const at::Tensor out = at::empty(shape, y.options().dtype(dt));
    const at::Tensor f2 = f.view({rows, w}), out2 = out.view({rows, out_dim});
    const int64_t step = chunk_rows(rows, w * f.element_size());
    for (int64_t r = 0; r < rows; r += step) {
      const int64_t n = std::min(step, rows - r);
      const at::Tensor f_r = f2.narrow(0, r, n);
      linear_into(f_r, norm_values(y2.narrow(0, r, n), gamma, rms, unit_offset, dt), wi, bi);
      linear_into(out2.narrow(0, r, n), activate(f_r, glu, swish), wo, bo);
    }
    // the weights' casts are made again in the backward: kept, they cost more memory (A bf16: 29 MB
    // of a 363 MB peak) than their making costs time (about 1% of T's bf16 step)
    ctx->save_for_backward({y, gamma, f, w_in, w_out});
    ctx->saved_data["glu"] = glu;
    ctx->saved_data["swish"] = swish;
    ctx->saved_data["rms"] = rms;
    ctx->saved_data["unit_offset"] = unit_offset;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    check_not_twice_differentiated("feed-forward block");
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &y = saved[0], &gamma = saved[1], &f = saved[2], &w_in = saved[3], &w_out = saved[4];
    const bool glu = ctx->saved_data["glu"].toBool(), swish = ctx->saved_data["swish"].toBool();
    const bool rms = ctx->saved_data["rms"].toBool(), unit_offset = ctx->saved_data["unit_offset"].toBool();
    const at::ScalarType dt = f.scalar_type();
    const int64_t out_dim = w_out.size(0), D = y.size(-1), w = f.size(-1), rows = f.numel() / std::max<int64_t>(w, 1);
    // the products' weights, cast as the forward cast them. (w_out cast into transposed memory, for
    // d activation = g w_out, measured no faster once the product's output is not freshly mapped
    // memory: (4096, 512) x (512, 2048) bf16 3.26 ms either way, and its cast took 10x a plain one.)
    const at::Tensor wi = w_in.to(dt), wo = w_out.to(dt);
    const at::Tensor g = grads[0].to(dt).reshape({rows, out_dim});
    const at::Tensor y2 = y.reshape({rows, D}), f2 = f.view({rows, w});
    const at::Tensor d_b_out = g.sum(0).to(w_out.scalar_type());
    // The weights' gradients are summed over the chunks in float32 (float64 for float64 weights),
    // by addmm_acc_: in a low-precision dtype each chunk's product is rounded once, then added.
    const auto acc = w_in.options().dtype(ops::is_low_precision(w_in) ? at::kFloat : w_in.scalar_type());
    at::Tensor d_w_out = at::zeros(w_out.sizes(), acc), d_w_in = at::zeros(w_in.sizes(), acc);
    at::Tensor d_b_in = at::zeros({w}, acc), d_gamma = at::zeros_like(gamma);
    const at::Tensor d_y = at::empty(y2.sizes(), y.options());
    // Per chunk, one inner-wide temporary besides f (the backward of the last layer runs while
    // every layer's saved tensors are alive). One pass recomputes the activation's output over
    // d activation and writes d pre-activation over f, which is this block's alone: where the
    // graph is freed after this backward, f itself; with retain_graph f must stay as it is for
    // the next one, so a copy of the chunk. The pass also sums d f over the rows: the bias gradient.
    const bool keep = torch::autograd::get_current_graph_task_keep_graph();
    const int64_t step = chunk_rows(rows, w * f.element_size());
    for (int64_t r = 0; r < rows; r += step) {
      const int64_t n = std::min(step, rows - r);
      const at::Tensor g_r = g.narrow(0, r, n), y_r = y2.narrow(0, r, n);
      at::Tensor da = ops::mm_lowp(g_r, wo);
      const at::Tensor f_r = f2.narrow(0, r, n);
      const at::Tensor df = keep ? f_r.clone() : f_r;
      {
        const at::AutoDispatchBelowADInplaceOrView guard;
        d_b_in.add_(ops::detail::activation_backward_recompute_(da, df, glu, swish));
      }
      ops::addmm_acc_(d_w_out, g_r.t(), da, r == 0);
      da.reset();
      const at::Tensor h2 = norm_values(y_r, gamma, rms, unit_offset, dt);  // the forward's, again
      ops::addmm_acc_(d_w_in, df.t(), h2, r == 0);
      // d h in the products' dtype: the norm's backward widens it as it reads (autocast's cast, exact)
      const auto [d_y_r, d_gamma_r] = norm_grads(ops::mm_lowp(df, wi), y_r, gamma, rms, unit_offset);
      d_y.narrow(0, r, n).copy_(d_y_r);
      d_gamma.add_(d_gamma_r);
    }
    return {d_y.view(y.sizes()), d_gamma, d_w_in.to(w_in.scalar_type()), d_b_in.to(w_in.scalar_type()),
            d_w_out.to(w_out.scalar_type()), d_b_out,
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor lean_feed_forward(const at::Tensor& y, const LayerWeights& w, const DecoderOptions& d) {
  return LeanFeedForward::apply(y, w.ff_norm, w.ff_in_w, w.ff_in_b, w.ff_out_w, w.ff_out_b, d.ff_glu(), d.ff_swish(),
                                d.use_rmsnorm(), d.norm_add_unit_offset());
}

}  // namespace arwrap::layers

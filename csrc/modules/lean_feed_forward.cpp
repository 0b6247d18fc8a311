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
constexpr int64_t kMinRows = 512;  // chunk_rows, below

// out := x @ w^T + b (out 2-d rows of the result, x, w, b in one dtype), ATen's linear on 2-d x
// (addmm), on the float32 route of low_precision_mm.h where ATen's low-precision CPU GEMM is slow
void linear_into(at::Tensor out, const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  if (!ops::lowp_gemm_upcasts(x)) {
    at::addmm_out(out, b, x, w.t());
    return;
  }
  out.copy_(ops::linear_lowp(x, w, b));
}

// The block's backward: the gradients of (y, gamma, w_in, b_in, w_out, b_out) from g, the
// gradient of its output. f is the forward's saved pre-activation, or undefined: then each
// chunk's is made again from y here, by the forward's kernel on the forward's chunk of rows
// (the same bits), before its backward uses it (checkpoint_layers: lean_feed_forward_backward).
// b_in is read only then. Under the forward's autocast settings when f is made here.
// For checkpoint_layers' layer, y + block(y) with y = x + p (residual_values): given p, y is x
// and each chunk's rows of the block's input are made from x's and p's (the layer's forward's
// kernel); given residual (the layer output's gradient), d y + residual comes back instead of
// d y, in `into` (contiguous, x's shape and dtype; residual's own memory is fine: each chunk's
// rows are written once that chunk has read them).
variable_list block_backward(const at::Tensor& grad, const at::Tensor& y, const at::Tensor& gamma, const at::Tensor& f,
                             const at::Tensor& w_in, const at::Tensor& b_in, const at::Tensor& w_out, bool glu,
                             bool swish, bool rms, bool unit_offset, bool keep, const at::Tensor& p = {},
                             const at::Tensor& residual = {}, const at::Tensor& into = {}) {
  const at::ScalarType dt = f.defined() ? f.scalar_type() : product_dtype(y);
  const int64_t out_dim = w_out.size(0), D = y.size(-1), w = w_in.size(0), rows = y.numel() / std::max<int64_t>(D, 1);
  // the products' weights, cast as the forward cast them. (w_out cast into transposed memory, for
  // d activation = g w_out, measured no faster once the product's output is not freshly mapped
  // memory: (4096, 512) x (512, 2048) bf16 3.26 ms either way, and its cast took 10x a plain one.)
  const at::Tensor wi = w_in.to(dt), wo = w_out.to(dt), bi = f.defined() ? at::Tensor() : b_in.to(dt);
  // g in the products' dtype, cast a chunk at a time (a batch-wide copy would sit beside every
  // layer's saved tensors); float32's is g itself
  const at::Tensor g = grad.reshape({rows, out_dim});
  const at::Tensor y2 = y.reshape({rows, D}), f2 = f.defined() ? f.view({rows, w}) : at::Tensor();
  // The weights' gradients are summed over the chunks in float32 (float64 for float64 weights),
  // by addmm_acc_: in a low-precision dtype each chunk's product is rounded once, then added.
  const auto acc = w_in.options().dtype(ops::is_low_precision(w_in) ? at::kFloat : w_in.scalar_type());
  at::Tensor d_w_out = at::zeros(w_out.sizes(), acc), d_w_in = at::zeros(w_in.sizes(), acc);
  at::Tensor d_b_in = at::zeros({w}, acc), d_gamma = at::zeros_like(gamma);
  // the second bias's gradient: the column sums of g in the products' dtype; a low-precision
  // one's summed in float32 a chunk at a time, so a float32 g cast here per chunk
  // (checkpoint_layers) and a bf16 g cast by the residual's backward give the same bits
  const bool lowp = ops::is_low_precision(w_in) || at::isReducedFloatingType(dt);
  at::Tensor d_b_out = lowp ? at::zeros({out_dim}, acc) : g.sum(0);
  TORCH_INTERNAL_ASSERT(!residual.defined() || (into.defined() && into.is_contiguous() && into.sizes() == y.sizes()));
  // d y in y's shape (a view handed back would keep its base alive: the engine could not add
  // the residual's gradient into it in place), written through a 2-d view
  const at::Tensor d_y_out = into.defined() ? into : at::empty(y.sizes(), y.options());
  const at::Tensor d_y = d_y_out.view({rows, D});
  const at::Tensor res2 = residual.defined() ? residual.reshape({rows, D}) : at::Tensor();
  const at::Tensor p2 = p.defined() ? p.reshape({rows, D}) : at::Tensor();
  // Per chunk, one inner-wide temporary besides f (the backward of the last layer runs while
  // every layer's saved tensors are alive). One pass recomputes the activation's output over
  // d activation and writes d pre-activation over f, which is this block's alone: where the
  // graph is freed after this backward, f itself; with retain_graph f must stay as it is for
  // the next one, so a copy of the chunk. The pass also sums d f over the rows: the bias gradient.
  const int64_t step = chunk_rows(rows, w * c10::elementSize(dt));
  for (int64_t r = 0; r < rows; r += step) {
    const int64_t n = std::min(step, rows - r);
    const at::Tensor g_r = g.narrow(0, r, n).to(dt);
    const at::Tensor y_r = p.defined() ? residual_values(y2.narrow(0, r, n), p2.narrow(0, r, n)) : y2.narrow(0, r, n);
    if (lowp) d_b_out.add_(at::sum(g_r, 0, false, acc.dtype().toScalarType()));
    at::Tensor da = ops::mm_lowp(g_r, wo);
    at::Tensor df, h2;
    if (f.defined()) {
      const at::Tensor f_r = f2.narrow(0, r, n);
      df = keep ? f_r.clone() : f_r;
    } else {
      h2 = norm_values(y_r, gamma, rms, unit_offset, dt);
      df = at::empty({n, w}, y.options().dtype(dt));
      linear_into(df, h2, wi, bi);
    }
    {
      const at::AutoDispatchBelowADInplaceOrView guard;
      d_b_in.add_(ops::detail::activation_backward_recompute_(da, df, glu, swish));
    }
    ops::addmm_acc_(d_w_out, g_r.t(), da, r == 0);
    da.reset();
    if (!h2.defined()) h2 = norm_values(y_r, gamma, rms, unit_offset, dt);  // the forward's, again
    ops::addmm_acc_(d_w_in, df.t(), h2, r == 0);
    // d h in the products' dtype: the norm's backward widens it as it reads (autocast's cast, exact)
    const auto [d_y_r, d_gamma_r] = norm_grads(ops::mm_lowp(df, wi), y_r, gamma, rms, unit_offset);
    if (res2.defined()) {
      at::Tensor dst = d_y.narrow(0, r, n);  // over res2's rows when into is residual: read above
      at::add_out(dst, d_y_r, res2.narrow(0, r, n));
    } else {
      d_y.narrow(0, r, n).copy_(d_y_r);
    }
    d_gamma.add_(d_gamma_r);
  }
  return {d_y_out, d_gamma, d_w_in.to(w_in.scalar_type()), d_b_in.to(w_in.scalar_type()),
          d_w_out.to(w_out.scalar_type()), d_b_out.to(w_out.scalar_type())};
}

// The block's forward over chunks of rows: its output; with f_keep, the pre-activation too (in
// y's shape, the block's (..., w) layout), else only one chunk's pre-activation at a time.
at::Tensor block_forward(const at::Tensor& y, const at::Tensor& gamma, const at::Tensor& w_in, const at::Tensor& b_in,
                         const at::Tensor& w_out, const at::Tensor& b_out, bool glu, bool swish, bool rms,
                         bool unit_offset, at::Tensor* f_keep) {
  const at::ScalarType dt = product_dtype(y);
  const at::Tensor wi = w_in.to(dt), bi = b_in.to(dt), bo = b_out.to(dt), wo = w_out.to(dt);
  const int64_t D = y.size(-1), rows = y.numel() / std::max<int64_t>(D, 1), w = wi.size(0), out_dim = wo.size(0);
  const at::Tensor y2 = y.reshape({rows, D});
  const int64_t step = chunk_rows(rows, w * c10::elementSize(dt));
  std::vector<int64_t> shape = y.sizes().vec();
  at::Tensor f2;
  if (f_keep) {
    shape.back() = w;
    *f_keep = at::empty(shape, y.options().dtype(dt));
    f2 = f_keep->view({rows, w});
  } else {
    f2 = at::empty({std::min(step, rows), w}, y.options().dtype(dt));
  }
  shape.back() = out_dim;
  const at::Tensor out = at::empty(shape, y.options().dtype(dt));
  const at::Tensor out2 = out.view({rows, out_dim});
  for (int64_t r = 0; r < rows; r += step) {
    const int64_t n = std::min(step, rows - r);
    const at::Tensor f_r = f2.narrow(0, f_keep ? r : 0, n);
    linear_into(f_r, norm_values(y2.narrow(0, r, n), gamma, rms, unit_offset, dt), wi, bi);
    linear_into(out2.narrow(0, r, n), activate(f_r, glu, swish), wo, bo);
  }
  return out;
}

class LeanFeedForward : public torch::autograd::Function<LeanFeedForward> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& y, const at::Tensor& gamma, const at::Tensor& w_in,
                            const at::Tensor& b_in, const at::Tensor& w_out, const at::Tensor& b_out, bool glu,
                            bool swish, bool rms, bool unit_offset) {
    at::Tensor f;
    const at::Tensor out = block_forward(y, gamma, w_in, b_in, w_out, b_out, glu, swish, rms, unit_offset, &f);
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
    variable_list d = block_backward(grads[0], y, gamma, f, w_in, at::Tensor(), w_out, glu, swish, rms, unit_offset,
                                     torch::autograd::get_current_graph_task_keep_graph());
    d.resize(10);  // no gradients for the flags
    return d;
  }
};

}  // namespace

int64_t chunk_rows(int64_t rows, int64_t row_bytes) {
  const int64_t chunks = std::max<int64_t>(1, (rows * row_bytes + kChunkBytes - 1) / kChunkBytes);
  const int64_t n = (rows + chunks - 1) / chunks;
  return std::min(rows, std::max(n, kMinRows));
}

bool lean_feed_forward_applies(const DecoderOptions& d, bool training) {
  return !(training && d.ff_dropout() > 0) && lean_layers_enabled();
}

std::vector<at::Tensor> lean_feed_forward_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& p,
                                                   const LayerWeights& w, const DecoderOptions& d,
                                                   const at::Tensor& into) {
  const at::AutoGradMode not_recording(false);
  return block_backward(grad, x, w.ff_norm, at::Tensor(), w.ff_in_w, w.ff_in_b, w.ff_out_w, d.ff_glu(), d.ff_swish(),
                        d.use_rmsnorm(), d.norm_add_unit_offset(), /*keep=*/false, p, /*residual=*/grad, into);
}

at::Tensor lean_feed_forward_values(const at::Tensor& y, const LayerWeights& w, const DecoderOptions& d) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  return block_forward(y, w.ff_norm, w.ff_in_w, w.ff_in_b, w.ff_out_w, w.ff_out_b, d.ff_glu(), d.ff_swish(),
                       d.use_rmsnorm(), d.norm_add_unit_offset(), nullptr);
}

at::Tensor lean_feed_forward(const at::Tensor& y, const LayerWeights& w, const DecoderOptions& d) {
  return LeanFeedForward::apply(y, w.ff_norm, w.ff_in_w, w.ff_in_b, w.ff_out_w, w.ff_out_b, d.ff_glu(), d.ff_swish(),
                                d.use_rmsnorm(), d.norm_add_unit_offset());
}

}  // namespace arwrap::layers

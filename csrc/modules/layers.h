// The native net's layers, as functions over weights (x-transformers 2.31.10's math):
// the norm, rotary embeddings, the attention block and the feed-forward block.
// transformer_forward (transformer_forward.cpp) strings them together.
#pragma once

#include <arwrap/transformer.h>

#include <ATen/core/Tensor.h>

#include <initializer_list>
#include <optional>
#include <utility>
#include <vector>

namespace arwrap::layers {

// One decoder layer's weights (roles of the parameter table).
struct LayerWeights {
  at::Tensor attn_norm, q, k, v, out, ff_norm, ff_in_w, ff_in_b, ff_out_w, ff_out_b;
  // the ten in this order, and back (for an autograd function's inputs)
  std::vector<at::Tensor> list() const;
  static LayerWeights from_list(at::TensorList w);
};

// The whole net's weights by role, from the flat list in parameter_specs() order.
struct Weights {
  at::Tensor token_emb, pos_emb, final_norm, to_logits, next0, next2;
  std::vector<LayerWeights> layers;
};

// Checks names, shapes, dtypes and devices against the parameter table, then sorts by role.
Weights unpack_weights(const TransformerWrapperOptions& options, at::TensorList weights);

// x W^T + b: at::linear; on the CPU without autograd and for a few rows (decoding), the small-batch kernel
// (small_batch_linear.h), which streams the weight at the memory's rate.
// Where ATen's bf16/fp16 CPU GEMM is slow (ops/low_precision_mm.h), a low-precision product
// (autocast's, or low-precision operands) runs on the float32 route, with its own backward.
at::Tensor project(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias = {});

// The dtype a linear on x computes in: autocast's where it applies to x's device, else x's.
at::ScalarType product_dtype(const at::Tensor& x);

// LayerNorm (no affine, eps 1e-5) * gamma, or F.normalize(x) * sqrt(dim) * g; with
// unit_offset the stored value is gamma - 1. The norm operator (ops/norm.cpp: one fused pass per
// direction on the CPU), differentiable; its output in dtype (x's when none).
at::Tensor norm(const at::Tensor& x, const at::Tensor& gamma, bool rms, bool unit_offset,
                std::optional<at::ScalarType> dtype = std::nullopt);

// cos/sin tables (positions offset .. offset + length, rotary_dim() columns) in x's dtype.
struct Rotary {
  at::Tensor cos, sin;
};
Rotary rotary_tables(const TransformerWrapperOptions& options, int64_t offset, int64_t length,
                     const at::Tensor& like);
// x-transformers' rotary embedding on the first rotary_dim dims, pairs interleaved:
// (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin).
at::Tensor apply_rotary(const at::Tensor& t, const Rotary& rotary);

// What every layer's attention shares in one forward.
struct AttentionContext {
  std::optional<at::Tensor> sdpa_mask;  // (b, 1, m, m) bool when a key mask is given
  bool causal = true;
  at::Tensor key_mask;                  // (b, m) true = kept, or undefined
  // left-padded prompts (NetInputs::seq_start_pos): (b, 1, m, keys) added to the scores, a large
  // finite negative before each row's start (and above the diagonal), or undefined
  at::Tensor pad_bias;
  // the keys each batch row may see, for the fused operator (arwrap::attention): (b, keys) bool,
  // the key mask and the left padding together, or undefined when every key is visible
  at::Tensor visible_keys;
  Rotary rotary;                        // undefined tensors without rotary embeddings
  double scale = 1.0;
  double dropout = 0.0;
};

// The attention block on the residual stream x (b, m, dim): the norm, q, k, v projections,
// qk-norm, rotary, causal attention (over the cached keys too when k_cache/v_cache are
// given: they are extended in place), the output projection. With lse, also the
// attention's log-sum-exp per query (b, heads, m) for the z-loss. On the CPU the attention
// is the fused operator arwrap::attention, whose one pass gives the lse too; with dropout
// in training, and on CUDA, at::scaled_dot_product_attention and arwrap::attention_lse.
// Where a backward will run, the q, k, v projections are normed_projections, which keep
// nothing the layer does not keep anyway.
at::Tensor attention(const at::Tensor& x, const LayerWeights& w, const DecoderOptions& d, const AttentionContext& ctx,
                     at::Tensor* k_cache, at::Tensor* v_cache, at::Tensor* lse);

// The feed-forward block on the residual stream y: the norm, Linear, GELU/SiLU (or its GLU),
// dropout, Linear. Where a backward will run and there is no dropout, lean_feed_forward.
at::Tensor feed_forward(const at::Tensor& y, const LayerWeights& w, const DecoderOptions& d, bool training);

// The same block (no dropout) as one autograd function that keeps only its input y and the
// pre-activation for the backward and recomputes the norm's and the activation's outputs there
// (lean_feed_forward.cpp).
at::Tensor lean_feed_forward(const at::Tensor& y, const LayerWeights& w, const DecoderOptions& d);

// The same block's values only, not recording, one chunk of rows' pre-activation at a time (the
// forward of a checkpoint_layers layer: the bits lean_feed_forward gives).
at::Tensor lean_feed_forward_values(const at::Tensor& y, const LayerWeights& w, const DecoderOptions& d);

// The rows of one pass of a lean block over chunks of rows whose widest temporary row has
// row_bytes: at most 2 MiB of it, at least 512 rows; fixed by the shape alone, so the thread count
// changes no bit (lean_feed_forward.cpp).
int64_t chunk_rows(int64_t rows, int64_t row_bytes);

// Whether feed_forward takes lean_feed_forward where a backward will run: no dropout drawn, and
// lean_layers_enabled().
bool lean_feed_forward_applies(const DecoderOptions& d, bool training);

// lean_feed_forward's backward with no forward behind it, for the layer's second half y + block(y)
// with y = residual_values(x, p) (x the layer's input, p the attention block's output): the
// gradients of (y, ff_norm, ff_in_w, ff_in_b, ff_out_w, ff_out_b) from grad, the gradient of the
// layer's output, where y's is the block's d y plus grad (the residual's), written into `into`
// (contiguous, x's shape and dtype; grad itself where nothing else holds it). y's rows and the
// pre-activation are made again a chunk of rows at a time (the forward's kernels: the bits
// lean_feed_forward's backward reads), so neither is ever whole. checkpoint_layers'
// recomputation uses it: it runs no feed-forward forward at all. Not recording; under the
// forward's autocast settings.
std::vector<at::Tensor> lean_feed_forward_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& p,
                                                   const LayerWeights& w, const DecoderOptions& d,
                                                   const at::Tensor& into);

// Whether a backward will run through a block with input x and these weights: recording, and
// something needs a gradient (and ARWRAP_LEAN_LAYERS is not 0: the benches' switch to the plain
// composition). Where it does, the blocks take their lean autograd functions.
bool records(const at::Tensor& x, std::initializer_list<at::Tensor> weights);
bool lean_layers_enabled();

// The lean blocks' backward is not differentiable itself (their recomputation runs on detached
// leaves): a backward with create_graph=True through one is refused with a clear error, naming
// `block` and the way out (ARWRAP_LEAN_LAYERS=0), rather than giving a wrong second derivative.
void check_not_twice_differentiated(const char* block);

// The lean blocks' norm, below autograd: its output in dtype (the blocks' forward, and its
// recomputation in their backward: the same kernel, the same bits), and (d x, d gamma) from
// d out in any floating dtype (the norm operator's backward, which recomputes the row
// statistics from x).
at::Tensor norm_values(const at::Tensor& x, const at::Tensor& gamma, bool rms, bool unit_offset,
                       at::ScalarType dtype);
std::pair<at::Tensor, at::Tensor> norm_grads(const at::Tensor& dh, const at::Tensor& x, const at::Tensor& gamma,
                                             bool rms, bool unit_offset);

// [h W_i^T for each weight] with h = norm(x, gamma), as one autograd function that saves x,
// not h, and recomputes h in the backward (lean_projections.cpp). Products in autocast's dtype
// under autocast, as project() computes them.
std::vector<at::Tensor> normed_projections(const at::Tensor& x, const at::Tensor& gamma, bool rms, bool unit_offset,
                                           at::TensorList weights);

// x + p, the residual stream after a block with output p, without recording: one pass for a
// float32 x and a bf16 p on the CPU (ops::add_bf16), x + p elsewhere. Elementwise: a chunk of
// rows gives the rows' bits of the whole.
at::Tensor residual_values(const at::Tensor& x, const at::Tensor& p);

// One pre-norm residual layer: x + attention(norm(x)), then + feed_forward(norm(.)); the caches
// and lse as in attention().
at::Tensor decoder_layer(const at::Tensor& x, const LayerWeights& w, const DecoderOptions& d,
                         const AttentionContext& ctx, bool training, at::Tensor* k_cache, at::Tensor* v_cache,
                         at::Tensor* lse);

// DecoderOptions::checkpoint_layers: decoder_layer (without caches) as one autograd function that
// runs the layer without recording and saves only x and the weights; its backward restores the
// forward's random state (dropout) and autocast settings, runs the layer again with recording
// (the attention block only, where the feed-forward is the lean block: its backward then runs
// from x and the attention's output, lean_feed_forward_backward) and back-propagates through it
// (layer_checkpoint.cpp). The same values and gradients as decoder_layer, bit for bit in float32
// and (without dropout, as tested) under bf16 autocast. Not twice differentiable.
at::Tensor checkpointed_decoder_layer(const at::Tensor& x, const LayerWeights& w, const DecoderOptions& d,
                                      const AttentionContext& ctx, bool training, at::Tensor* lse);

// While one is alive (on this thread), the layers take the kernels the recorded forward takes
// (project() never takes the small-batch kernel, which applies only without gradients), so a
// layer run without recording gives the bits its recomputation with recording gives.
class RecordedKernelsGuard {
 public:
  RecordedKernelsGuard();
  ~RecordedKernelsGuard();
  RecordedKernelsGuard(const RecordedKernelsGuard&) = delete;
  RecordedKernelsGuard& operator=(const RecordedKernelsGuard&) = delete;

 private:
  bool previous_;
};

}  // namespace arwrap::layers

// Argument checks and output allocation shared by every kernel of an operator
// (CPU, CUDA and Meta), so that shapes and errors are written once.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>
#include <vector>
#include <string_view>
#include <tuple>

namespace arwrap::ops {

// Operators return an empty tensor for an output that was not asked for or not produced.
inline at::Tensor or_empty(const at::Tensor& t, const at::Tensor& like) {
  return t.defined() ? t : at::empty({0}, like.options());
}

enum class Reduction : int64_t { None = 0, Mean = 1, Sum = 2 };

// True when no two elements of t share memory, proven from its sizes and strides:
// ordered by stride, each dimension must step past everything the smaller ones
// span. (at::has_internal_overlap answers "too hard" for most strided views.)
inline bool provably_non_overlapping(const at::Tensor& t) {
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.size(d) == 0) return true;
    if (t.size(d) > 1) dims.push_back(d);
  }
  std::sort(dims.begin(), dims.end(), [&](int64_t a, int64_t b) { return t.stride(a) < t.stride(b); });
  int64_t span = 0;  // the largest offset reachable with the dimensions so far
  for (int64_t d : dims) {
    if (t.stride(d) <= span) return false;
    span += (t.size(d) - 1) * t.stride(d);
  }
  return true;
}

inline Reduction parse_reduction(std::string_view r) {
  if (r == "mean") return Reduction::Mean;
  if (r == "sum") return Reduction::Sum;
  if (r == "none") return Reduction::None;
  TORCH_CHECK_VALUE(false, "cross_entropy: reduction must be 'mean', 'sum' or 'none', got '", r, "'");
}

// The factor each row's loss and gradient take under a reduction, for an upstream gradient
// `upstream` of the reduced loss: upstream / count for mean (0 when nothing is scored),
// upstream for sum, 1 for none (whose rows take their own upstream gradients).
inline double reduction_scale(Reduction r, int64_t count, double upstream = 1.0) {
  if (r == Reduction::Mean) return count > 0 ? upstream / static_cast<double>(count) : 0.0;
  return r == Reduction::Sum ? upstream : 1.0;
}

inline Reduction to_reduction(int64_t r) {
  TORCH_CHECK_VALUE(r >= 0 && r <= 2, "cross_entropy: internal reduction code must be 0, 1 or 2, got ", r);
  return static_cast<Reduction>(r);
}

// ------------------------------------------------------------------ cross_entropy

struct CrossEntropyOutputs {
  at::Tensor loss;  // float32 (float64 for float64 logits): 0-dim for mean/sum, target's shape for none
  at::Tensor lse;   // same dtype, target's shape
};

// Loss and lse are float32, or float64 for float64 logits (reference precision, gradcheck).
inline at::ScalarType loss_dtype(const at::Tensor& logits) {
  return logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// The options both cross-entropy operators share, checked alike (`op` names the caller).
inline void check_loss_options(const char* op, double label_smoothing, double z_loss_weight) {
  TORCH_CHECK_VALUE(label_smoothing >= 0.0 && label_smoothing <= 1.0, op, ": label_smoothing must be in [0, 1], got ",
                    label_smoothing);
  TORCH_CHECK_VALUE(std::isfinite(z_loss_weight) && z_loss_weight >= 0.0, op,
                    ": z_loss_weight must be finite and >= 0, got ", z_loss_weight);
}

inline void check_cross_entropy_args(
    const at::Tensor& logits, const at::Tensor& target, double label_smoothing, double z_loss_weight) {
  TORCH_CHECK_VALUE(logits.defined(), "cross_entropy: logits is undefined");
  TORCH_CHECK_VALUE(target.defined(), "cross_entropy: target is undefined");
  const auto dt = logits.scalar_type();
  TORCH_CHECK_VALUE(
      dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16 || dt == at::kHalf,
      "cross_entropy: logits must be float32, float64, bfloat16 or float16, got ", dt);
  TORCH_CHECK_VALUE(logits.dim() >= 1, "cross_entropy: logits must have at least 1 dimension (..., V), got a 0-dim tensor");
  TORCH_CHECK_VALUE(logits.size(-1) >= 1, "cross_entropy: logits' last dimension (the vocabulary) must be at least 1, got ", logits.size(-1));
  TORCH_CHECK_VALUE(target.scalar_type() == at::kLong,
                    "cross_entropy: target must be int64 (torch.long) class indices, got ", target.scalar_type());
  TORCH_CHECK_VALUE(target.dim() == logits.dim() - 1 &&
                        target.sizes() == logits.sizes().slice(0, logits.dim() - 1),
                    "cross_entropy: target must have the shape of logits without its last dimension: logits ",
                    logits.sizes(), " expects target ", logits.sizes().slice(0, logits.dim() - 1), ", got ",
                    target.sizes());
  TORCH_CHECK_VALUE(logits.device() == target.device(), "cross_entropy: logits (", logits.device(),
                    ") and target (", target.device(), ") must be on the same device");
  check_loss_options("cross_entropy", label_smoothing, z_loss_weight);
}

inline CrossEntropyOutputs alloc_cross_entropy_outputs(
    const at::Tensor& logits, const at::Tensor& target, Reduction reduction) {
  auto opts = logits.options().dtype(loss_dtype(logits));
  CrossEntropyOutputs out;
  out.lse = at::empty(target.sizes(), opts);
  out.loss = reduction == Reduction::None ? at::empty(target.sizes(), opts) : at::empty({}, opts);
  return out;
}

inline void check_cross_entropy_backward_args(
    const at::Tensor& grad_loss, const std::optional<at::Tensor>& grad_lse, const at::Tensor& logits,
    const at::Tensor& target, const at::Tensor& lse, Reduction reduction) {
  const auto ld = loss_dtype(logits);
  TORCH_CHECK_VALUE(grad_loss.scalar_type() == ld, "cross_entropy_backward: grad_loss must be ", ld, ", got ",
                    grad_loss.scalar_type());
  if (reduction == Reduction::None) {
    TORCH_CHECK_VALUE(grad_loss.sizes() == target.sizes(), "cross_entropy_backward: grad_loss must have shape ",
                      target.sizes(), ", got ", grad_loss.sizes());
  } else {
    TORCH_CHECK_VALUE(grad_loss.numel() == 1, "cross_entropy_backward: grad_loss must be a scalar, got shape ",
                      grad_loss.sizes());
  }
  TORCH_CHECK_VALUE(lse.scalar_type() == ld && lse.sizes() == target.sizes(),
                    "cross_entropy_backward: lse must be ", ld, " of shape ", target.sizes());
  if (grad_lse.has_value() && grad_lse->defined()) {
    TORCH_CHECK_VALUE(grad_lse->scalar_type() == ld && grad_lse->sizes() == target.sizes(),
                      "cross_entropy_backward: grad_lse must be ", ld, " of shape ", target.sizes());
  }
  TORCH_CHECK_VALUE(grad_loss.device() == logits.device() && lse.device() == logits.device(),
                    "cross_entropy_backward: all tensors must be on ", logits.device());
}

// ------------------------------------------------------------------ linear_cross_entropy

inline void check_linear_cross_entropy_args(const at::Tensor& hidden, const at::Tensor& weight,
                                            const std::optional<at::Tensor>& bias, const at::Tensor& target,
                                            double label_smoothing, double z_loss_weight) {
  TORCH_CHECK_VALUE(hidden.defined() && weight.defined() && target.defined(),
                    "linear_cross_entropy: hidden, weight and target must be defined");
  const auto dt = hidden.scalar_type();
  TORCH_CHECK_VALUE(dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16 || dt == at::kHalf,
                    "linear_cross_entropy: hidden must be float32, float64, bfloat16 or float16, got ", dt);
  TORCH_CHECK_VALUE(hidden.dim() >= 1 && hidden.size(-1) >= 1,
                    "linear_cross_entropy: hidden must be (..., D) with D >= 1, got shape ", hidden.sizes());
  TORCH_CHECK_VALUE(weight.dim() == 2 && weight.size(1) == hidden.size(-1) && weight.size(0) >= 1,
                    "linear_cross_entropy: weight must be (V, D) with D = hidden's last dimension (", hidden.size(-1),
                    "), got shape ", weight.sizes());
  TORCH_CHECK_VALUE(weight.scalar_type() == dt, "linear_cross_entropy: weight must have hidden's dtype (", dt,
                    "), got ", weight.scalar_type());
  TORCH_CHECK_VALUE(weight.device() == hidden.device(), "linear_cross_entropy: weight (", weight.device(),
                    ") and hidden (", hidden.device(), ") must be on the same device");
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == weight.size(0),
                      "linear_cross_entropy: bias must be (V,) = (", weight.size(0), ",), got shape ", bias->sizes());
    TORCH_CHECK_VALUE(bias->scalar_type() == dt && bias->device() == hidden.device(),
                      "linear_cross_entropy: bias must have hidden's dtype and device");
  }
  TORCH_CHECK_VALUE(target.scalar_type() == at::kLong,
                    "linear_cross_entropy: target must be int64 (torch.long) class indices, got ", target.scalar_type());
  TORCH_CHECK_VALUE(target.sizes() == hidden.sizes().slice(0, hidden.dim() - 1),
                    "linear_cross_entropy: target must have the shape of hidden without its last dimension: expected ",
                    hidden.sizes().slice(0, hidden.dim() - 1), ", got ", target.sizes());
  TORCH_CHECK_VALUE(target.device() == hidden.device(), "linear_cross_entropy: target (", target.device(),
                    ") and hidden (", hidden.device(), ") must be on the same device");
  check_loss_options("linear_cross_entropy", label_smoothing, z_loss_weight);
}

// ------------------------------------------------------------------ shift_tokens

struct ShiftTokensOutputs {
  at::Tensor input;   // (b, m) int64, m = n (or n + 1 with keep_last)
  at::Tensor target;  // (b, n) int64
  at::Tensor mask;    // (b, m) bool when mask_prob > 0, else an empty (0,) tensor
};

// Columns of input and mask: n, or n + 1 when the last token is kept.
inline int64_t input_columns(const at::Tensor& x, bool keep_last) { return keep_last ? x.size(1) : x.size(1) - 1; }

inline int64_t num_masked(int64_t n, double mask_prob) {
  // x-transformers: min(int(seq * mask_prob), seq - 1), with seq = n the input length
  // (its wrapper feeds n + 1 tokens: keep_last reproduces that exactly)
  const auto k = static_cast<int64_t>(static_cast<double>(n) * mask_prob);
  return std::min(k, n - 1);
}

inline void check_shift_tokens_args(
    const at::Tensor& x, const std::optional<at::Tensor>& lens, const std::optional<at::Tensor>& noise,
    double mask_prob, std::optional<int64_t> mask_token_id, bool keep_last) {
  TORCH_CHECK_VALUE(x.defined(), "shift_tokens: x is undefined");
  TORCH_CHECK_VALUE(x.dim() == 2, "shift_tokens: x must be 2-D token ids (batch, seq_len + 1), got ", x.dim(),
                    "-D with shape ", x.sizes());
  TORCH_CHECK_VALUE(x.scalar_type() == at::kLong, "shift_tokens: x must be int64 (torch.long) token ids, got ",
                    x.scalar_type());
  TORCH_CHECK_VALUE(x.size(1) >= 2, "shift_tokens: x must have seq_len + 1 >= 2 tokens per row to form an input and a "
                    "target, got shape ", x.sizes());
  TORCH_CHECK_VALUE(std::isfinite(mask_prob) && mask_prob >= 0.0 && mask_prob < 1.0,
                    "shift_tokens: mask_prob must be in [0, 1), got ", mask_prob);
  if (mask_token_id.has_value()) {
    TORCH_CHECK_VALUE(*mask_token_id >= 0, "shift_tokens: mask_token_id must be a token id >= 0, got ", *mask_token_id);
  }
  if (lens.has_value() && lens->defined()) {
    TORCH_CHECK_VALUE(lens->dim() == 1 && lens->size(0) == x.size(0), "shift_tokens: lens must have shape (",
                      x.size(0), ",) (one length per row of x), got ", lens->sizes());
    TORCH_CHECK_VALUE(lens->scalar_type() == at::kLong || lens->scalar_type() == at::kInt,
                      "shift_tokens: lens must be int64 or int32, got ", lens->scalar_type());
    TORCH_CHECK_VALUE(lens->device() == x.device(), "shift_tokens: lens (", lens->device(), ") must be on x's device (",
                      x.device(), ")");
  }
  const int64_t n = input_columns(x, keep_last);
  if (mask_prob > 0.0) {
    TORCH_CHECK_VALUE(noise.has_value() && noise->defined(),
                      "shift_tokens: mask_prob > 0 needs the random draw `noise` of shape (", x.size(0), ", ", n,
                      "); the Python and C++ functions draw it for you");
  }
  if (noise.has_value() && noise->defined()) {
    TORCH_CHECK_VALUE(noise->dim() == 2 && noise->size(0) == x.size(0) && noise->size(1) == n,
                      "shift_tokens: noise must have shape (", x.size(0), ", ", n, "), got ", noise->sizes());
    TORCH_CHECK_VALUE(noise->scalar_type() == at::kFloat || noise->scalar_type() == at::kDouble,
                      "shift_tokens: noise must be float32 or float64, got ", noise->scalar_type());
    TORCH_CHECK_VALUE(noise->device() == x.device(), "shift_tokens: noise (", noise->device(),
                      ") must be on x's device (", x.device(), ")");
  }
}

inline ShiftTokensOutputs alloc_shift_tokens_outputs(const at::Tensor& x, double mask_prob, bool keep_last) {
  const int64_t b = x.size(0), n = x.size(1) - 1, m = input_columns(x, keep_last);
  ShiftTokensOutputs out;
  out.input = at::empty({b, m}, x.options());
  out.target = at::empty({b, n}, x.options());
  out.mask = mask_prob > 0.0 ? at::empty({b, m}, x.options().dtype(at::kBool)) : at::empty({0}, x.options().dtype(at::kBool));
  return out;
}

// ---- scale_grad_ (internal: the fused backwards' in-place rescale)

inline void check_scale_grad_args(const at::Tensor& grad, const at::Tensor& scale) {
  TORCH_CHECK_VALUE(at::isFloatingType(grad.scalar_type()), "scale_grad_: grad must be floating point, got ",
                    grad.scalar_type());
  TORCH_CHECK_VALUE(scale.numel() == 1 && (scale.scalar_type() == at::kFloat || scale.scalar_type() == at::kDouble),
                    "scale_grad_: scale must be a one-element float32 or float64 tensor, got ", scale.scalar_type(),
                    " of shape ", scale.sizes());
  TORCH_CHECK_VALUE(scale.device() == grad.device(), "scale_grad_: scale (", scale.device(),
                    ") must be on grad's device (", grad.device(), ")");
}

// The dtypes of the element-wise operators (activation, rotary): float32 and bfloat16 by their
// fused CPU kernels, float16 and float64 by the ATen composition.
inline void check_element_wise_dtype(const char* op, const char* name, const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16 ||
                        x.scalar_type() == at::kDouble || x.scalar_type() == at::kHalf,
                    op, ": ", name, " must be float32, bfloat16, float16 or float64, got ", x.scalar_type());
}

// ---- activation (internal: the feed-forward's GELU/SiLU, or its GLU, with its backward)

// f (..., w): w = 2 inner with glu (the value half first, the gate half second, as
// x-transformers' GLU chunks it), inner without; returns inner. Floating point, any rank >= 1.
inline int64_t check_activation_args(const char* op, const at::Tensor& f, bool glu) {
  TORCH_CHECK_VALUE(f.dim() >= 1, op, ": f must have at least one dimension, got a scalar");
  check_element_wise_dtype(op, "f", f);
  const int64_t w = f.size(-1);
  TORCH_CHECK_VALUE(!glu || w % 2 == 0, op, ": with glu, f's last dimension (", w,
                    ") must be even (the value half and the gate half)");
  return glu ? w / 2 : w;
}

// The activation's output (..., inner), contiguous, in f's dtype.
inline at::Tensor alloc_activation_output(const at::Tensor& f, int64_t inner) {
  auto sizes = f.sizes().vec();
  sizes.back() = inner;
  return at::empty(sizes, f.options().memory_format(at::MemoryFormat::Contiguous));
}

// grad (..., inner) of f (..., w): same leading sizes, dtype and device.
inline void check_activation_backward_args(const char* op, const at::Tensor& grad, const at::Tensor& f,
                                           int64_t inner) {
  auto want = f.sizes().vec();
  want.back() = inner;
  TORCH_CHECK_VALUE(grad.sizes() == at::IntArrayRef(want), op, ": grad must have shape ", at::IntArrayRef(want),
                    " (f's with the last dimension ", inner, "), got ", grad.sizes());
  TORCH_CHECK_VALUE(grad.scalar_type() == f.scalar_type(), op, ": grad (", grad.scalar_type(),
                    ") must have f's dtype (", f.scalar_type(), ")");
  TORCH_CHECK_VALUE(grad.device() == f.device(), op, ": grad (", grad.device(), ") must be on f's device (",
                    f.device(), ")");
}

// ---- rotary (internal: the rotary position embedding of q and k, with its backward)

// t (..., m, d) and the tables cos, sin (m, rot): rot even, at most d; the tables float32 or t's
// dtype, both alike, on t's device. Returns rot.
inline int64_t check_rotary_args(const char* op, const at::Tensor& t, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK_VALUE(t.dim() >= 2, op, ": t must be (..., seq, dim) with at least two dimensions, got ", t.sizes());
  check_element_wise_dtype(op, "t", t);
  TORCH_CHECK_VALUE(cos.dim() == 2 && sin.sizes() == cos.sizes(), op,
                    ": cos and sin must be (seq, rotary_dim) tables of one shape, got ", cos.sizes(), " and ",
                    sin.sizes());
  const int64_t m = t.size(-2), d = t.size(-1), rot = cos.size(1);
  TORCH_CHECK_VALUE(cos.size(0) == m, op, ": the tables have ", cos.size(0), " rows, t has ", m, " positions (dim -2)");
  TORCH_CHECK_VALUE(rot % 2 == 0 && rot <= d, op, ": rotary_dim (the tables' width, ", rot,
                    ") must be even and at most t's last dimension (", d, ")");
  TORCH_CHECK_VALUE(cos.scalar_type() == sin.scalar_type() &&
                        (cos.scalar_type() == at::kFloat || cos.scalar_type() == t.scalar_type()),
                    op, ": cos and sin must both be float32 or t's dtype (", t.scalar_type(), "), got ",
                    cos.scalar_type(), " and ", sin.scalar_type());
  TORCH_CHECK_VALUE(cos.device() == t.device() && sin.device() == t.device(), op, ": cos and sin (", cos.device(),
                    ", ", sin.device(), ") must be on t's device (", t.device(), ")");
  return rot;
}

// The output: t's strides where its last dimension is contiguous (the heads of a projection stay a
// view of (batch, seq, heads, dim) memory), else contiguous; t's dtype.
inline at::Tensor alloc_rotary_output(const at::Tensor& t) {
  if (t.stride(-1) == 1) return at::empty_like(t);
  return at::empty(t.sizes(), t.options().memory_format(at::MemoryFormat::Contiguous));
}

// ---- norm (internal: the native net's LayerNorm or RMSNorm times gamma, with its backward)

// x (..., dim), dim > 0; gamma (dim,), float32 or x's dtype, on x's device; dtype (the output's,
// x's when none) floating. Returns the output dtype.
inline at::ScalarType check_norm_args(const char* op, const at::Tensor& x, const at::Tensor& gamma,
                                      std::optional<at::ScalarType> dtype) {
  TORCH_CHECK_VALUE(x.dim() >= 1, op, ": x must be (..., dim) with at least one dimension, got a scalar");
  check_element_wise_dtype(op, "x", x);
  TORCH_CHECK_VALUE(x.size(-1) > 0, op, ": x's last dimension (dim) must not be empty, got ", x.sizes());
  TORCH_CHECK_VALUE(gamma.dim() == 1 && gamma.size(0) == x.size(-1), op, ": gamma must be (dim,) = (", x.size(-1),
                    ",), x's last dimension, got ", gamma.sizes());
  TORCH_CHECK_VALUE(gamma.scalar_type() == at::kFloat || gamma.scalar_type() == x.scalar_type(), op,
                    ": gamma must be float32 or x's dtype (", x.scalar_type(), "), got ", gamma.scalar_type());
  TORCH_CHECK_VALUE(gamma.device() == x.device(), op, ": gamma (", gamma.device(), ") must be on x's device (",
                    x.device(), ")");
  const at::ScalarType out = dtype.value_or(x.scalar_type());
  TORCH_CHECK_VALUE(out == at::kFloat || out == at::kBFloat16 || out == at::kDouble || out == at::kHalf, op,
                    ": dtype must be float32, bfloat16, float16 or float64, got ", out);
  return out;
}

// grad: d out, x's shape and device, any of the floating dtypes the output may have
inline void check_norm_backward_args(const char* op, const at::Tensor& grad, const at::Tensor& x,
                                     const at::Tensor& gamma) {
  check_norm_args(op, x, gamma, std::nullopt);
  check_element_wise_dtype(op, "grad", grad);
  TORCH_CHECK_VALUE(grad.sizes() == x.sizes(), op, ": grad must have x's shape ", x.sizes(), ", got ", grad.sizes());
  TORCH_CHECK_VALUE(grad.device() == x.device(), op, ": grad (", grad.device(), ") must be on x's device (",
                    x.device(), ")");
}

// The outputs: out (x's shape, contiguous, in dtype); d x (x's shape, contiguous, x's dtype) and
// d gamma (gamma's shape and dtype)
inline at::Tensor alloc_norm_output(const at::Tensor& x, at::ScalarType dtype) {
  return at::empty(x.sizes(), x.options().dtype(dtype).memory_format(at::MemoryFormat::Contiguous));
}
inline std::tuple<at::Tensor, at::Tensor> alloc_norm_grads(const at::Tensor& x, const at::Tensor& gamma) {
  return {at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous)), at::empty_like(gamma)};
}

}  // namespace arwrap::ops

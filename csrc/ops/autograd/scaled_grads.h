// The one way a fused backward brings its saved gradients to the upstream gradient.
//
// The fused forwards (cross_entropy, linear_cross_entropy) compute their gradients for an
// upstream gradient of 1 and save them. On the first backward they are scaled in place to
// the upstream gradient by scale_grad_, which reads the scale where it lives (no host sync
// on a GPU, no pass when it is 1), and the scale they now carry is saved as "scaled_by". A
// later backward (retain_graph; rare, so one host read) computes out of place from it.
// Traced tensors (fake/functional) are scaled out of place, with no read.
#pragma once

#include "../detail.h"
#include "../tracing.h"
#include "function.h"

#include <ATen/ops/div.h>
#include <ATen/ops/mul.h>

#include <optional>
#include <vector>

namespace arwrap::ops::autograd {

class ScaledGrads {
 public:
  // `op` names the operator in errors.
  ScaledGrads(AutogradContext* ctx, const at::Tensor& grad_loss, const char* op)
      : ctx_(ctx), grad_loss_(grad_loss), traced_(!has_real_data(grad_loss)) {
    if (!traced_ && ctx->saved_data.count("scaled_by")) {
      carried_ = ctx->saved_data["scaled_by"].toTensor().item<double>();
      TORCH_CHECK(*carried_ != 0.0, op, ": a second backward after one with a zero upstream gradient cannot "
                                        "rescale the saved gradient");
    }
  }

  // True on the first eager backward: the saved gradients are scaled in place.
  bool first() const { return !traced_ && !carried_.has_value(); }
  // The scale the saved gradients carry from an earlier backward (1 on the first).
  double carried() const { return carried_.value_or(1.0); }

  // `saved` at the upstream gradient: itself, scaled in place, on the first backward;
  // a new tensor otherwise.
  at::Tensor operator()(const at::Tensor& saved) {
    if (traced_ || !has_real_data(saved)) return at::mul(saved, grad_loss_);
    if (first()) {
      {
        at::AutoDispatchBelowADInplaceOrView guard;
        detail::scale_grad_(saved, grad_loss_);
      }
      scaled_ = true;
      return saved;
    }
    return *carried_ == 1.0 ? at::mul(saved, grad_loss_) : at::mul(saved, at::div(grad_loss_, at::Scalar(*carried_)));
  }

  // Records the scale the saved gradients now carry (after the first backward scaled them).
  ~ScaledGrads() {
    if (scaled_) ctx_->saved_data["scaled_by"] = grad_loss_.detach().clone();
  }

 private:
  AutogradContext* ctx_;
  const at::Tensor& grad_loss_;
  bool traced_;
  std::optional<double> carried_;
  bool scaled_ = false;
};

}  // namespace arwrap::ops::autograd

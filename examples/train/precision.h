// --precision fp32|bf16 for arwrap-train: which precision the training step runs in,
// the default the machine calls for, and the autocast scope that applies it.
//
// bf16 is mixed precision as torch.autocast does it: the parameters, their gradients
// and the optimizer moments stay float32; inside the scope (the forward of a training
// step) matrix products and attention run in bfloat16 while norms,
// softmax statistics and the loss stay float32. The backward runs outside the scope
// and follows the casts autograd recorded. The scope sets at::autocast's thread-local
// state, which libarwrap's native net (ATen) and fused head (its Autocast kernel) honour.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <string>

namespace train {

enum class Precision { FP32, BF16 };

// "fp32" or "bf16"; anything else fails with a message naming --precision.
Precision parse_precision(const std::string& value);
const char* precision_name(Precision p);

// bf16 where the hardware multiplies bfloat16 natively (CUDA, or a CPU with
// avx512_bf16 or AMX), else fp32 (emulated bfloat16 products are slower than float32).
Precision default_precision(c10::DeviceType device);
// Why, for the header line: "--precision" when chosen (on the command line or by the
// checkpoint of a resumed run), else e.g. "default: the CPU has avx512_bf16".
std::string precision_reason(Precision p, c10::DeviceType device, bool chosen);

// arwrap-train measures the validation loss in float32 either way, so runs compare on one scale.
//
// RAII: with BF16, autocast on `device` in bfloat16 for the scope's lifetime (nested
// scopes are fine); with FP32, nothing. Leaving the outermost scope clears autocast's
// cache of cast weights, as torch.autocast's __exit__ does, so the next step casts
// the updated weights again.
class PrecisionScope {
 public:
  PrecisionScope(Precision p, c10::DeviceType device);
  ~PrecisionScope();
  PrecisionScope(const PrecisionScope&) = delete;
  PrecisionScope& operator=(const PrecisionScope&) = delete;

 private:
  bool active_ = false, prev_enabled_ = false;
  c10::DeviceType device_;
  c10::ScalarType prev_dtype_ = c10::ScalarType::BFloat16;
};

}  // namespace train

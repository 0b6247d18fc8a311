// See precision.h.
#include "precision.h"

#include <ATen/autocast_mode.h>
#include <ATen/cpu/Utils.h>

#include <stdexcept>

namespace train {
namespace {

bool cpu_has(const char* capability) {
  const auto caps = at::cpu::get_cpu_capabilities();
  const auto it = caps.find(capability);
  return it != caps.end() && it->second.isBool() && it->second.toBool();
}

}  // namespace

Precision parse_precision(const std::string& value) {
  if (value == "fp32") return Precision::FP32;
  if (value == "bf16") return Precision::BF16;
  throw std::invalid_argument("--precision must be fp32 or bf16, got '" + value + "'");
}

const char* precision_name(Precision p) { return p == Precision::BF16 ? "bf16" : "fp32"; }

Precision default_precision(c10::DeviceType device) {
  if (device == c10::DeviceType::CUDA) return Precision::BF16;
  return cpu_has("avx512_bf16") || cpu_has("amx_bf16") ? Precision::BF16 : Precision::FP32;
}

std::string precision_reason(Precision p, c10::DeviceType device, bool chosen) {
  if (chosen) return "--precision";
  if (device == c10::DeviceType::CUDA) return "default on CUDA";
  if (cpu_has("amx_bf16")) return "default: the CPU has AMX";
  if (cpu_has("avx512_bf16")) return "default: the CPU has avx512_bf16";
  return "default: the CPU has no native bfloat16 products";
}

PrecisionScope::PrecisionScope(Precision p, c10::DeviceType device) : device_(device) {
  if (p != Precision::BF16) return;
  active_ = true;
  prev_enabled_ = at::autocast::is_autocast_enabled(device_);
  prev_dtype_ = at::autocast::get_autocast_dtype(device_);
  at::autocast::set_autocast_enabled(device_, true);
  at::autocast::set_autocast_dtype(device_, at::kBFloat16);
  at::autocast::increment_nesting();
}

PrecisionScope::~PrecisionScope() {
  if (!active_) return;
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  at::autocast::set_autocast_enabled(device_, prev_enabled_);
  at::autocast::set_autocast_dtype(device_, prev_dtype_);
}

}  // namespace train

// Which CPUs take the float32 route for bf16/fp16 GEMMs (low_precision_mm.h says why).
#include "../low_precision_mm.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>

namespace arwrap::ops {
namespace {

enum class Route { Auto, Fp32, Aten };

Route forced_route() {
  const char* v = std::getenv("ARWRAP_LOWP_GEMM");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "auto") == 0) return Route::Auto;
  if (std::strcmp(v, "fp32") == 0) return Route::Fp32;
  if (std::strcmp(v, "aten") == 0) return Route::Aten;
  TORCH_CHECK_VALUE(false, "ARWRAP_LOWP_GEMM must be auto, fp32 or aten, got '", v, "'");
}

// What oneDNN (ATen's fast bf16/fp16 CPU GEMM) needs: avx512_core (F, BW, VL, DQ) for bf16,
// AVX512-FP16 for fp16 (ATen's mkldnn_bf16_device_check / mkldnn_fp16_device_check).
// Other architectures keep ATen's GEMM: only x86 without them is measured slow.
bool aten_fast(bool bf16) {
#if defined(__x86_64__) || defined(__i386__)
  const bool core = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                    __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  return bf16 ? core : core && __builtin_cpu_supports("avx512fp16");
#else
  (void)bf16;
  return true;
#endif
}

bool decide(bool bf16) {
  switch (forced_route()) {
    case Route::Fp32: return true;
    case Route::Aten: return false;
    case Route::Auto: break;
  }
  return !aten_fast(bf16);
}

}  // namespace

bool lowp_gemm_upcasts(c10::DeviceType device, at::ScalarType dt) {
  if (device != c10::DeviceType::CPU) return false;
  if (dt == at::kBFloat16) {
    static const bool bf16 = decide(true);
    return bf16;
  }
  if (dt == at::kHalf) {
    static const bool fp16 = decide(false);
    return fp16;
  }
  return false;
}

}  // namespace arwrap::ops

// Which CPUs take the float32 route for bf16/fp16 GEMMs (low_precision_mm.h says why), and the
// float32 accumulation of a bf16 product on the CPU (add_bf16_), and the residual stream's add of a
// bf16 block output (add_bf16).
#include "../low_precision_mm.h"

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
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

namespace {

// dst = (base ? base : dst) + p, or = p with assign, over rows of cols values (dst and base rows
// `stride` apart, p contiguous), split over the threads by rows (element-wise: the same bits for
// any thread count). bf16 widened exactly (its bits are float32's upper half); one add per value.
void add_widened_rows(float* dst, const float* base, int64_t stride, const uint16_t* p, int64_t rows, int64_t cols,
                      bool assign) {
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(cols, 1));
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* orow = dst + r * stride;
      const float* brow = base ? base + r * stride : orow;
      const uint16_t* prow = p + r * cols;
      if (assign) {
#pragma omp simd
        for (int64_t j = 0; j < cols; ++j) orow[j] = __builtin_bit_cast(float, static_cast<uint32_t>(prow[j]) << 16);
      } else {
#pragma omp simd
        for (int64_t j = 0; j < cols; ++j)
          orow[j] = brow[j] + __builtin_bit_cast(float, static_cast<uint32_t>(prow[j]) << 16);
      }
    }
  });
}

}  // namespace

void add_bf16_(at::Tensor& out, const at::Tensor& p, bool assign) {
  TORCH_CHECK(out.device().is_cpu() && out.scalar_type() == at::kFloat && p.scalar_type() == at::kBFloat16 &&
                  out.dim() == 2 && p.sizes() == out.sizes() && out.stride(1) == 1 && p.is_contiguous(),
              "add_bf16_: a 2-d float32 out with contiguous rows and a contiguous bf16 p of its shape");
  add_widened_rows(out.data_ptr<float>(), nullptr, out.stride(0), static_cast<const uint16_t*>(p.const_data_ptr()),
                   out.size(0), out.size(1), assign);
}

at::Tensor add_bf16(const at::Tensor& x, const at::Tensor& p) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && p.scalar_type() == at::kBFloat16 &&
                  p.sizes() == x.sizes() && x.is_contiguous() && p.is_contiguous(),
              "add_bf16: a contiguous float32 x and a contiguous bf16 p of its shape");
  at::Tensor y = at::empty_like(x);
  const int64_t cols = x.dim() == 0 ? 1 : x.size(-1), rows = cols == 0 ? 0 : x.numel() / cols;
  add_widened_rows(y.data_ptr<float>(), x.const_data_ptr<float>(), cols, static_cast<const uint16_t*>(p.const_data_ptr()),
                   rows, cols, false);
  return y;
}

}  // namespace arwrap::ops

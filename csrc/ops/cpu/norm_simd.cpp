// Instantiates norm_simd.inc for several instruction sets and picks one at run time (the choice
// softmax_simd makes: simd::isa()). Deliberately free of any torch header.
#include "norm_simd.h"

#include "softmax_simd.h"

#include <algorithm>
#include <cstdint>

#if defined(__x86_64__)
ARWRAP_TARGET_AVX512
namespace arwrap::ops::cpu::simd::norm_avx512 {
#include "norm_simd.inc"
}
ARWRAP_TARGET_END

ARWRAP_TARGET_AVX2
namespace arwrap::ops::cpu::simd::norm_avx2 {
#include "norm_simd.inc"
}
ARWRAP_TARGET_END
#endif

namespace arwrap::ops::cpu::simd::norm_base {
#include "norm_simd.inc"
}

namespace arwrap::ops::cpu::simd {
namespace {

#define ARWRAP_NORM_KERNELS(ns, name)                                                                     \
  NormKernels{{{&ns::forward_rows<float, float>, &ns::forward_rows<float, uint16_t>},                     \
               {&ns::forward_rows<uint16_t, float>, &ns::forward_rows<uint16_t, uint16_t>}},              \
              {{&ns::backward_rows<float, float>, &ns::backward_rows<float, uint16_t>},                   \
               {&ns::backward_rows<uint16_t, float>, &ns::backward_rows<uint16_t, uint16_t>}},            \
              name}

NormKernels pick() {
  switch (isa()) {
#if defined(__x86_64__)
    case Isa::Avx512: return ARWRAP_NORM_KERNELS(norm_avx512, "avx512");
    case Isa::Avx2: return ARWRAP_NORM_KERNELS(norm_avx2, "avx2");
#endif
    default: return ARWRAP_NORM_KERNELS(norm_base, "base");
  }
}

}  // namespace

const NormKernels& norm_kernels() {
  static const NormKernels k = pick();
  return k;
}

}  // namespace arwrap::ops::cpu::simd

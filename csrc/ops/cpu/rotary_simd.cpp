// Instantiates rotary_simd.inc for several instruction sets and picks one at run time (the choice
// softmax_simd makes: simd::isa()). Deliberately free of any torch header.
#include "rotary_simd.h"

#include "softmax_simd.h"

#include <cstdint>

#if defined(__x86_64__)
ARWRAP_TARGET_AVX512
namespace arwrap::ops::cpu::simd::rot_avx512 {
#include "rotary_simd.inc"
}
ARWRAP_TARGET_END

ARWRAP_TARGET_AVX2
namespace arwrap::ops::cpu::simd::rot_avx2 {
#include "rotary_simd.inc"
}
ARWRAP_TARGET_END
#endif

namespace arwrap::ops::cpu::simd::rot_base {
#include "rotary_simd.inc"
}

namespace arwrap::ops::cpu::simd {
namespace {

#define ARWRAP_ROTARY_KERNELS(ns, name)                                                       \
  RotaryKernels{{&ns::rotary_forward<float>, &ns::rotary_backward<float>},                    \
                {&ns::rotary_forward<uint16_t>, &ns::rotary_backward<uint16_t>}, name}

RotaryKernels pick() {
  switch (isa()) {
#if defined(__x86_64__)
    case Isa::Avx512: return ARWRAP_ROTARY_KERNELS(rot_avx512, "avx512");
    case Isa::Avx2: return ARWRAP_ROTARY_KERNELS(rot_avx2, "avx2");
#endif
    default: return ARWRAP_ROTARY_KERNELS(rot_base, "base");
  }
}

}  // namespace

const RotaryKernels& rotary_kernels() {
  static const RotaryKernels k = pick();
  return k;
}

}  // namespace arwrap::ops::cpu::simd

// Instantiates activation_simd.inc for several instruction sets (the choice is softmax_simd's
// isa()). Free of torch headers, like softmax_simd.cpp.
#include "activation_simd.h"

#include "softmax_simd.h"

#if defined(__x86_64__)
ARWRAP_TARGET_AVX512
namespace arwrap::ops::cpu::simd::act_avx512 {
#include "activation_simd.inc"
}
ARWRAP_TARGET_END

ARWRAP_TARGET_AVX2
namespace arwrap::ops::cpu::simd::act_avx2 {
#include "activation_simd.inc"
}
ARWRAP_TARGET_END
#endif

namespace arwrap::ops::cpu::simd::act_base {
#include "activation_simd.inc"
}

namespace arwrap::ops::cpu::simd {
namespace {

#define ARWRAP_ACTIVATION_KERNELS(ns, name)                                                     \
  ActivationKernels{{&ns::activation_forward<float>, &ns::activation_backward<float>,             \
                     &ns::activation_backward_recompute<float>},                                    \
                    {&ns::activation_forward<uint16_t>, &ns::activation_backward<uint16_t>,         \
                     &ns::activation_backward_recompute<uint16_t>},                                 \
                    name}

ActivationKernels pick() {
  switch (isa()) {
#if defined(__x86_64__)
    case Isa::Avx512: return ARWRAP_ACTIVATION_KERNELS(act_avx512, "avx512");
    case Isa::Avx2: return ARWRAP_ACTIVATION_KERNELS(act_avx2, "avx2");
#endif
    default: return ARWRAP_ACTIVATION_KERNELS(act_base, "base");
  }
}

}  // namespace

const ActivationKernels& activation_kernels() {
  static const ActivationKernels k = pick();
  return k;
}

}  // namespace arwrap::ops::cpu::simd

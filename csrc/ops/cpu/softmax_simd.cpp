// Instantiates softmax_simd.inc for several instruction sets. Deliberately free of
// any torch header: it compiles in a second.
#include "softmax_simd.h"

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__)
ARWRAP_TARGET_AVX512
namespace arwrap::ops::cpu::simd::avx512 {
#include "softmax_simd.inc"
}
ARWRAP_TARGET_END

ARWRAP_TARGET_AVX2
namespace arwrap::ops::cpu::simd::avx2 {
#include "softmax_simd.inc"
}
ARWRAP_TARGET_END
#endif

namespace arwrap::ops::cpu::simd::base {
#include "softmax_simd.inc"
}

namespace arwrap::ops::cpu::simd {
namespace {

#define ARWRAP_KERNELS(ns, name) \
  Kernels{&ns::max_of, &ns::sum_of, &ns::sum_exp, &ns::grad_affine, &ns::exp_store, &ns::scale_affine, &ns::dot, name}

Kernels pick() {
  switch (isa()) {
#if defined(__x86_64__)
    case Isa::Avx512: return ARWRAP_KERNELS(avx512, "avx512");
    case Isa::Avx2: return ARWRAP_KERNELS(avx2, "avx2");
#endif
    default: return ARWRAP_KERNELS(base, "base");
  }
}

Isa detect() {
  const char* forced = std::getenv("ARWRAP_CPU_ISA");
#if defined(__x86_64__)
  __builtin_cpu_init();
  const bool has512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
  const bool has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (forced != nullptr) {
    if (std::strcmp(forced, "avx512") == 0 && has512) return Isa::Avx512;
    if (std::strcmp(forced, "avx2") == 0 && has2) return Isa::Avx2;
    if (std::strcmp(forced, "base") == 0) return Isa::Base;
  }
  if (has512) return Isa::Avx512;
  if (has2) return Isa::Avx2;
#else
  (void)forced;
#endif
  return Isa::Base;
}

}  // namespace

Isa isa() {
  static const Isa chosen = detect();
  return chosen;
}

const Kernels& kernels() {
  static const Kernels k = pick();
  return k;
}

}  // namespace arwrap::ops::cpu::simd

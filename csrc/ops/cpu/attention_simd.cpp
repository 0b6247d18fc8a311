// Instantiates attention_simd.inc for several instruction sets and picks one at run time
// (the choice softmax_simd makes: simd::isa()). Deliberately free of any torch header.
#include "attention_simd.h"

#include "softmax_simd.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#if defined(__x86_64__)
ARWRAP_TARGET_AVX512
namespace arwrap::ops::cpu::attn::avx512 {
#define ARWRAP_VEC 16
#define ARWRAP_MR 12
#include "attention_simd.inc"
#undef ARWRAP_VEC
#undef ARWRAP_MR
}  // namespace arwrap::ops::cpu::attn::avx512
ARWRAP_TARGET_END

// the same, with bfloat16 products on vdpbf16ps (attention_simd.inc, ARWRAP_BF16_DOT)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx512bf16,avx2,fma,bmi2")
namespace arwrap::ops::cpu::attn::avx512bf16 {
#define ARWRAP_VEC 16
#define ARWRAP_MR 12
#define ARWRAP_BF16_DOT 1
#include "attention_simd.inc"
#undef ARWRAP_BF16_DOT
#undef ARWRAP_VEC
#undef ARWRAP_MR
}  // namespace arwrap::ops::cpu::attn::avx512bf16
#pragma GCC pop_options

ARWRAP_TARGET_AVX2
namespace arwrap::ops::cpu::attn::avx2 {
#define ARWRAP_VEC 8
#define ARWRAP_MR 6
#include "attention_simd.inc"
#undef ARWRAP_VEC
#undef ARWRAP_MR
}  // namespace arwrap::ops::cpu::attn::avx2
ARWRAP_TARGET_END
#endif

namespace arwrap::ops::cpu::attn::base {
#define ARWRAP_VEC 4
#define ARWRAP_MR 4
#include "attention_simd.inc"
#undef ARWRAP_VEC
#undef ARWRAP_MR
}  // namespace arwrap::ops::cpu::attn::base

namespace arwrap::ops::cpu::attn {
namespace {

#define ARWRAP_ATTENTION_KERNELS(ns, name) \
  Kernels{&ns::forward_scratch, &ns::backward_scratch, &ns::forward, &ns::backward, name}

Kernels pick() {
  switch (simd::isa()) {
#if defined(__x86_64__)
    case simd::Isa::Avx512: {
      // bfloat16 on vdpbf16ps where the CPU has it, unless ARWRAP_CPU_ISA=avx512 asks for the
      // plain AVX-512 build (ARWRAP_CPU_ISA=avx512_bf16, or no choice: the best there is)
      const char* forced = std::getenv("ARWRAP_CPU_ISA");
      __builtin_cpu_init();
      if (__builtin_cpu_supports("avx512bf16") && !(forced && std::strcmp(forced, "avx512") == 0))
        return ARWRAP_ATTENTION_KERNELS(avx512bf16, "avx512_bf16");
      return ARWRAP_ATTENTION_KERNELS(avx512, "avx512");
    }
    case simd::Isa::Avx2: return ARWRAP_ATTENTION_KERNELS(avx2, "avx2");
#endif
    default: return ARWRAP_ATTENTION_KERNELS(base, "base");
  }
}

}  // namespace

const Kernels& kernels() {
  static const Kernels k = pick();
  return k;
}

}  // namespace arwrap::ops::cpu::attn

// Instantiates attention_simd.inc for several instruction sets and picks one at run time
// (the choice softmax_simd makes: simd::isa()). Deliberately free of any torch header.
#include "attention_simd.h"

#include "softmax_simd.h"

#include <cstdint>

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,bmi2")
namespace arwrap::ops::cpu::attn::avx512 {
#define ARWRAP_VEC 16
#define ARWRAP_MR 12
#include "attention_simd.inc"
#undef ARWRAP_VEC
#undef ARWRAP_MR
}  // namespace arwrap::ops::cpu::attn::avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi2")
namespace arwrap::ops::cpu::attn::avx2 {
#define ARWRAP_VEC 8
#define ARWRAP_MR 6
#include "attention_simd.inc"
#undef ARWRAP_VEC
#undef ARWRAP_MR
}  // namespace arwrap::ops::cpu::attn::avx2
#pragma GCC pop_options
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
    case simd::Isa::Avx512: return ARWRAP_ATTENTION_KERNELS(avx512, "avx512");
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

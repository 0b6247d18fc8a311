// Instantiates attention_simd.inc for several instruction sets and picks one at run time
// (the choice softmax_simd makes: simd::isa()). Deliberately free of any torch header.
#include "attention_simd.h"

#include "softmax_simd.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif
#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
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

// the same blocking, with bfloat16 products on AMX tiles (attention_simd.inc, ARWRAP_BF16_AMX)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx512bf16,amx-tile,amx-bf16,avx2,fma,bmi2")
namespace arwrap::ops::cpu::attn::amx {
#define ARWRAP_VEC 16
#define ARWRAP_MR 12
#define ARWRAP_BF16_DOT 1
#define ARWRAP_BF16_AMX 1
#include "attention_simd.inc"
#undef ARWRAP_BF16_AMX
#undef ARWRAP_BF16_DOT
#undef ARWRAP_VEC
#undef ARWRAP_MR
}  // namespace arwrap::ops::cpu::attn::amx
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

#if defined(__x86_64__)
// AMX with bfloat16 (CPUID 7.0 EDX: amx-bf16 bit 22, amx-tile bit 24), and the tile data granted to
// this process: Linux hands it out on request only (arch_prctl ARCH_REQ_XCOMP_PERM for
// XFEATURE_XTILEDATA); without the grant a tile instruction kills the process.
bool amx_usable() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  if (!((d >> 22) & 1u) || !((d >> 24) & 1u)) return false;
#if defined(__linux__)
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}
#endif

Kernels pick() {
  switch (simd::isa()) {
#if defined(__x86_64__)
    case simd::Isa::Avx512: {
      // bfloat16 on AMX tiles where the CPU has them, else on vdpbf16ps where it has avx512_bf16;
      // ARWRAP_CPU_ISA=avx512_bf16 or avx512 asks for the build without AMX, or the plain AVX-512
      // one (ARWRAP_CPU_ISA=amx, or no choice: the best there is)
      const char* forced = std::getenv("ARWRAP_CPU_ISA");
      const auto is = [&](const char* name) { return forced != nullptr && std::strcmp(forced, name) == 0; };
      __builtin_cpu_init();
      const bool bf16 = __builtin_cpu_supports("avx512bf16");
      if (bf16 && !is("avx512") && !is("avx512_bf16") && amx_usable())
        return ARWRAP_ATTENTION_KERNELS(amx, "amx");
      if (bf16 && !is("avx512")) return ARWRAP_ATTENTION_KERNELS(avx512bf16, "avx512_bf16");
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

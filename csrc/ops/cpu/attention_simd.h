// The fused CPU attention of one (batch, head): forward and backward, float32 and bfloat16,
// with run-time selection of the widest instruction set this CPU has (AVX-512 with AMX, with
// avx512_bf16 or neither, AVX2+FMA, or baseline), as softmax_simd.h does. The math and the
// blocking are in attention_simd.inc; the operator around it (checks, allocation, threads) is
// attention_kernel.cpp.
// Deliberately free of torch headers.
#pragma once

#include <cstddef>
#include <cstdint>

namespace arwrap::ops::cpu::attn {

enum class Dtype { Float, BFloat16 };

// One head's (rows, d) matrix: element (r, c) at data + r * row_stride + c * col_stride
// (in elements of the problem's dtype).
struct Matrix {
  const void* data;
  int64_t row_stride, col_stride;
};
struct MutMatrix {
  void* data;
  int64_t row_stride, col_stride;
};

// q (m, d), k and v (n, d), n >= m; row i sees key j when key_bias[j] is 0 (not -inf) and,
// if causal, j <= i + (n - m).
struct Problem {
  Dtype dtype;
  int64_t m, n, d;
  float scale;
  bool causal;
  const float* key_bias;  // n values, 0 (visible) or -inf (masked); nullptr: every key visible
};

struct Kernels {
  // Floats of scratch one call needs (one thread's, reused across its heads).
  size_t (*forward_scratch)(int64_t m, int64_t n, int64_t d);
  size_t (*backward_scratch)(int64_t m, int64_t n, int64_t d);
  // out (m, d) = softmax(scale q k^T, masked) v; lse[i] = the row's log-sum-exp (-inf and a
  // zero row of out when row i sees no key).
  void (*forward)(const Problem& p, Matrix q, Matrix k, Matrix v, MutMatrix out, float* lse, float* scratch);
  // dq, dk, dv from dout (m, d), the forward's out and lse, and grad_lse (m values, or nullptr).
  void (*backward)(const Problem& p, Matrix q, Matrix k, Matrix v, Matrix out, Matrix dout, const float* lse,
                   const float* grad_lse, MutMatrix dq, MutMatrix dk, MutMatrix dv, float* scratch);
  const char* isa;
};

// Chosen once, on first use (ARWRAP_CPU_ISA=avx512|avx2|base forces a choice, as for softmax_simd).
// With AVX-512, bfloat16 runs its products on AMX tiles where the CPU has amx-bf16 and the OS grants
// the tile data (isa "amx"), else on vdpbf16ps where it has avx512_bf16 (isa "avx512_bf16");
// ARWRAP_CPU_ISA=avx512_bf16 skips the AMX build, ARWRAP_CPU_ISA=avx512 both.
const Kernels& kernels();

}  // namespace arwrap::ops::cpu::attn

// y = x W^T + b for an x of a few rows, float32 on the CPU, without autograd: the products of
// decoding (one new token per sequence), which read each weight once per token and so are
// bound by memory bandwidth. at::linear runs them as a GEMM at well under half the read
// bandwidth here; this streams W once, row by row over the threads, and dots each row with
// every row of x while it is in L1 (the vectorised dot of softmax_simd.h).
#pragma once

#include <ATen/core/Tensor.h>

namespace arwrap::layers {

// The most rows of x it takes (beam search's beams, a small batch); above, a GEMM is better.
constexpr int64_t kSmallBatchMaxRows = 8;

// Whether small_batch_linear serves this call: x (..., K) with at most kSmallBatchMaxRows rows,
// W (N, K) and b (N,) (or undefined), all float32 on the CPU and holding real data (not traced
// by torch.compile), no gradient wanted (grad mode off, or nothing requires grad) and no CPU
// autocast region.
bool small_batch_linear_applies(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

// at::linear(x, weight, bias) where small_batch_linear_applies (checked: a clear error otherwise).
// Each output is one dot product in a fixed order: the result does not depend on the thread count.
at::Tensor small_batch_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

}  // namespace arwrap::layers

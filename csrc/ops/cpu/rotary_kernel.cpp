// CPU kernels of rotary and rotary_backward (../rotary.cpp): float32 and bfloat16 by the fused row
// kernels (rotary_simd.inc: one read and one write per value, the (batch, head) slices over the
// threads); float64 and float16 by the ATen composition (../rotary_math.h). t is read through its
// strides (a last dimension that is not contiguous is made so first); the output takes t's layout
// (alloc_rotary_output: the heads of a projection stay a view of its memory).
#include "../common.h"
#include "../rotary_math.h"
#include "rotary_simd.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

namespace arwrap::ops::cpu {
namespace {

bool fused(const at::Tensor& t) { return t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16; }

template <class T>
const simd::RotaryRows<T>& rows_of();
template <>
const simd::RotaryRows<float>& rows_of<float>() { return simd::rotary_kernels().f32; }
template <>
const simd::RotaryRows<uint16_t>& rows_of<uint16_t>() { return simd::rotary_kernels().bf16; }

// The element offset of slice o (a flat index over t's leading dimensions, all but the last two).
int64_t slice_offset(int64_t o, const std::vector<int64_t>& sizes, at::IntArrayRef strides) {
  int64_t off = 0;
  for (int64_t dim = static_cast<int64_t>(sizes.size()) - 1; dim >= 0; --dim) {
    off += (o % sizes[dim]) * strides[dim];
    o /= sizes[dim];
  }
  return off;
}

template <class T>
void rotate(const at::Tensor& t, const at::Tensor& out, const at::Tensor& cos, const at::Tensor& sin, bool backward) {
  const int64_t m = t.size(-2), d = t.size(-1), rot = cos.size(1);
  if (t.numel() == 0) return;
  const at::Tensor c = cos.to(at::kFloat).contiguous(), s = sin.to(at::kFloat).contiguous();
  const std::vector<int64_t> lead(t.sizes().begin(), t.sizes().end() - 2);
  const int64_t slices = t.numel() / (m * d);
  const T* src = static_cast<const T*>(t.const_data_ptr());
  T* dst = static_cast<T*>(out.data_ptr());
  const auto& k = rows_of<T>();
  const auto kernel = backward ? k.backward : k.forward;
  const float* cp = c.const_data_ptr<float>();
  const float* sp = s.const_data_ptr<float>();
  at::parallel_for(0, slices, std::max<int64_t>(1, 16384 / (m * d)), [&](int64_t b, int64_t e) {
    for (int64_t o = b; o < e; ++o)
      kernel(src + slice_offset(o, lead, t.strides()), t.stride(-2), dst + slice_offset(o, lead, out.strides()),
             out.stride(-2), cp, sp, m, d, rot);
  });
}

at::Tensor rotary_into(const at::Tensor& t, const at::Tensor& cos, const at::Tensor& sin, bool backward) {
  at::Tensor out = alloc_rotary_output(t);
  if (!fused(t)) return out.copy_(backward ? math::rotary_backward(t, cos, sin) : math::rotary(t, cos, sin));
  const at::Tensor tc = t.stride(-1) == 1 ? t : t.contiguous();
  if (t.scalar_type() == at::kFloat) rotate<float>(tc, out, cos, sin, backward);
  else rotate<uint16_t>(tc, out, cos, sin, backward);
  return out;
}

at::Tensor rotary_cpu(const at::Tensor& t, const at::Tensor& cos, const at::Tensor& sin) {
  check_rotary_args("rotary", t, cos, sin);
  return rotary_into(t, cos, sin, false);
}

at::Tensor rotary_backward_cpu(const at::Tensor& grad, const at::Tensor& cos, const at::Tensor& sin) {
  check_rotary_args("rotary_backward", grad, cos, sin);
  return rotary_into(grad, cos, sin, true);
}

}  // namespace

TORCH_LIBRARY_IMPL(arwrap, CPU, m) {
  m.impl("rotary", &rotary_cpu);
  m.impl("rotary_backward", &rotary_backward_cpu);
}

}  // namespace arwrap::ops::cpu

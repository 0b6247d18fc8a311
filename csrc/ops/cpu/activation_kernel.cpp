// CPU kernels of activation and its two backwards (../activation.cpp):
// float32 and bfloat16 by the fused row kernels (activation_simd.inc, one read of each input
// and one write of each output, rows over the threads); float64 and float16 by the ATen
// composition (../activation_math.h). A non-contiguous input is made contiguous first.
#include "../activation_math.h"
#include "../common.h"
#include "activation_simd.h"
#include "row_block_sums.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

namespace arwrap::ops::cpu {
namespace {

bool fused(const at::Tensor& f) { return f.scalar_type() == at::kFloat || f.scalar_type() == at::kBFloat16; }

// rows per task: about 16K elements, so small tensors stay on one thread
int64_t grain(int64_t w) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(w, 1)); }

template <class T>
const simd::ActivationRows<T>& rows_of();
template <>
const simd::ActivationRows<float>& rows_of<float>() { return simd::activation_kernels().f32; }
template <>
const simd::ActivationRows<uint16_t>& rows_of<uint16_t>() { return simd::activation_kernels().bf16; }

template <class T>
void forward_fused(const at::Tensor& f, const at::Tensor& out, int64_t inner, bool glu, bool swish) {
  const int64_t rows = inner == 0 ? 0 : out.numel() / inner, w = glu ? 2 * inner : inner;
  const T* src = static_cast<const T*>(f.const_data_ptr());
  T* dst = static_cast<T*>(out.data_ptr());
  const auto& k = rows_of<T>();
  at::parallel_for(0, rows, grain(w), [&](int64_t b, int64_t e) {
    k.forward(src + b * w, dst + b * inner, e - b, inner, glu, swish);
  });
}

template <class T>
void backward_fused(const at::Tensor& grad, const at::Tensor& f, const at::Tensor& df, int64_t inner, bool glu,
                    bool swish) {
  const int64_t rows = inner == 0 ? 0 : grad.numel() / inner, w = glu ? 2 * inner : inner;
  const T* g = static_cast<const T*>(grad.const_data_ptr());
  const T* x = static_cast<const T*>(f.const_data_ptr());
  T* d = static_cast<T*>(df.data_ptr());
  const auto& k = rows_of<T>();
  at::parallel_for(0, rows, grain(w), [&](int64_t b, int64_t e) {
    k.backward(g + b * inner, x + b * w, d + b * w, e - b, inner, glu, swish);
  });
}

at::Tensor activation_cpu(const at::Tensor& f, bool glu, bool swish) {
  const int64_t inner = check_activation_args("activation", f, glu);
  if (!fused(f)) return math::activation(f, glu, swish).contiguous();
  const at::Tensor fc = f.contiguous();
  at::Tensor out = alloc_activation_output(f, inner);
  if (f.scalar_type() == at::kFloat) forward_fused<float>(fc, out, inner, glu, swish);
  else forward_fused<uint16_t>(fc, out, inner, glu, swish);
  return out;
}

// df into `df` (contiguous, f's shape)
void backward_into(const at::Tensor& grad, const at::Tensor& f, const at::Tensor& df, int64_t inner, bool glu,
                   bool swish) {
  const at::Tensor gc = grad.contiguous(), fc = f.contiguous();
  if (f.scalar_type() == at::kFloat) backward_fused<float>(gc, fc, df, inner, glu, swish);
  else backward_fused<uint16_t>(gc, fc, df, inner, glu, swish);
}

at::Tensor activation_backward_cpu(const at::Tensor& grad, const at::Tensor& f, bool glu, bool swish) {
  const int64_t inner = check_activation_args("activation_backward", f, glu);
  check_activation_backward_args("activation_backward", grad, f, inner);
  if (!fused(f)) return math::activation_backward(grad, f, glu, swish).contiguous();
  at::Tensor df = at::empty(f.sizes(), f.options().memory_format(at::MemoryFormat::Contiguous));
  backward_into(grad, f, df, inner, glu, swish);
  return df;
}

at::Tensor activation_backward_recompute_cpu(const at::Tensor& grad, const at::Tensor& f, bool glu, bool swish) {
  const int64_t inner = check_activation_args("activation_backward_recompute_", f, glu);
  check_activation_backward_args("activation_backward_recompute_", grad, f, inner);
  const int64_t w = glu ? 2 * inner : inner;
  if (!fused(f)) {  // the composition, through temporaries
    const at::Tensor out = math::activation(f, glu, swish), df = math::activation_backward(grad, f, glu, swish);
    grad.copy_(out);
    f.copy_(df);
    return df.reshape({-1, w}).sum(0, false, f.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  }
  if (!grad.is_contiguous() || !f.is_contiguous()) {  // the fused pass on contiguous copies
    const at::Tensor gc = grad.contiguous(), fc = f.contiguous();
    at::Tensor sum = activation_backward_recompute_cpu(gc, fc, glu, swish);
    grad.copy_(gc);
    f.copy_(fc);
    return sum;
  }
  // d f's column sums over blocks of rows fixed by the shape (row_block_sums.h): the same bits
  // for any thread count
  const int64_t rows = inner == 0 ? 0 : grad.numel() / inner;
  auto run = [&](auto* g, auto* x, const auto& k) {
    return row_block_sums(rows, w, [&](int64_t r0, int64_t n, float* partial) {
      k.backward_recompute(g + r0 * inner, x + r0 * w, partial, n, inner, glu, swish);
    });
  };
  std::vector<float> sum =
      f.scalar_type() == at::kFloat
          ? run(grad.data_ptr<float>(), f.data_ptr<float>(), rows_of<float>())
          : run(static_cast<uint16_t*>(grad.data_ptr()), static_cast<uint16_t*>(f.data_ptr()), rows_of<uint16_t>());
  return at::tensor(sum, f.options().dtype(at::kFloat));
}

}  // namespace

TORCH_LIBRARY_IMPL(arwrap, CPU, m) {
  m.impl("activation", &activation_cpu);
  m.impl("activation_backward", &activation_backward_cpu);
  m.impl("activation_backward_recompute_", &activation_backward_recompute_cpu);
}

}  // namespace arwrap::ops::cpu

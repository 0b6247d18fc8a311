// The CUDA kernel of scale_grad_ (../scale_grad.cpp) and its launch; the operator's CUDA
// kernel, with its checks, is scale_grad_kernel.cpp (no exception is thrown from code nvcc
// compiled; docs/cuda.md). The kernel: grad *= *scale unless *scale == 1,
// the scale read on the device, so no host synchronisation. When it is 1 every block
// returns after one 8-byte read: the cost is one launch, not a read and a write of the
// buffer. Otherwise a grid-stride sweep reads and writes each element once (in the
// accumulate type: float for bf16/fp16/float32, double for float64). Contiguous grad;
// a strided one goes through at::mul_ (which always reads and writes it).
#include "scale_grad_launch.h"

#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>

#include <algorithm>
#include <type_traits>

namespace arwrap::ops::cuda {
namespace {

template <typename T, typename S>
__global__ void __launch_bounds__(256) scale_unless_one_kernel(T* __restrict__ g, int64_t n, const S* __restrict__ scale) {
  using A = std::conditional_t<std::is_same_v<T, double>, double, float>;
  const S s = *scale;
  if (s == S(1)) return;  // uniform over the grid
  const A a = static_cast<A>(s);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    g[i] = static_cast<T>(static_cast<A>(g[i]) * a);
  }
}

}  // namespace

cudaError_t launch_scale_grad(const at::Tensor& grad, const at::Tensor& scale) {
  const int64_t n = grad.numel();
  if (n == 0) return cudaSuccess;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const auto blocks = static_cast<unsigned>(std::clamp<int64_t>((n + 255) / 256, 1, int64_t{sms} * 8));
  cudaError_t err = cudaSuccess;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad.scalar_type(), "arwrap_scale_grad_cuda", [&] {
    if (scale.scalar_type() == at::kFloat) {
      scale_unless_one_kernel<scalar_t, float><<<blocks, 256, 0, stream>>>(grad.data_ptr<scalar_t>(), n,
                                                                           scale.data_ptr<float>());
    } else {
      scale_unless_one_kernel<scalar_t, double><<<blocks, 256, 0, stream>>>(grad.data_ptr<scalar_t>(), n,
                                                                            scale.data_ptr<double>());
    }
    err = cudaGetLastError();
  });
  return err;
}

}  // namespace arwrap::ops::cuda

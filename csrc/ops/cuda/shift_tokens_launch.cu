// The CUDA kernels of shift_tokens and their launches; the operator's CUDA kernel, with its
// checks and every error it raises, is shift_tokens_kernel.cpp (a host-compiler translation
// unit: no exception is thrown from, or through, code nvcc compiled; see docs/cuda.md).
// The semantics are those of ../cpu/shift_tokens_kernel.cpp:
//   target[i, j] = x[i, j + 1] if j + 1 < lens[i] else ignore_index
//   input[i, j]  = pad_value if (j >= lens[i] or x[i, j] == ignore_index) else x[i, j]
//   mask[i, :]   = false at the k = min(int(m * mask_prob), m - 1) positions in 1..m-1
//                  with the largest noise (ties: the lower position; position 0 is never
//                  masked), true elsewhere; with mask_token_id, those input positions
//                  also become mask_token_id.
// Input and mask have m = n columns, or m = n + 1 with keep_last.
// input/target: one elementwise kernel (reads x once, writes input and target once),
// which also validates lens and the token ids inside lens. The keys of the mask's sort:
// one elementwise kernel over noise, which also finds NaN.
// Validation: with device_assert a bad lens, token id or NaN noise fails a device-side
// assertion, without a host synchronisation (../sync_checks.h); without it, the results
// are flags on the device, which shift_tokens_kernel.cpp reads on the host.
#include "shift_tokens_launch.h"

#include <ATen/cuda/CUDAContext.h>

#include <algorithm>
#include <cstdint>

namespace arwrap::ops::cuda {
namespace {

using ull = unsigned long long;
constexpr int kThreads = 256;

// status[0]: first row with lens outside [0, n + 1]; status[1]: first flat position
// in x of a token id inside lens that is < 0 and not ignore_index (with device_assert:
// a device-side assertion instead).
__global__ void __launch_bounds__(kThreads)
    shift_tokens_kernel(const int64_t* __restrict__ x, const int64_t* __restrict__ lens, int64_t b, int64_t n1,
                        int64_t m, int64_t ignore_index, int64_t pad_value, int64_t* __restrict__ input,
                        int64_t* __restrict__ target, ull* status, bool device_assert) {
  const int64_t n = n1 - 1;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < b * m;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx / m, j = idx - i * m;
    int64_t L = lens != nullptr ? lens[i] : n1;
    if (L < 0 || L > n1) {
      if (device_assert) CUDA_KERNEL_ASSERT(false && "arwrap shift_tokens: lens must be in [0, seq_len + 1]");
      if (j == 0) atomicMin(&status[0], static_cast<ull>(i));
      L = L < 0 ? 0 : n1;
    }
    const int64_t* row = x + i * n1;
    const int64_t v = j < L ? row[j] : ignore_index;
    const int64_t u = j + 1 < L ? row[j + 1] : ignore_index;
    // each position of x inside lens is checked: j by thread j, n by thread n - 1
    const bool bad_v = v < 0 && v != ignore_index, bad_u = j == n - 1 && u < 0 && u != ignore_index;
    if (device_assert && (bad_v || bad_u)) {
      CUDA_KERNEL_ASSERT(false && "arwrap shift_tokens: x must hold token ids >= 0 (or ignore_index)");
    }
    if (bad_v) atomicMin(&status[1], static_cast<ull>(i * n1 + j));
    if (bad_u) atomicMin(&status[1], static_cast<ull>(i * n1 + n));
    input[idx] = v == ignore_index ? pad_value : v;
    if (j < n) target[i * n + j] = u;
  }
}

// Sort keys of the maskable positions: keys[i, j - 1] = noise[i, j] for j >= 1, with
// -0 made +0 (the CPU kernel compares values, so -0 and +0 tie). status[2]: the
// first flat position of a NaN anywhere in noise. Reads b*n values, writes b*(n-1).
template <typename N>
__global__ void __launch_bounds__(kThreads)
    noise_keys_kernel(const N* __restrict__ noise, int64_t b, int64_t n, N* __restrict__ keys, ull* status,
                      bool device_assert) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < b * n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const N v = noise[idx];
    if (v != v) {
      if (device_assert) CUDA_KERNEL_ASSERT(false && "arwrap shift_tokens: noise must not contain NaN");
      atomicMin(&status[2], static_cast<ull>(idx));
    }
    const int64_t i = idx / n, j = idx - i * n;
    if (keys != nullptr && j >= 1) keys[i * (n - 1) + (j - 1)] = v == N(0) ? N(0) : v;
  }
}

unsigned blocks_for(int64_t total) {
  return static_cast<unsigned>(std::clamp<int64_t>((total + kThreads - 1) / kThreads, 1, 65536));
}

}  // namespace

cudaError_t launch_shift_tokens(const at::Tensor& x, const at::Tensor& lens, int64_t m, int64_t ignore_index,
                         int64_t pad_value, const at::Tensor& input, const at::Tensor& target,
                         const at::Tensor& status, bool device_assert) {
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t b = x.size(0), n1 = x.size(1);
  ull* st = reinterpret_cast<ull*>(status.data_ptr<int64_t>());
  const cudaError_t e = cudaMemsetAsync(st, 0xff, 3 * sizeof(ull), stream);  // "no position": -1 as int64
  if (e != cudaSuccess) return e;
  shift_tokens_kernel<<<blocks_for(b * m), kThreads, 0, stream>>>(
      x.data_ptr<int64_t>(), lens.defined() ? lens.data_ptr<int64_t>() : nullptr, b, n1, m, ignore_index, pad_value,
      input.data_ptr<int64_t>(), target.data_ptr<int64_t>(), st, device_assert);
  return cudaGetLastError();
}

cudaError_t launch_noise_keys(const at::Tensor& noise, const at::Tensor& keys, const at::Tensor& status,
                       bool device_assert) {
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t b = noise.size(0), m = noise.size(1);
  ull* st = reinterpret_cast<ull*>(status.data_ptr<int64_t>());
  if (noise.scalar_type() == at::kFloat) {
    noise_keys_kernel<float><<<blocks_for(b * m), kThreads, 0, stream>>>(
        noise.data_ptr<float>(), b, m, keys.defined() ? keys.data_ptr<float>() : nullptr, st, device_assert);
  } else {
    noise_keys_kernel<double><<<blocks_for(b * m), kThreads, 0, stream>>>(
        noise.data_ptr<double>(), b, m, keys.defined() ? keys.data_ptr<double>() : nullptr, st, device_assert);
  }
  return cudaGetLastError();
}

}  // namespace arwrap::ops::cuda

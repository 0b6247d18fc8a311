// CUDA kernel of shift_tokens; the semantics are those of ../cpu/shift_tokens_kernel.cpp:
//   target[i, j] = x[i, j + 1] if j + 1 < lens[i] else ignore_index
//   input[i, j]  = pad_value if (j >= lens[i] or x[i, j] == ignore_index) else x[i, j]
//   mask[i, :]   = false at the k = min(int(m * mask_prob), m - 1) positions in 1..m-1
//                  with the largest noise (ties: the lower position; position 0 is never
//                  masked), true elsewhere; with mask_token_id, those input positions
//                  also become mask_token_id.
// Input and mask have m = n columns, or m = n + 1 with keep_last.
// input/target: one elementwise kernel (reads x once, writes input and target once),
// which also validates lens and the token ids inside lens. The mask: a stable
// descending sort of noise[:, 1:] per row (equal noise keeps the lower position
// first, as the CPU kernel's tie-break), the first k positions scattered to false.
// Validation: by default a bad lens, token id or NaN noise fails a device-side
// assertion, without a host synchronisation (../sync_checks.h); with
// ARWRAP_SYNC_CHECKS=1 the results are flags on the device, checked on the host after
// one small copy (a sync), with the same errors as the CPU kernel.
#include "../common.h"
#include "../sync_checks.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>

namespace arwrap::ops::cuda {
namespace {

using ull = unsigned long long;
constexpr ull kNoPosition = ~0ull;
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

int64_t read_one(const int64_t* p, cudaStream_t stream) {
  int64_t v = 0;
  c10::cuda::memcpy_and_sync(&v, p, sizeof(v), cudaMemcpyDeviceToHost, stream);
  return v;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> shift_tokens_cuda(
    const at::Tensor& x_in, const std::optional<at::Tensor>& lens_in, const std::optional<at::Tensor>& noise_in,
    int64_t ignore_index, int64_t pad_value, double mask_prob, std::optional<int64_t> mask_token_id,
    bool keep_last) {
  check_shift_tokens_args(x_in, lens_in, noise_in, mask_prob, mask_token_id, keep_last);
  TORCH_CHECK_VALUE(x_in.is_cuda(), "shift_tokens: expected CUDA tensors, got x on ", x_in.device());
  const c10::cuda::CUDAGuard guard(x_in.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  auto out = alloc_shift_tokens_outputs(x_in, mask_prob, keep_last);
  const at::Tensor x = x_in.contiguous();
  const int64_t b = x.size(0), n1 = x.size(1), m = input_columns(x_in, keep_last);
  const bool has_lens = lens_in.has_value() && lens_in->defined();
  const at::Tensor lens = has_lens ? lens_in->to(at::kLong).contiguous() : at::Tensor();
  const int64_t k = num_masked(m, mask_prob);
  if (b == 0) return {out.input, out.target, out.mask};

  const bool on_host = host_checks(x);
  at::Tensor status = at::empty({3}, x.options());
  ull* st = reinterpret_cast<ull*>(status.data_ptr<int64_t>());
  C10_CUDA_CHECK(cudaMemsetAsync(st, 0xff, 3 * sizeof(ull), stream));

  shift_tokens_kernel<<<blocks_for(b * m), kThreads, 0, stream>>>(
      x.data_ptr<int64_t>(), has_lens ? lens.data_ptr<int64_t>() : nullptr, b, n1, m, ignore_index, pad_value,
      out.input.data_ptr<int64_t>(), out.target.data_ptr<int64_t>(), st, !on_host);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  at::Tensor keys;
  if (mask_prob > 0.0) {
    const at::Tensor noise = noise_in->contiguous();
    if (k > 0) keys = at::empty({b, m - 1}, noise.options());
    if (noise.scalar_type() == at::kFloat) {
      noise_keys_kernel<float><<<blocks_for(b * m), kThreads, 0, stream>>>(
          noise.data_ptr<float>(), b, m, keys.defined() ? keys.data_ptr<float>() : nullptr, st, !on_host);
    } else {
      noise_keys_kernel<double><<<blocks_for(b * m), kThreads, 0, stream>>>(
          noise.data_ptr<double>(), b, m, keys.defined() ? keys.data_ptr<double>() : nullptr, st, !on_host);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  ull host[3] = {kNoPosition, kNoPosition, kNoPosition};
  if (on_host) c10::cuda::memcpy_and_sync(host, st, sizeof(host), cudaMemcpyDeviceToHost, stream);
  if (host[0] != kNoPosition) {
    const auto i = static_cast<int64_t>(host[0]);
    TORCH_CHECK_VALUE(false, "shift_tokens: lens must be in [0, seq_len + 1] = [0, ", n1, "], got lens[", i,
                      "] = ", read_one(lens.data_ptr<int64_t>() + i, stream));
  }
  if (host[1] != kNoPosition) {
    const auto pos = static_cast<int64_t>(host[1]);
    TORCH_CHECK_INDEX(false, "shift_tokens: x must hold token ids >= 0 (or ignore_index ", ignore_index, "), got ",
                      read_one(x.data_ptr<int64_t>() + pos, stream), " at x[", pos / n1, ", ", pos % n1, "]");
  }
  TORCH_CHECK_VALUE(host[2] == kNoPosition, "shift_tokens: noise must not contain NaN");

  if (mask_prob > 0.0) {
    out.mask.fill_(true);
    if (k > 0) {
      // stable: among equal keys the lower position comes first
      const at::Tensor order = std::get<1>(keys.sort(/*stable=*/true, /*dim=*/1, /*descending=*/true));
      const at::Tensor pos = order.narrow(1, 0, k).add(1);  // column j - 1 of keys is position j
      out.mask.scatter_(1, pos, at::Scalar(false));
      if (mask_token_id.has_value()) out.input.scatter_(1, pos, at::Scalar(*mask_token_id));
    }
  }
  return {out.input, out.target, out.mask};
}

}  // namespace

TORCH_LIBRARY_IMPL(arwrap, CUDA, m) { m.impl("shift_tokens", &shift_tokens_cuda); }

}  // namespace arwrap::ops::cuda

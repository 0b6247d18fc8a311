// CUDA kernel of shift_tokens: the argument checks, the allocation, the launches of
// shift_tokens_launch.cu (whose header says what they compute), the host checks of
// ARWRAP_SYNC_CHECKS=1 and the mask's sort. Every error is raised here, in code the host
// compiler built, after the nvcc-compiled launches have returned: an exception thrown
// through nvcc's frames crashed the process on the GPU machine (docs/cuda.md). Built with
// the CUDA kernels only (a CPU build compiles this file to nothing).
#ifdef ARWRAP_WITH_CUDA
#include "../common.h"
#include "../sync_checks.h"
#include "shift_tokens_launch.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

namespace arwrap::ops::cuda {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> shift_tokens_cuda(
    const at::Tensor& x_in, const std::optional<at::Tensor>& lens_in, const std::optional<at::Tensor>& noise_in,
    int64_t ignore_index, int64_t pad_value, double mask_prob, std::optional<int64_t> mask_token_id,
    bool keep_last) {
  check_shift_tokens_args(x_in, lens_in, noise_in, mask_prob, mask_token_id, keep_last);
  TORCH_CHECK_VALUE(x_in.is_cuda(), "shift_tokens: expected CUDA tensors, got x on ", x_in.device());
  const c10::cuda::CUDAGuard guard(x_in.device());
  auto out = alloc_shift_tokens_outputs(x_in, mask_prob, keep_last);
  const at::Tensor x = x_in.contiguous();
  const int64_t b = x.size(0), n1 = x.size(1), m = input_columns(x_in, keep_last);
  const bool has_lens = lens_in.has_value() && lens_in->defined();
  const at::Tensor lens = has_lens ? lens_in->to(at::kLong).contiguous() : at::Tensor();
  const int64_t k = num_masked(m, mask_prob);
  if (b == 0) return {out.input, out.target, out.mask};

  const bool on_host = host_checks(x);
  const at::Tensor status = at::empty({3}, x.options());
  C10_CUDA_CHECK(launch_shift_tokens(x, lens, m, ignore_index, pad_value, out.input, out.target, status, !on_host));
  at::Tensor keys;
  if (mask_prob > 0.0) {
    const at::Tensor noise = noise_in->contiguous();
    if (k > 0) keys = at::empty({b, m - 1}, noise.options());
    C10_CUDA_CHECK(launch_noise_keys(noise, keys, status, !on_host));
  }
  if (on_host) {
    const at::Tensor flags = status.cpu();  // one small copy: a host synchronisation
    const int64_t* f = flags.const_data_ptr<int64_t>();
    if (f[0] != -1) {
      TORCH_CHECK_VALUE(false, "shift_tokens: lens must be in [0, seq_len + 1] = [0, ", n1, "], got lens[", f[0],
                        "] = ", lens[f[0]].item<int64_t>());
    }
    if (f[1] != -1) {
      TORCH_CHECK_INDEX(false, "shift_tokens: x must hold token ids >= 0 (or ignore_index ", ignore_index, "), got ",
                        x.view(-1)[f[1]].item<int64_t>(), " at x[", f[1] / n1, ", ", f[1] % n1, "]");
    }
    TORCH_CHECK_VALUE(f[2] == -1, "shift_tokens: noise must not contain NaN");
  }

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
#endif  // ARWRAP_WITH_CUDA

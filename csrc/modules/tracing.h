// Whether a tensor holds real data we may read on the host (eager CPU/CUDA), or is
// traced (fake or functional tensors under torch.compile, a dispatch mode): the
// data-dependent argument checks (token ids in range) run only on real data.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>

namespace arwrap::detail {

inline bool has_real_data(const at::Tensor& t) {
  if (!(t.is_cpu() || t.is_cuda())) return false;
  if (t.key_set().has(c10::DispatchKey::Python) || t.key_set().has(c10::DispatchKey::Functionalize)) return false;
  return !c10::impl::TorchDispatchModeTLS::any_modes_set();
}

}  // namespace arwrap::detail

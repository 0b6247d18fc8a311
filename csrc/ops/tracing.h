// Whether a tensor holds real data in eager mode (CPU/CUDA), or is traced (fake or
// functional tensors under torch.compile, a dispatch mode is active). Only real data
// may be read on the host (the modules' data-dependent checks of token ids) or
// written in place behind autograd's back (cross_entropy's inplace_backward).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>

namespace arwrap::ops {

inline bool has_real_data(const at::Tensor& t) {
  if (!(t.is_cpu() || t.is_cuda())) return false;
  if (t.key_set().has(c10::DispatchKey::Python) || t.key_set().has(c10::DispatchKey::Functionalize)) return false;
  return !c10::impl::TorchDispatchModeTLS::any_modes_set();
}

}  // namespace arwrap::ops

// What the autocast kernels here share (AutocastCPU, AutocastCUDA): each is one template over
// the device type that excludes its own key (ExcludeAutocast) and re-dispatches through the
// operator's typed entry (../detail.h), to autograd and then the backend, so that autograd
// records the casts and the backward is the operator's own; ARWRAP_AUTOCAST_IMPL registers
// the template under both keys.
#pragma once

#include "../detail.h"

#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

namespace arwrap::ops {

template <c10::DeviceType kDevice>
struct ExcludeAutocast {
  c10::impl::ExcludeDispatchKeyGuard guard{kDevice == c10::DeviceType::CUDA ? c10::DispatchKey::AutocastCUDA
                                                                              : c10::DispatchKey::AutocastCPU};
};

}  // namespace arwrap::ops

#define ARWRAP_AUTOCAST_IMPL(name, kernel)                                                              \
  TORCH_LIBRARY_IMPL(arwrap, AutocastCPU, m) { m.impl(name, &kernel<c10::DeviceType::CPU>); }   \
  TORCH_LIBRARY_IMPL(arwrap, AutocastCUDA, m) { m.impl(name, &kernel<c10::DeviceType::CUDA>); }

// Whether an input check may read device data on the host.
//
// On the CPU reading a value costs nothing, and the checks raise clear Python errors
// (IndexError/ValueError naming the argument and the bad value). On a GPU the same read
// is a host synchronisation: it stalls the launch queue on every call and makes CUDA
// graph capture impossible. So on devices the kernels validate their inputs on the
// device instead (CUDA_KERNEL_ASSERT, as ATen's nll_loss and embedding do: a bad value
// stops the process with a device-side assertion naming the check), unless
// ARWRAP_SYNC_CHECKS=1 is set, which restores the host checks and their clear errors
// (for debugging; read at every call, so a test or a session can switch it).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdlib>
#include <cstring>

namespace arwrap::ops {

inline bool sync_checks_requested() {
  const char* e = std::getenv("ARWRAP_SYNC_CHECKS");
  return e != nullptr && *e != '\0' && std::strcmp(e, "0") != 0;
}

// True when checks on t's values may copy them to the host.
inline bool host_checks(const at::Tensor& t) { return t.is_cpu() || sync_checks_requested(); }

}  // namespace arwrap::ops

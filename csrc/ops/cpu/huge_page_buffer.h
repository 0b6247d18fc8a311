// A large CPU output buffer (a gradient the size of the logits) on 2 MiB pages.
#pragma once

#include <ATen/core/Tensor.h>

namespace arwrap::ops::cpu {

// Contiguous uninitialised tensor of `sizes`; from 16 MiB on, mapped directly, 2 MiB
// aligned and advised for transparent huge pages (huge_page_buffer.cpp says why).
at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options);

}  // namespace arwrap::ops::cpu

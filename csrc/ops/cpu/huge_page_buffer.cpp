#include "huge_page_buffer.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>

#include <sys/mman.h>

#include <cstdint>

namespace arwrap::ops::cpu {

// A gradient-sized output buffer. Fresh memory is slow to fault in on these
// machines (4 KiB pages: ~0.5-1 s per GiB); large buffers are therefore mapped
// directly, 2 MiB aligned and advised for transparent huge pages, and unmapped
// when the tensor dies. Small ones come from the usual allocator.
at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options) {
  int64_t numel = 1;
  for (auto s : sizes) numel *= s;
  const size_t bytes = static_cast<size_t>(numel) * options.dtype().itemsize();
  constexpr size_t kHuge = size_t{2} << 20;
  if (bytes < 8 * kHuge) return at::empty(sizes, options);
  const size_t len = (bytes + kHuge - 1) / kHuge * kHuge + kHuge;
  void* raw = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return at::empty(sizes, options);
  const auto base = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (base + kHuge - 1) / kHuge * kHuge;
#ifdef MADV_HUGEPAGE
  madvise(reinterpret_cast<void*>(aligned), len - (aligned - base), MADV_HUGEPAGE);
#endif
  struct Mapping {
    void* addr;
    size_t len;
  };
  auto* mapping = new Mapping{raw, len};
  return at::from_blob(
      reinterpret_cast<void*>(aligned), sizes,
      [mapping](void*) {
        munmap(mapping->addr, mapping->len);
        delete mapping;
      },
      options);
}

}  // namespace arwrap::ops::cpu

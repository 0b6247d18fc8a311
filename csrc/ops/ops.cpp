// built_with_cuda() of <arwrap/ops.h>. The operators' C++ entries live beside their
// schemas, in csrc/ops/<op>.cpp.
#include <arwrap/ops.h>

namespace arwrap {

bool built_with_cuda() {
#ifdef ARWRAP_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace arwrap

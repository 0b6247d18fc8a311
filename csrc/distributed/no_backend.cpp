// The transport of a libarwrap built without c10d/Gloo (the gloo headers were not found at
// configure time): one process works, more fail with what to install.
#include "backend.h"

#include <c10/util/Exception.h>

namespace arwrap::distributed {

bool transport_available() { return false; }

std::shared_ptr<ProcessGroup::Impl> connect(const EnvConfig& env, const InitOptions&) {
  TORCH_CHECK(false, "arwrap::distributed: WORLD_SIZE=", env.world_size,
              " asks for a data-parallel run, but this libarwrap was built without c10d/Gloo (the gloo headers "
              "were missing at configure time: apt-get install libgloo-dev, then rebuild with "
              "-DARWRAP_WITH_DISTRIBUTED=ON)");
}

}  // namespace arwrap::distributed

// Private to libarwrap: the seam between the process-group handle (process_group.cpp, always
// built) and the transport (gloo_backend.cpp with c10d/Gloo, or no_backend.cpp without it).
#pragma once

#include <arwrap/distributed.h>

#include <memory>
#include <string>

namespace arwrap::distributed {

enum class ReduceKind { Sum, Max };

struct Work::Impl {
  virtual ~Impl() = default;
  virtual void wait() = 0;
};

struct ProcessGroup::Impl {
  int rank = 0, world_size = 1;
  std::string backend = "none";
  std::chrono::milliseconds timeout{0};
  virtual ~Impl() = default;
  virtual std::shared_ptr<Work::Impl> all_reduce(const at::Tensor& t, ReduceKind kind, const std::string& what) = 0;
  virtual std::shared_ptr<Work::Impl> broadcast(const at::Tensor& t, int root, const std::string& what) = 0;
  virtual std::shared_ptr<Work::Impl> barrier(const std::string& what) = 0;
};

// Connects to the store the environment names and joins the group; defined by the transport file.
std::shared_ptr<ProcessGroup::Impl> connect(const EnvConfig& env, const InitOptions& options);
bool transport_available();

// "12.5 s" for messages
std::string seconds_text(std::chrono::milliseconds ms);

}  // namespace arwrap::distributed

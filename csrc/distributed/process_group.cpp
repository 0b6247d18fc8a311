// The process-group handle, the env:// configuration and the helpers built on collectives
// (parameter broadcast, global-norm clipping). The transport is behind backend.h.
#include "backend.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/nn/module.h>
#include <torch/nn/utils/clip_grad.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>

namespace arwrap::distributed {

std::string seconds_text(std::chrono::milliseconds ms) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g s", static_cast<double>(ms.count()) / 1000.0);
  return buf;
}

bool available() { return transport_available(); }

namespace {

std::optional<std::string> env(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return std::nullopt;
  return std::string(v);
}

int64_t env_int(const char* name, const std::string& v, int64_t min, int64_t max, const std::string& hint) {
  size_t pos = 0;
  long long x = 0;
  try {
    x = std::stoll(v, &pos);
  } catch (...) {
    pos = 0;
  }
  TORCH_CHECK_VALUE(pos != 0 && pos == v.size(), "arwrap::distributed: ", name, " must be an integer, got '", v, "'",
                    hint);
  TORCH_CHECK_VALUE(x >= min && x <= max, "arwrap::distributed: ", name, "=", v, " is out of range (", min, "..", max,
                    ")", hint);
  return x;
}

}  // namespace

EnvConfig env_config() {
  EnvConfig c;
  const auto rank = env("RANK"), world = env("WORLD_SIZE");
  if (!rank && !world) return c;  // alone
  TORCH_CHECK_VALUE(rank && world, "arwrap::distributed: ", world ? "WORLD_SIZE" : "RANK", " is set but ",
                    world ? "RANK" : "WORLD_SIZE",
                    " is not: set both (torchrun does), or neither to run as one process");
  c.world_size = static_cast<int>(env_int("WORLD_SIZE", *world, 1, 1 << 20, ""));
  c.rank = static_cast<int>(env_int("RANK", *rank, 0, c.world_size - 1,
                                    " for WORLD_SIZE=" + *world + ": ranks are 0.." + std::to_string(c.world_size - 1)));
  if (const auto lr = env("LOCAL_RANK")) c.local_rank = static_cast<int>(env_int("LOCAL_RANK", *lr, 0, 1 << 20, ""));
  if (c.world_size == 1) return c;
  const auto addr = env("MASTER_ADDR"), port = env("MASTER_PORT");
  TORCH_CHECK_VALUE(addr.has_value(), "arwrap::distributed: MASTER_ADDR is not set: WORLD_SIZE=", c.world_size,
                    " processes meet at rank 0's address (torchrun sets it; by hand e.g. MASTER_ADDR=127.0.0.1 "
                    "MASTER_PORT=29500)");
  TORCH_CHECK_VALUE(port.has_value(), "arwrap::distributed: MASTER_PORT is not set: WORLD_SIZE=", c.world_size,
                    " processes meet at MASTER_ADDR:MASTER_PORT (torchrun sets it; by hand e.g. MASTER_PORT=29500)");
  c.master_addr = *addr;
  c.master_port = static_cast<int>(env_int("MASTER_PORT", *port, 1, 65535, ""));
  if (const auto agent = env("TORCHELASTIC_USE_AGENT_STORE"))
    c.agent_store = *agent == "True" || *agent == "true" || *agent == "1";
  if (const auto rc = env("TORCHELASTIC_RESTART_COUNT"))
    c.restart_count = static_cast<int>(env_int("TORCHELASTIC_RESTART_COUNT", *rc, 0, 1 << 20, ""));
  return c;
}

ProcessGroup init_from_env(const InitOptions& options) {
  TORCH_CHECK_VALUE(options.timeout.count() > 0, "arwrap::distributed: the timeout must be positive, got ",
                    options.timeout.count(), " ms");
  TORCH_CHECK_VALUE(options.backend == "gloo", "arwrap::distributed: backend '", options.backend,
                    "' is not built; this libarwrap has 'gloo'");
  const EnvConfig c = env_config();
  if (c.world_size == 1) return ProcessGroup();
  return ProcessGroup(connect(c, options));
}

// ------------------------------------------------------------------ handle

ProcessGroup::ProcessGroup() = default;
ProcessGroup::ProcessGroup(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
int ProcessGroup::rank() const { return impl_ ? impl_->rank : 0; }
int ProcessGroup::world_size() const { return impl_ ? impl_->world_size : 1; }
std::string ProcessGroup::backend() const { return impl_ ? impl_->backend : "none"; }
std::chrono::milliseconds ProcessGroup::timeout() const { return impl_ ? impl_->timeout : std::chrono::milliseconds(0); }

void Work::wait() {
  if (impl_) impl_->wait();
}

static void check_dense(const at::Tensor& t, const std::string& what) {
  TORCH_CHECK_VALUE(t.defined(), "arwrap::distributed: ", what, ": the tensor is undefined");
  TORCH_CHECK_VALUE(t.is_contiguous(), "arwrap::distributed: ", what, ": the tensor must be contiguous");
}

Work ProcessGroup::all_reduce_sum_async(const at::Tensor& tensor, const std::string& what) const {
  check_dense(tensor, what);
  if (!impl_) return Work();
  return Work(impl_->all_reduce(tensor, ReduceKind::Sum, what));
}

void ProcessGroup::all_reduce_sum(const at::Tensor& tensor, const std::string& what) const {
  all_reduce_sum_async(tensor, what).wait();
}

void ProcessGroup::all_reduce_max(const at::Tensor& tensor, const std::string& what) const {
  check_dense(tensor, what);
  if (impl_) impl_->all_reduce(tensor, ReduceKind::Max, what)->wait();
}

void ProcessGroup::broadcast(const at::Tensor& tensor, int root, const std::string& what) const {
  check_dense(tensor, what);
  TORCH_CHECK_VALUE(root >= 0 && root < world_size(), "arwrap::distributed: ", what, ": root ", root,
                    " is not a rank of a group of ", world_size());
  if (impl_) impl_->broadcast(tensor, root, what)->wait();
}

void ProcessGroup::barrier(const std::string& what) const {
  if (impl_) impl_->barrier(what)->wait();
}

// ------------------------------------------------------------------ helpers

void broadcast_tensors(const ProcessGroup& pg, const std::vector<at::Tensor>& tensors, int root) {
  if (!pg.is_distributed()) return;
  // one flat buffer per (dtype, device), in the tensors' order (the same on every rank)
  std::map<std::pair<int, std::string>, std::vector<at::Tensor>> groups;
  std::vector<std::pair<int, std::string>> order;
  for (const auto& t : tensors) {
    if (!t.defined()) continue;
    const auto key = std::make_pair(static_cast<int>(t.scalar_type()), t.device().str());
    if (!groups.count(key)) order.push_back(key);
    groups[key].push_back(t);
  }
  at::NoGradGuard no_grad;
  for (const auto& key : order) {
    auto& ts = groups[key];
    std::vector<at::Tensor> flat_parts;
    for (const auto& t : ts) flat_parts.push_back(t.detach().reshape(-1));
    auto flat = at::cat(flat_parts);
    pg.broadcast(flat, root, "broadcast of the parameters from rank " + std::to_string(root));
    int64_t off = 0;
    for (auto& t : ts) {
      const int64_t n = t.numel();
      t.detach().copy_(flat.narrow(0, off, n).view(t.sizes()));
      off += n;
    }
  }
}

void broadcast_parameters(const ProcessGroup& pg, torch::nn::Module& module, int root) {
  std::vector<at::Tensor> ts = module.parameters(true);
  for (const auto& b : module.buffers(true)) ts.push_back(b);
  broadcast_tensors(pg, ts, root);
}

double clip_grad_norm(const ProcessGroup& pg, const std::vector<at::Tensor>& params, double max_norm,
                      bool check_consistent) {
  const double norm = torch::nn::utils::clip_grad_norm_(params, max_norm);
  if (check_consistent && pg.is_distributed()) {
    auto t = at::tensor({norm, -norm}, at::kDouble);
    pg.all_reduce_max(t, "gradient-norm check");
    const double hi = t[0].item<double>(), lo = -t[1].item<double>();
    TORCH_CHECK(hi - lo <= 1e-6 * std::max(1.0, std::abs(hi)), "arwrap::distributed: the gradient norms differ across ",
                "ranks (", lo, " .. ", hi, "): the gradients were not averaged before clipping");
  }
  return norm;
}

}  // namespace arwrap::distributed

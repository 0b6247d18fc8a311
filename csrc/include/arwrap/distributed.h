// Data parallelism for C++ training programs on PyTorch's own distributed engine (c10d):
// rendezvous through a TCPStore (env://, as torchrun sets it up), Gloo for the collectives.
//
//   auto pg = arwrap::distributed::init_from_env();          // alone when RANK/WORLD_SIZE are unset
//   arwrap::distributed::broadcast_parameters(pg, *net);      // every rank starts from rank 0's weights
//   arwrap::distributed::GradientReducer reducer(pg, net->parameters());
//   for (...) {
//     reducer.prepare_for_backward();                         // before the (last micro-batch's) backward
//     loss.backward();                                        // full buckets are all-reduced during backward
//     reducer.finish();                                       // .grad = the mean over ranks
//     torch::nn::utils::clip_grad_norm_(params, 0.5);         // same gradients everywhere: the global norm
//     opt.step(); opt.zero_grad();
//   }
//
// Every collective, and the rendezvous, give up after InitOptions::timeout with a c10::Error that
// says which operation, which rank and why; nothing waits for ever. The header needs no gloo or c10d
// headers: those are private to libarwrap (built when the gloo headers are found, see available()).
#pragma once

#include <ATen/core/Tensor.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace torch::nn {
class Module;
}

namespace arwrap::distributed {

// True when libarwrap was built with c10d/Gloo (CMake ARWRAP_WITH_DISTRIBUTED; needs the gloo
// headers, Debian/Ubuntu: apt-get install libgloo-dev). Without it init_from_env() still works for
// one process and fails with a clear error when the environment asks for more.
bool available();

struct InitOptions {
  // rendezvous (connecting to the store, meeting every rank) and every collective time out after this
  std::chrono::milliseconds timeout{std::chrono::seconds(300)};
  // "gloo" (CPU, and CUDA tensors staged by Gloo) is the one backend built today
  std::string backend = "gloo";
};

// What the environment asks for (env://): RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, and under
// torchrun TORCHELASTIC_USE_AGENT_STORE / TORCHELASTIC_RESTART_COUNT / LOCAL_RANK.
struct EnvConfig {
  int rank = 0, world_size = 1, local_rank = 0;
  std::string master_addr;
  int master_port = 0;
  bool agent_store = false;  // torchrun's agent hosts the store: every rank, rank 0 too, is a client
  int restart_count = 0;
};
// Reads and checks the environment; a bad or partial setting throws a c10::ValueError naming the
// variable. No RANK and no WORLD_SIZE: one process (world_size 1).
EnvConfig env_config();

// A handle on a process group (cheap to copy). world_size() == 1: every collective is a no-op.
class Work;
class ProcessGroup {
 public:
  ProcessGroup();  // one process, no backend
  int rank() const;
  int world_size() const;
  bool is_distributed() const { return world_size() > 1; }
  std::string backend() const;  // "gloo", or "none" for one process
  std::chrono::milliseconds timeout() const;

  // In place, over every rank, started now and finished by Work::wait() (which throws on failure).
  Work all_reduce_sum_async(const at::Tensor& tensor, const std::string& what) const;
  void all_reduce_sum(const at::Tensor& tensor, const std::string& what = "all-reduce") const;
  void all_reduce_max(const at::Tensor& tensor, const std::string& what = "all-reduce (max)") const;
  void broadcast(const at::Tensor& tensor, int root = 0, const std::string& what = "broadcast") const;
  void barrier(const std::string& what = "barrier") const;

  struct Impl;
  explicit ProcessGroup(std::shared_ptr<Impl> impl);

 private:
  std::shared_ptr<Impl> impl_;
};

// A started collective. wait() blocks until it is done (or the timeout), and throws c10::Error
// naming the operation, the rank and the backend's reason when a peer died, hung or left.
class Work {
 public:
  Work() = default;
  void wait();
  bool started() const { return impl_ != nullptr; }
  struct Impl;
  explicit Work(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

 private:
  std::shared_ptr<Impl> impl_;
};

// Joins the process group the environment describes (see EnvConfig), or returns a one-process
// group when there is none. Fails within options.timeout with an error that names MASTER_ADDR:
// MASTER_PORT when the store cannot be reached, or the ranks that did not join.
ProcessGroup init_from_env(const InitOptions& options = {});

// Rank `root`'s parameters and buffers overwrite everyone's (one flat broadcast per dtype).
void broadcast_parameters(const ProcessGroup& pg, torch::nn::Module& module, int root = 0);
void broadcast_tensors(const ProcessGroup& pg, const std::vector<at::Tensor>& tensors, int root = 0);

struct GradientReducerOptions {
  // Gradients are packed, in reverse order of the parameters (roughly the order backward produces
  // them), into buckets of at most this many bytes; one all-reduce per bucket.
  int64_t bucket_bytes = 4 << 20;
  // Start a bucket's all-reduce from backward as soon as all its gradients are accumulated
  // (post-accumulate-grad hooks), so communication overlaps the rest of backward. Off: every
  // bucket is reduced in finish().
  bool overlap = true;
};

// Averages the gradients of `params` over the ranks of `pg`, bucketed, overlapped with backward.
// Buckets are always launched in the same order on every rank. A parameter without a gradient on
// some rank (unused, or a rank whose micro-batch ran no backward) contributes zeros there, so that
// rank still joins every all-reduce, and ends with the average as its .grad. A parameter with a
// gradient on no rank keeps no .grad (as in one process: the optimizer skips it).
class GradientReducer {
 public:
  GradientReducer(ProcessGroup pg, std::vector<at::Tensor> params, GradientReducerOptions options = {});
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  // Arms the hooks for the next backward: call it before the backward of the last micro-batch of a
  // step (earlier micro-batches only accumulate .grad locally).
  void prepare_for_backward();
  // Launches the buckets not launched yet, waits for all, and writes the mean into every .grad.
  void finish();

  int64_t num_buckets() const;
  int64_t bytes_per_step() const;          // gradient bytes all-reduced per step (per rank)
  double last_wait_seconds() const;        // time finish() spent waiting for communication
  double last_launch_seconds() const;      // time spent packing and launching buckets (in hooks and finish)
  int64_t last_buckets_overlapped() const; // buckets launched from backward in the last step

  struct State;

 private:
  std::shared_ptr<State> state_;
};

// clip_grad_norm_ on gradients that are already averaged (identical on every rank), so the norm is the
// global norm of the global batch's gradient, as one process on the whole batch computes it. In a
// debug check (check_consistent = true) the ranks all-reduce their norms and throw if they differ.
double clip_grad_norm(const ProcessGroup& pg, const std::vector<at::Tensor>& params, double max_norm,
                      bool check_consistent = false);

}  // namespace arwrap::distributed

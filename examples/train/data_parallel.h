// arwrap-train's data parallelism: the flags, the process group (arwrap::distributed, c10d/Gloo),
// each rank's window streams, the gradient reducer and the per-step agreement (loss, Ctrl-C).
// Launched by torchrun (or RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT); without that, one process.
#pragma once

#include <arwrap/distributed.h>

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace train {

struct DistFlags {
  double timeout_s = 300;  // rendezvous and every collective; also the longest rank-0-only pause
  int64_t as_ranks = 1;    // each process draws the windows of this many ranks (batch x as_ranks)
  double bucket_mb = 4;
  bool overlap = true;
};

// Sets --dist-timeout, --as-ranks, --bucket-mb or --overlap; false for any other flag.
bool set_dist_flag(DistFlags& f, const std::string& name, const std::string& value);
extern const char* const kDistUsage;

class DataParallel {
 public:
  // Joins the group the environment describes (or none). `training` false (--eval-only, --sample):
  // more than one process is an error. Ranks other than 0 print nothing on stdout from here on.
  DataParallel(const DistFlags& flags, bool training);
  int rank() const { return pg_.rank(); }
  int world_size() const { return pg_.world_size(); }
  bool is_main() const { return pg_.rank() == 0; }
  // windows per step over all ranks, in units of --batch x --accum
  int64_t shards() const { return static_cast<int64_t>(pg_.world_size()) * flags_.as_ranks; }
  // the tokens of a step over all ranks (what tokens/s counts), from one rank's batch x accum x seq_len
  int64_t global_tokens(int64_t per_rank) const { return per_rank * shards(); }

  // This process's window streams for a step: one per rank it draws for. Rank r's stream is
  // (seed, step, r); rank 0's is the one-process stream, so a 1-rank run is unchanged.
  std::vector<std::mt19937_64> window_rngs(int64_t seed, int64_t step) const;

  // Rank 0's weights to everyone; the gradient reducer over `params`.
  void start(std::vector<at::Tensor> params, const std::vector<at::Tensor>& state);
  void before_last_backward();
  void after_backward();
  // What the ranks agree on after each step's backward, before the optimizer step.
  struct Agreed {
    double loss;       // the mean over ranks of their mean losses (NaN when any rank's is)
    bool finite;       // every rank's loss and gradient norm finite: take the optimizer step
    bool interrupted;  // any rank interrupted (Ctrl-C): every rank stops at this step
  };
  // Sums the ranks' mean losses (-> global mean), ORs their non-finite and interrupt flags.
  Agreed agree(double loss, double grad_norm, bool interrupted);

  std::string header(int64_t tokens_per_rank) const;  // world size, backend, global batch, buckets, timeout
  std::string summary(double train_seconds, int64_t steps) const;  // communication time per step

 private:
  DistFlags flags_;
  arwrap::distributed::ProcessGroup pg_;
  std::unique_ptr<arwrap::distributed::GradientReducer> reducer_;
  double wait_s_ = 0, launch_s_ = 0, agree_s_ = 0;
  int64_t overlapped_ = 0, steps_ = 0;
};

// "arwrap-train: error[ (rank r of N)]: MSG" on stderr. In a multi-process run it then exits at once
// (status 1) without running destructors that could wait on a dead peer.
int report_error(const std::string& msg);

}  // namespace train

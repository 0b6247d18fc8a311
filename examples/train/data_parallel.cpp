#include "data_parallel.h"
#include "flags.h"

#include <ATen/ATen.h>
#include <c10/util/Logging.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>

namespace train {

const char* const kDistUsage = R"(data parallel (launch with torchrun --no-python --nproc_per_node=N arwrap-train ...,
or set RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT; docs/distributed.md)
  --dist-timeout S     seconds the rendezvous and every collective wait for the other ranks
                       before failing (default 300); must exceed rank 0's validation, sample
                       and checkpoint pauses
  --as-ranks N         draw the windows of N ranks in each process (its micro-batch is N x --batch):
                       one process with --as-ranks 2 trains as 2 ranks do (default 1)
  --bucket-mb F        gradient all-reduce bucket size in MB (default 4)
  --overlap on|off     start each bucket's all-reduce during backward (default on)
)";

namespace {
int g_rank = 0, g_world = 1;

}  // namespace

bool set_dist_flag(DistFlags& f, const std::string& name, const std::string& v) {
  if (name == "dist-timeout") {
    f.timeout_s = parse_float("--dist-timeout", v, 0);
    if (f.timeout_s < 0.001) fail("--dist-timeout must be positive, got " + v);
  } else if (name == "as-ranks") {
    f.as_ranks = parse_int("--as-ranks", v, 1);
  } else if (name == "bucket-mb") {
    f.bucket_mb = parse_float("--bucket-mb", v, 0);
    if (f.bucket_mb <= 0) fail("--bucket-mb must be positive, got " + v);
  } else if (name == "overlap") {
    if (v != "on" && v != "off") fail("--overlap must be on or off, got '" + v + "'");
    f.overlap = v == "on";
  } else {
    return false;
  }
  return true;
}

DataParallel::DataParallel(const DistFlags& flags, bool training) : flags_(flags) {
  const auto env = arwrap::distributed::env_config();  // bad RANK/WORLD_SIZE: a clear error first
  if (env.world_size > 1 && !training)
    fail("--eval-only and --sample run in one process; launch them without torchrun (WORLD_SIZE=" +
         std::to_string(env.world_size) + ")");
  // c10d logs each connection retry and timeout with a backtrace; arwrap-train reports a failure as one
  // line instead. TORCH_CPP_LOG_LEVEL=INFO (or WARNING) brings c10d's own log back.
  if (env.world_size > 1 && std::getenv("TORCH_CPP_LOG_LEVEL") == nullptr) FLAGS_caffe2_log_level = 3;
  arwrap::distributed::InitOptions o;
  o.timeout = std::chrono::milliseconds(static_cast<int64_t>(flags.timeout_s * 1000.0 + 0.5));
  pg_ = arwrap::distributed::init_from_env(o);
  g_rank = pg_.rank();
  g_world = pg_.world_size();
  if (!is_main() && std::freopen("/dev/null", "w", stdout) == nullptr)
    fail("rank " + std::to_string(rank()) + ": cannot silence stdout");
}

std::vector<std::mt19937_64> DataParallel::window_rngs(int64_t seed, int64_t step) const {
  std::vector<std::mt19937_64> out;
  for (int64_t j = 0; j < flags_.as_ranks; ++j) {
    const auto r = static_cast<uint64_t>(rank() * flags_.as_ranks + j);
    if (r == 0) {  // as main.cpp's rng_for(seed, step, 0): the one-process windows
      std::seed_seq seq{static_cast<uint64_t>(seed), static_cast<uint64_t>(step), uint64_t{0}};
      out.emplace_back(seq);
    } else {
      std::seed_seq seq{static_cast<uint64_t>(seed), static_cast<uint64_t>(step), uint64_t{0}, r};
      out.emplace_back(seq);
    }
  }
  return out;
}

void DataParallel::start(std::vector<at::Tensor> params, const std::vector<at::Tensor>& state) {
  std::vector<at::Tensor> all = params;
  all.insert(all.end(), state.begin(), state.end());
  arwrap::distributed::broadcast_tensors(pg_, all, 0);
  arwrap::distributed::GradientReducerOptions o;
  o.bucket_bytes = static_cast<int64_t>(flags_.bucket_mb * 1e6);
  o.overlap = flags_.overlap;
  reducer_ = std::make_unique<arwrap::distributed::GradientReducer>(pg_, std::move(params), o);
}

void DataParallel::before_last_backward() {
  if (reducer_) reducer_->prepare_for_backward();
}

void DataParallel::after_backward() {
  if (!reducer_) return;
  reducer_->finish();
  wait_s_ += reducer_->last_wait_seconds();
  launch_s_ += reducer_->last_launch_seconds();
  overlapped_ += reducer_->last_buckets_overlapped();
  ++steps_;
}

DataParallel::Agreed DataParallel::agree(double loss, double grad_norm, bool interrupted) {
  const bool bad = !std::isfinite(loss) || !std::isfinite(grad_norm);
  if (!pg_.is_distributed()) return {loss, !bad, interrupted};
  const auto t0 = std::chrono::steady_clock::now();
  auto t = at::tensor({loss, bad ? 1.0 : 0.0, interrupted ? 1.0 : 0.0}, at::kDouble);
  pg_.all_reduce_sum(t, "all-reduce of the step's loss");
  agree_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return {t[0].item<double>() / world_size(), t[1].item<double>() == 0, t[2].item<double>() > 0};
}

std::string DataParallel::header(int64_t tokens_per_rank) const {
  char buf[512];
  const long long tokens = static_cast<long long>(global_tokens(tokens_per_rank));
  if (!pg_.is_distributed()) {
    std::snprintf(buf, sizeof buf, "data parallel: world size 1 (one process%s), %lld tokens per step",
                  flags_.as_ranks > 1 ? (", drawing the windows of " + std::to_string(flags_.as_ranks) + " ranks").c_str()
                                      : "",
                  tokens);
    return buf;
  }
  std::snprintf(buf, sizeof buf,
                "data parallel: world size %d, backend %s, global batch %d x --batch%s = %lld tokens per step, gradient "
                "all-reduce %.2f MB/step in %lld bucket%s (overlap %s), timeout %g s",
                world_size(), pg_.backend().c_str(), static_cast<int>(shards()),
                flags_.as_ranks > 1 ? (" (" + std::to_string(flags_.as_ranks) + " per process)").c_str() : "", tokens,
                reducer_ ? static_cast<double>(reducer_->bytes_per_step()) / 1e6 : 0.0,
                static_cast<long long>(reducer_ ? reducer_->num_buckets() : 0),
                reducer_ && reducer_->num_buckets() == 1 ? "" : "s", flags_.overlap ? "on" : "off", flags_.timeout_s);
  return buf;
}

std::string DataParallel::summary(double train_seconds, int64_t steps) const {
  if (!pg_.is_distributed() || steps_ == 0 || steps <= 0) return "";
  const double per = 1000.0 / static_cast<double>(steps_);
  const double comm = wait_s_ + launch_s_ + agree_s_;
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "communication (rank 0): %.2f ms/step waiting for gradient buckets, %.2f ms/step packing+launching "
                "(%.1f buckets/step from backward), %.2f ms/step loss all-reduce; %.1f%% of the training time",
                wait_s_ * per, launch_s_ * per, static_cast<double>(overlapped_) / static_cast<double>(steps_),
                agree_s_ * per, 100.0 * comm / std::max(train_seconds, 1e-9));
  return buf;
}

int report_error(const std::string& msg) {
  if (g_world > 1) {
    std::fprintf(stderr, "arwrap-train: error (rank %d of %d): %s\n", g_rank, g_world, msg.c_str());
    std::fflush(stdout);
    std::fflush(stderr);
    std::_Exit(1);
  }
  std::fprintf(stderr, "arwrap-train: error: %s\n", msg.c_str());
  return 1;
}

}  // namespace train

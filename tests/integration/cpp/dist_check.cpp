// dist_check MODE [TIMEOUT_S]: arwrap::distributed from a small C++ training program.
//   check  every rank checks the API against what one process computes for all ranks' data:
//          the broadcast of rank 0's weights, the averaged gradients (several bucket sizes, with and
//          without overlap, gradient accumulation, an unused parameter, a rank that runs no
//          backward at all), the global-norm clip, the barrier. Prints "rank R of N: OK (K checks)".
//   hang   rank 1 stops answering (sleeps); the others must fail within the timeout.
//   bench BYTES REPS   times REPS all-reduces of a float32 buffer of BYTES after a barrier (for
//          bench/bench_distributed.py): rank 0 prints the median milliseconds.
// Launch: torchrun --no-python --nproc_per_node=2 dist_check check
#include <arwrap/distributed.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

namespace dist = arwrap::distributed;

namespace {

int checks = 0;

void expect(bool ok, const std::string& what) {
  ++checks;
  if (!ok) throw std::runtime_error("check failed: " + what);
}

struct NetImpl : torch::nn::Module {
  torch::nn::Linear a{nullptr}, b{nullptr}, unused{nullptr};
  NetImpl() {
    // never in the graph; registered first, so its bucket is the last (buckets go in reverse order)
    // and does not hold back the ones backward fills
    unused = register_module("unused", torch::nn::Linear(3, 3));
    a = register_module("a", torch::nn::Linear(8, 32));
    b = register_module("b", torch::nn::Linear(32, 4));
  }
  torch::Tensor forward(const torch::Tensor& x) { return b(torch::tanh(a(x))); }
};
TORCH_MODULE(Net);

torch::Tensor data_of(int rank, int micro) {
  torch::manual_seed(1000 + 10 * rank + micro);
  return torch::randn({5, 8});
}
torch::Tensor loss_of(Net& net, int rank, int micro) { return net(data_of(rank, micro)).pow(2).mean(); }

// float64 reference: the mean over ranks of each rank's (accumulated) gradient, computed alone
std::vector<torch::Tensor> expected_grads(Net& ref, int world, int micro_batches, int silent_rank) {
  std::vector<torch::Tensor> sum;
  for (auto& p : ref->parameters()) sum.push_back(torch::zeros_like(p, torch::kDouble));
  std::vector<bool> any(sum.size(), false);
  for (int r = 0; r < world; ++r) {
    if (r == silent_rank) continue;  // contributes zeros
    ref->zero_grad();
    for (int m = 0; m < micro_batches; ++m) loss_of(ref, r, m).backward();
    auto ps = ref->parameters();
    for (size_t i = 0; i < ps.size(); ++i)
      if (ps[i].grad().defined()) {
        sum[i] += ps[i].grad().to(torch::kDouble);
        any[i] = true;
      }
  }
  for (size_t i = 0; i < sum.size(); ++i) {
    sum[i] /= world;
    if (!any[i]) sum[i] = torch::Tensor();  // a gradient on no rank: none after finish() either
  }
  return sum;
}

void check_step(const dist::ProcessGroup& pg, Net& net, Net& ref, int64_t bucket_bytes, bool overlap, int micro,
                int silent_rank) {
  dist::GradientReducerOptions o;
  o.bucket_bytes = bucket_bytes;
  o.overlap = overlap;
  dist::GradientReducer reducer(pg, net->parameters(), o);
  const std::string what = "bucket_bytes=" + std::to_string(bucket_bytes) + " overlap=" + std::to_string(overlap) +
                           " micro=" + std::to_string(micro) + " silent=" + std::to_string(silent_rank);
  for (int step = 0; step < 2; ++step) {  // twice: the reducer is reusable
    net->zero_grad();
    for (auto& p : net->parameters()) p.mutable_grad() = torch::Tensor();  // undefined, as at the start
    for (int m = 0; m < micro; ++m) {
      if (m == micro - 1) reducer.prepare_for_backward();
      if (pg.rank() != silent_rank) loss_of(net, pg.rank(), m).backward();
    }
    reducer.finish();
    const auto want = expected_grads(ref, pg.world_size(), micro, silent_rank);
    auto ps = net->parameters();
    for (size_t i = 0; i < ps.size(); ++i) {
      expect(ps[i].grad().defined() == want[i].defined(),
             what + ": grad " + std::to_string(i) + " defined after finish() iff some rank has one");
      if (!want[i].defined()) continue;
      const double err = (ps[i].grad().to(torch::kDouble) - want[i]).abs().max().item<double>();
      const double scale = std::max(want[i].abs().max().item<double>(), 1e-12);
      expect(err <= 1e-6 * scale + 1e-12, what + ": grad " + std::to_string(i) + " is the mean over ranks (err " +
                                              std::to_string(err) + ")");
    }
    expect(reducer.bytes_per_step() ==
               static_cast<int64_t>(sizeof(float)) * [&] { int64_t n = 0; for (auto& p : ps) n += p.numel(); return n; }(),
           what + ": bytes_per_step covers every parameter");
    if (pg.is_distributed() && overlap && reducer.num_buckets() > 1 && silent_rank != pg.rank())
      expect(reducer.last_buckets_overlapped() > 0, what + ": some buckets started during backward");
    if (!overlap) expect(reducer.last_buckets_overlapped() == 0, what + ": nothing starts early without overlap");
  }
}

int check(const dist::ProcessGroup& pg) {
  // every rank builds different weights; the broadcast makes them rank 0's
  torch::manual_seed(100 + pg.rank());
  Net net;
  torch::manual_seed(100);
  Net ref;  // rank 0's weights, built alone
  dist::broadcast_parameters(pg, *net);
  {
    auto a = net->parameters(), b = ref->parameters();
    for (size_t i = 0; i < a.size(); ++i) expect(torch::equal(a[i], b[i]), "parameter " + std::to_string(i) + " is rank 0's");
  }
  const int last = pg.world_size() - 1;
  for (int64_t bucket : {int64_t{64}, int64_t{600}, int64_t{1} << 20})
    for (bool overlap : {true, false}) check_step(pg, net, ref, bucket, overlap, 1, -1);
  check_step(pg, net, ref, 600, true, 3, -1);                      // gradient accumulation
  if (pg.is_distributed()) check_step(pg, net, ref, 600, true, 1, last);  // a rank with nothing to count joins

  // the clip after averaging is on the global norm, the same on every rank
  net->zero_grad();
  dist::GradientReducer reducer(pg, net->parameters());
  reducer.prepare_for_backward();
  loss_of(net, pg.rank(), 0).backward();
  reducer.finish();
  const double norm = dist::clip_grad_norm(pg, net->parameters(), 1e-3, /*check_consistent=*/true);
  const auto want = expected_grads(ref, pg.world_size(), 1, -1);
  double sq = 0;
  for (auto& g : want)
    if (g.defined()) sq += g.pow(2).sum().item<double>();
  expect(std::abs(norm - std::sqrt(sq)) <= 1e-5 * std::sqrt(sq), "clip_grad_norm returns the global norm");

  auto t = torch::full({3}, static_cast<double>(pg.rank() + 1), torch::kDouble);
  pg.all_reduce_sum(t);
  const double n = pg.world_size();
  expect(t[0].item<double>() == n * (n + 1) / 2, "all_reduce_sum");
  pg.barrier();
  std::printf("dist_check: rank %d of %d (%s): OK (%d checks)\n", pg.rank(), pg.world_size(), pg.backend().c_str(),
              checks);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "check";
  dist::InitOptions o;
  if (argc > 2 && mode != "bench") o.timeout = std::chrono::milliseconds(static_cast<int64_t>(std::stod(argv[2]) * 1000));
  try {
    const auto pg = dist::init_from_env(o);
    if (mode == "check") return check(pg);
    if (mode == "bench") {
      const int64_t bytes = argc > 2 ? std::stoll(argv[2]) : 13'140'000, reps = argc > 3 ? std::stoll(argv[3]) : 20;
      auto buf = torch::ones({bytes / 4});
      std::vector<double> ms;
      for (int64_t i = 0; i < reps + 2; ++i) {
        pg.barrier();
        const auto t0 = std::chrono::steady_clock::now();
        pg.all_reduce_sum(buf);
        if (i >= 2) ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      }
      std::sort(ms.begin(), ms.end());
      if (pg.rank() == 0)
        std::printf("allreduce %lld bytes x %d ranks: median %.3f ms (min %.3f) over %lld\n",
                    static_cast<long long>(bytes), pg.world_size(), ms[ms.size() / 2], ms.front(),
                    static_cast<long long>(reps));
      return 0;
    }
    if (mode == "hang") {
      if (pg.rank() == 1) std::this_thread::sleep_for(std::chrono::hours(1));
      const auto t0 = std::chrono::steady_clock::now();
      try {
        auto t = torch::ones({4});
        pg.all_reduce_sum(t);
      } catch (const c10::Error& e) {
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::string m = e.what_without_backtrace();
        std::printf("dist_check: rank %d failed after %.1f s: %s\n", pg.rank(), s, m.substr(0, m.find('\n')).c_str());
        std::fflush(stdout);
        std::_Exit(3);
      }
      std::printf("dist_check: the all-reduce with a hung rank returned\n");
      return 1;
    }
    std::fprintf(stderr, "dist_check: unknown mode %s\n", mode.c_str());
    return 2;
  } catch (const std::exception& e) {
    std::string m = e.what();
    if (auto* ce = dynamic_cast<const c10::Error*>(&e)) m = ce->what_without_backtrace();
    std::fprintf(stderr, "dist_check: error: %s\n", m.substr(0, m.find('\n')).c_str());
    return 1;
  }
}

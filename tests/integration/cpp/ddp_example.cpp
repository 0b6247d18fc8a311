// The complete small example of docs/distributed.md: data-parallel training of a small network with
// arwrap::distributed. Alone:       ./ddp_example
// On 2 processes:  torchrun --no-python --nproc_per_node=2 ./ddp_example
#include <arwrap/distributed.h>
#include <torch/torch.h>

#include <cstdio>

int main() {
  namespace dist = arwrap::distributed;
  try {
    dist::InitOptions options;
    options.timeout = std::chrono::seconds(60);  // rendezvous and every collective
    const dist::ProcessGroup pg = dist::init_from_env(options);  // one process without torchrun

    torch::manual_seed(pg.rank());  // different weights on purpose: rank 0's are broadcast
    torch::nn::Sequential net(torch::nn::Linear(16, 64), torch::nn::Tanh(), torch::nn::Linear(64, 1));
    dist::broadcast_parameters(pg, *net);
    dist::GradientReducer reducer(pg, net->parameters());
    torch::optim::Adam opt(net->parameters(), torch::optim::AdamOptions(1e-2));

    double loss_value = 0;
    for (int step = 1; step <= 200; ++step) {
      torch::manual_seed(1000 * step + pg.rank());  // each rank its own batch
      const auto x = torch::randn({32, 16});
      const auto y = x.sin().sum(1, /*keepdim=*/true);
      reducer.prepare_for_backward();               // buckets start during backward
      auto loss = torch::mse_loss(net->forward(x), y);
      loss.backward();
      reducer.finish();                             // .grad = mean over the ranks
      dist::clip_grad_norm(pg, net->parameters(), 1.0);
      opt.step();
      opt.zero_grad();

      auto l = loss.detach().to(torch::kDouble).reshape({1});
      pg.all_reduce_sum(l, "loss");                 // the global batch's loss
      loss_value = l.item<double>() / pg.world_size();
      if (pg.rank() == 0 && (step == 1 || step % 50 == 0)) std::printf("step %3d  loss %.4f\n", step, loss_value);
    }
    double checksum = 0;  // the same on every rank: they trained one model
    for (const auto& p : net->parameters()) checksum += p.to(torch::kDouble).sum().item<double>();
    std::printf("rank %d of %d (%s): final loss %.4f, weight checksum %.10f\n", pg.rank(), pg.world_size(),
                pg.backend().c_str(), loss_value, checksum);
    return 0;
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "ddp_example: %s\n", e.what_without_backtrace());
    return 1;
  }
}

// Pure C++ use of libarwrap: the fused cross-entropy and shift_tokens through the
// public header, checked against references computed here in float64, and a
// TorchScript module saved from Python (argv[1]) run with the arwrap operators.
#include <arwrap/arwrap.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>

#define EXPECT(cond, ...)                                    \
  do {                                                       \
    if (!(cond)) {                                           \
      std::fprintf(stderr, "FAILED %s: ", #cond);            \
      std::fprintf(stderr, __VA_ARGS__);                     \
      std::fprintf(stderr, "\n");                            \
      std::exit(1);                                          \
    }                                                        \
  } while (0)

int main(int argc, char** argv) {
  torch::manual_seed(0);
  const int64_t N = 37, V = 1009;
  auto logits = (torch::randn({N, V}) * 3).requires_grad_(true);
  auto target = torch::randint(0, V, {N}, torch::kLong);
  target.index_put_({torch::arange(0, N, 4)}, -100);

  // arwrap
  auto loss = arwrap::cross_entropy(logits, target, arwrap::CrossEntropyOptions().label_smoothing(0.1));
  loss.backward();
  // float64 reference
  auto z = logits.detach().to(torch::kDouble).requires_grad_(true);
  auto valid = target.ne(-100);
  auto t = torch::where(valid, target, torch::zeros_like(target));
  auto logp = torch::log_softmax(z, -1);
  auto nll = -logp.gather(1, t.unsqueeze(1)).squeeze(1);
  auto smooth = -logp.mean(-1);
  auto per_row = torch::where(valid, 0.9 * nll + 0.1 * smooth, torch::zeros_like(nll));
  auto ref = per_row.sum() / valid.sum();
  ref.backward();

  const double l = loss.item<double>(), r = ref.item<double>();
  EXPECT(loss.scalar_type() == torch::kFloat, "loss dtype");
  EXPECT(std::abs(l - r) < 1e-5 * std::max(1.0, std::abs(r)), "loss %.9g vs reference %.9g", l, r);
  const double gerr = (logits.grad().to(torch::kDouble) - z.grad()).abs().max().item<double>();
  EXPECT(gerr < 1e-6, "gradient max abs error %.3g", gerr);
  std::printf("cross_entropy: loss %.6f (reference %.6f), grad max err %.2e\n", l, r, gerr);

  // all targets ignored: 0, zero gradient
  auto z2 = torch::randn({3, 5}).requires_grad_(true);
  auto l2 = arwrap::cross_entropy(z2, torch::full({3}, -100, torch::kLong));
  l2.backward();
  EXPECT(l2.item<double>() == 0.0 && z2.grad().abs().max().item<double>() == 0.0, "all-ignored");

  // bad input: a clear error naming the argument
  bool threw = false;
  try {
    arwrap::cross_entropy(torch::randn({2, 4}), torch::tensor({0, 4}, torch::kLong));
  } catch (const c10::Error& e) {
    threw = std::string(e.what()).find("target must be in [0, 4)") != std::string::npos;
  }
  EXPECT(threw, "out-of-range target must raise");

  // linear_cross_entropy: against cross_entropy(h W^T + b) in float64, loss and all gradients
  {
    auto h = torch::randn({300, 24}, torch::kDouble).requires_grad_(true);
    auto W = (torch::randn({517, 24}, torch::kDouble) * 0.2).requires_grad_(true);
    auto b = (torch::randn({517}, torch::kDouble) * 0.1).requires_grad_(true);
    auto tg = torch::randint(0, 517, {300}, torch::kLong);
    tg.index_put_({torch::arange(0, 300, 7)}, -100);
    auto l = arwrap::linear_cross_entropy(h, W, tg, b, arwrap::LinearCrossEntropyOptions().z_loss_weight(1e-3));
    auto grads = torch::autograd::grad({l}, {h, W, b});
    auto z = torch::addmm(b, h, W.t());
    auto lse = torch::logsumexp(z, -1);
    auto v = tg.ne(-100);
    auto tt = torch::where(v, tg, torch::zeros_like(tg));
    auto rows = lse - z.gather(1, tt.unsqueeze(1)).squeeze(1) + 1e-3 * lse * lse;
    auto r = torch::where(v, rows, torch::zeros_like(rows)).sum() / v.sum();
    auto rgrads = torch::autograd::grad({r}, {h, W, b});
    EXPECT(std::abs(l.item<double>() - r.item<double>()) < 1e-10, "linear loss %.12g vs %.12g", l.item<double>(),
           r.item<double>());
    for (int k = 0; k < 3; ++k) {
      const double e = (grads[k] - rgrads[k]).abs().max().item<double>();
      EXPECT(e < 1e-10, "linear_cross_entropy gradient %d max abs error %.3g", k, e);
    }
    std::printf("linear_cross_entropy: loss %.6f, gradients match float64\n", l.item<double>());
  }

  // shift_tokens
  auto x = torch::randint(1, 50, {2, 9}, torch::kLong);
  auto s = arwrap::shift_tokens(x, torch::tensor({9, 4}, torch::kLong), arwrap::ShiftTokensOptions().mask_prob(0.3));
  EXPECT(torch::equal(s.input[0], x[0].slice(0, 0, 8)), "input row 0");
  EXPECT(torch::equal(s.target[0], x[0].slice(0, 1, 9)), "target row 0");
  EXPECT(s.target[1].slice(0, 3).eq(-100).all().item<bool>(), "target past lens ignored");
  EXPECT(s.mask.defined() && s.mask.logical_not().sum(-1).eq(2).all().item<bool>(), "exactly 2 masked per row");
  std::printf("shift_tokens: ok\n");

  if (argc > 1) {
    // A TorchScript module saved from Python that calls torch.ops.arwrap.cross_entropy.
    torch::jit::Module m = torch::jit::load(argv[1]);
    auto zs = logits.detach().clone().requires_grad_(true);
    auto ls = m.forward({zs, target}).toTensor();
    ls.backward();
    auto la = arwrap::cross_entropy(logits.detach(), target, arwrap::CrossEntropyOptions().z_loss_weight(1e-4));
    EXPECT(std::abs(ls.item<double>() - la.item<double>()) < 1e-6, "scripted loss %.9g vs %.9g", ls.item<double>(),
           la.item<double>());
    EXPECT(zs.grad().defined(), "scripted gradient");
    std::printf("torchscript: loss %.6f\n", ls.item<double>());
  }
  std::printf("ALL OK\n");
  return 0;
}

// Pure C++: arwrap::ARWrapper around a TorchScript net saved from Python.
//   wrapper_consumer NET.pt TOKENS.txt
// TOKENS.txt: "b n1" then b*n1 token ids. Prints the loss (same as Python's), then
// trains 3 Adam steps and prints the losses, which must fall.
#include "read_tokens.h"

#include <arwrap/arwrap.h>
#include <torch/torch.h>

#include <cstdio>
#include <vector>

int main(int argc, char** argv) {
  const torch::Tensor x = tokens_from_args(argc, argv, "NET.pt");

  arwrap::ARWrapper wrapper(arwrap::TorchScriptNet::load(argv[1]), arwrap::ARWrapperOptions());
  auto loss = wrapper->forward(x).loss;
  std::printf("loss %.9g\n", loss.item<double>());

  torch::optim::Adam opt(wrapper->trainable_parameters(), torch::optim::AdamOptions(1e-2));
  double first = 0, last = 0;
  for (int step = 0; step < 5; ++step) {
    opt.zero_grad();
    auto l = wrapper->loss(x);
    l.backward();
    opt.step();
    (step == 0 ? first : last) = l.item<double>();
  }
  std::printf("train %.6f -> %.6f\n", first, last);
  if (!(last < first)) {
    std::fprintf(stderr, "FAILED: loss did not fall\n");
    return 1;
  }
  return expect_rejected_then_ok("1-D x", [&] { wrapper->forward(torch::zeros({3}, torch::kLong)); });
}

// Pure C++: the native net two ways.
//   native_consumer MODEL.pt TOKENS.txt
// MODEL.pt: arwrap_cpp.AutoregressiveWrapper(arwrap_cpp.TransformerWrapper(...)).to_torchscript()
// TOKENS.txt: "b n1" then b*n1 token ids.
// 1. The C++ module arwrap::TransformerWrapper, built from the export's config and
//    given its weights, inside arwrap::ARWrapper: prints "native loss".
// 2. The TorchScript export trained in C++: 5 Adam steps (lr 1e-2), "step i loss L".
// 3. Greedy generation from the C++ module: "greedy t0 t1 ...".
#include "read_tokens.h"

#include <arwrap/arwrap.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <cstdio>
#include <vector>

int main(int argc, char** argv) {
  const torch::Tensor x = tokens_from_args(argc, argv, "MODEL.pt");
  torch::jit::Module scripted = torch::jit::load(argv[1]);

  // 1. the C++ module with the export's weights
  const auto options = arwrap::TransformerWrapperOptions::parse(scripted.attr("config").toStringRef());
  arwrap::TransformerWrapper net(options);
  {
    torch::NoGradGuard no_grad;
    const auto mine = net->weights();
    size_t i = 0;
    for (const auto& p : scripted.parameters()) mine.at(i++).copy_(p);
    if (i != mine.size()) {
      std::fprintf(stderr, "FAILED: %zu weights in the export, %zu in the module\n", i, mine.size());
      return 1;
    }
  }
  arwrap::ARWrapper wrapper(net, arwrap::ARWrapperOptions());
  std::printf("native loss %.9g\n", wrapper->forward(x).loss.item<double>());
  std::printf("native parameters %zu\n", wrapper->parameters().size());

  // 2. train the export
  std::vector<at::Tensor> params;
  for (const auto& p : scripted.parameters()) params.push_back(p);
  torch::optim::Adam opt(params, torch::optim::AdamOptions(1e-2));
  scripted.train();
  for (int step = 0; step < 5; ++step) {
    opt.zero_grad();
    auto loss = scripted.forward({x}).toTensor();
    loss.backward();
    opt.step();
    std::printf("step %d loss %.9g\n", step, loss.item<double>());
  }

  // 3. greedy generation (the module's weights are the untrained ones)
  net->eval();
  const auto tokens = net->generate(x.narrow(1, 0, 4).narrow(0, 0, 1), 8,
                                    arwrap::GenerateOptions().temperature(0.0));
  std::printf("greedy");
  for (int64_t j = 0; j < tokens.size(1); ++j) std::printf(" %lld", static_cast<long long>(tokens[0][j].item<int64_t>()));
  std::printf("\n");

  return expect_rejected_then_ok("out-of-range token",
                                 [&] { net->forward(torch::full({1, 3}, options.num_tokens(), torch::kLong)); });
}

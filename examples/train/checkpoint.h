// One-file checkpoints that Python's torch.load reads and torch.save can write:
// a pickled dict (torch::pickle_save, the zip format of torch.save)
//
//   format          "arwrap-checkpoint-1"
//   config          arwrap::TransformerWrapperOptions::to_string()
//   step            int, optimizer steps done
//   seed            int, the --seed of the run (batches of step s are drawn from (seed, s))
//   model           {name: Tensor}, the state dict with x-transformers' names
//   optimizer_name  "adam" | "adamw" | "" (no optimizer state)
//   optimizer       {"<param>.exp_avg" | "<param>.exp_avg_sq" | "<param>.step": Tensor}
//                   (step a float32 scalar, as torch.optim.Adam keeps it)
//   train_args      "key=value" lines: the training flags of the run
#pragma once

#include <arwrap/transformer.h>
#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include <map>
#include <string>

namespace train {

inline constexpr const char* kCheckpointFormat = "arwrap-checkpoint-1";

struct Checkpoint {
  std::string config;
  int64_t step = 0;
  int64_t seed = 0;
  std::map<std::string, at::Tensor> model;
  std::string optimizer_name;
  std::map<std::string, at::Tensor> optimizer;
  std::string train_args;
};

// Writes PATH atomically (PATH.tmp, then rename). Throws std::runtime_error.
void save_checkpoint(const std::string& path, const Checkpoint& ckpt);
// Throws std::runtime_error with a one-line message for a missing, truncated,
// corrupt or foreign file.
Checkpoint load_checkpoint(const std::string& path);

// net->load_state_dict(state), its error as a one-line std::runtime_error prefixed with `what`.
void load_state_dict(arwrap::TransformerWrapperImpl& net, const std::map<std::string, at::Tensor>& state,
                     const std::string& what);

// Adam/AdamW moments of the named parameters, and back. `name` is "adam" or "adamw".
std::map<std::string, at::Tensor> optimizer_state(torch::optim::Optimizer& opt, const std::string& name,
                                                  const torch::OrderedDict<std::string, at::Tensor>& params);
void load_optimizer_state(torch::optim::Optimizer& opt, const std::string& name,
                          const torch::OrderedDict<std::string, at::Tensor>& params,
                          const std::map<std::string, at::Tensor>& state, const std::string& what);

}  // namespace train

// arwrap-train's command line: the flags (Args), their parsing and --help, and the model
// configuration they describe. The number parsers are shared with data_parallel.cpp.
#pragma once

#include "data_parallel.h"

#include <arwrap/transformer_options.h>

#include <cstdint>
#include <optional>
#include <set>
#include <string>

namespace train {

struct Args {
  // data
  std::string data, ext;
  std::string token_dtype = "uint16";  // raw token files (tokens.h)
  int64_t max_bytes = 32'000'000;
  // model (stored in the checkpoint's config)
  int64_t num_tokens = 256;  // the vocabulary
  int64_t seq_len = 256, dim = 256, depth = 4, heads = 4, dim_head = 64;
  // training
  int64_t steps = 300, batch = 16, accum = 1, seed = 0, threads = 0;
  double lr = 2e-3, weight_decay = -1;  // -1: torch's default for the optimizer (0 adam, 0.01 adamw)
  int64_t warmup = 50;
  std::string schedule = "constant";  // after the warmup: constant, cosine or linear (scheduled_lr)
  double min_lr = -1;               // -1: --lr / 10
  int64_t max_bad_steps = 5;  // non-finite steps in a row before the run stops (main.cpp)
  std::string optimizer = "adam";
  std::string precision;  // fp32 or bf16; empty: the machine's default (precision.h)
  int64_t log_every = 10, val_every = 50, val_windows = 32, sample_every = 100, sample_len = 256, save_every = 100;
  double temperature = 0.8;
  std::string checkpoint = "arwrap-train.pt";
  std::string metrics;  // empty: beside the checkpoint (default_metrics_path)
  bool resume = false, eval_only = false;
  bool checkpoint_layers = false;  // DecoderOptions::checkpoint_layers: how this process trains, not the model
  std::optional<std::string> sample;
  std::string tokenizer;                      // a tokenizers JSON (tokenizer.h): samples as text, text prompts
  std::optional<std::string> encode, decode;  // tool modes of --tokenizer
  train::DistFlags dist;  // --dist-timeout, --as-ranks, --bucket-mb, --overlap (data_parallel.h)
  std::set<std::string> given;  // flags set on the command line
};

// One line, thrown as std::runtime_error: main prints "arwrap-train: error: <msg>" and exits 1.
[[noreturn]] void fail(const std::string& msg);
// The whole of v as a number >= min, or fail() naming the flag.
int64_t parse_int(const std::string& flag, const std::string& v, int64_t min);
double parse_float(const std::string& flag, const std::string& v, double min);

// The command line (--help prints the flags and exits).
Args parse_args(int argc, char** argv);
// The training flags as "name=value" lines (a checkpoint's train_args), and back: fills the
// flags not given on the command line.
std::string train_args_string(const Args& a);
void apply_train_args(Args& a, const std::string& text);

// The learning rate of optimizer step `step` (1-based): linear warmup from 0 to --lr over
// --warmup steps, then --schedule from --lr to --min-lr at step --steps. A function of the step
// and the flags alone, so a resumed run (same flags, from the checkpoint) continues it exactly.
double scheduled_lr(const Args& a, int64_t step);
double min_lr(const Args& a);  // --min-lr, or its default --lr / 10

// The model the flags describe, the check that a checkpoint's model agrees with the flags
// given, and the one-line description the header prints.
arwrap::TransformerWrapperOptions config_from_flags(const Args& a);
void check_model_flags(const Args& a, const arwrap::TransformerWrapperOptions& o, const std::string& path);
std::string describe(const arwrap::TransformerWrapperOptions& o);

}  // namespace train

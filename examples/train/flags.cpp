// arwrap-train's command line: see flags.h.
#include "flags.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <sstream>
#include <stdexcept>
#include <type_traits>
#include <vector>

namespace train {

namespace {

// The number in v (all of it: "3x" is refused), at least `min`; the error names the flag.
template <typename T>
T parse_number(const std::string& flag, const std::string& v, T min) {
  constexpr bool integral = std::is_integral_v<T>;
  size_t pos = 0;
  T x = 0;
  try {
    if constexpr (integral) x = std::stoll(v, &pos);
    else x = std::stod(v, &pos);
  } catch (...) {
    pos = 0;
  }
  if (pos == 0 || pos != v.size() || !std::isfinite(static_cast<double>(x)))
    fail(flag + (integral ? " expects an integer, got '" : " expects a number, got '") + v + "'");
  if (x < min) fail(flag + " must be >= " + std::to_string(min) + ", got " + v);
  return x;
}

}  // namespace

int64_t parse_int(const std::string& flag, const std::string& v, int64_t min) { return parse_number(flag, v, min); }
double parse_float(const std::string& flag, const std::string& v, double min) { return parse_number(flag, v, min); }

[[noreturn]] void fail(const std::string& msg) { throw std::runtime_error(msg); }

namespace {

// One row per flag: its group in --help, its value's name, its help text, whether a resumed
// run takes it from the checkpoint (train_args) when it is not given again, and how it is set
// and printed. --help, the parser and a checkpoint's train_args all come from this table.
struct Flag {
  const char* group;
  const char* name;   // without the leading --
  const char* value;  // N, F, PATH, ...; "" for a switch (--resume)
  const char* help;   // continuation lines start with \n
  bool train_arg;
  std::function<void(Args&, const std::string& flag, const std::string& v)> set;
  std::function<std::string(const Args&)> get;  // train_arg flags: the value to save
};

template <typename T>
std::string text(const T& v) {
  std::ostringstream s;
  s.precision(17);
  s << v;
  return s.str();
}
// A flag stored in an Args member: an integer >= min, a number >= min, or a string.
Flag int_flag(const char* g, const char* name, int64_t Args::*m, int64_t min, bool train, const char* help) {
  return {g, name, "N", help, train, [m, min](Args& a, const std::string& f, const std::string& v) {
            a.*m = parse_int(f, v, min);
          }, [m](const Args& a) { return text(a.*m); }};
}
Flag float_flag(const char* g, const char* name, double Args::*m, bool train, const char* help) {
  return {g, name, "F", help, train, [m](Args& a, const std::string& f, const std::string& v) {
            a.*m = parse_float(f, v, 0);
          }, [m](const Args& a) { return text(a.*m); }};
}
Flag string_flag(const char* g, const char* name, const char* value, std::string Args::*m, bool train,
                 const char* help, std::vector<std::string> choices = {}, bool nonempty = false) {
  return {g, name, value, help, train,
          [m, choices, nonempty](Args& a, const std::string& f, const std::string& v) {
            if (!choices.empty() && std::find(choices.begin(), choices.end(), v) == choices.end()) {
              std::string list;
              for (size_t i = 0; i < choices.size(); ++i) list += (i ? " or " : "") + choices[i];
              fail(f + " must be " + list + ", got '" + v + "'");
            }
            if (nonempty && v.empty()) fail(f + " needs a path");
            a.*m = v;
          },
          [m](const Args& a) { return a.*m; }};
}

const char* const kData = "data";
const char* const kModel = "model (stored in the checkpoint; on --resume they must agree with it or be left out)";
const char* const kTraining = "training (on --resume, left-out flags take the checkpoint's values)";
const char* const kModes = "modes";

const std::vector<Flag>& flags() {
  static const std::vector<Flag> table = {
      string_flag(kData, "data", "PATH", &Args::data, true,
                  "a text file, or a directory read recursively in sorted path order;"
                  "\nor token files, memory-mapped: a *.bin file, a glob of them, or a"
                  "\ndirectory of llm.c shards (header magic 20240520, uint16 tokens;"
                  "\n20240801, uint32) or of nanoGPT's raw train.bin/val.bin. Validation:"
                  "\nthe shards named *_val_* or val.bin, else the last 10% of the tokens"
                  "\n(default: the Python standard library's *.py files, found at"
                  "\n$ARWRAP_STDLIB or /usr/local/lib/python3.N, /usr/lib/python3.N)"),
      string_flag(kData, "ext", "SUFFIX", &Args::ext, true,
                  "in a directory, read the files ending in SUFFIX (default: .py for the"
                  "\ndefault corpus; for --data every file without a NUL byte in its"
                  "\nfirst 8 KiB). Hidden entries, __pycache__, site-/dist-packages are skipped."),
      int_flag(kData, "max-bytes", &Args::max_bytes, 0, true,
               "read at most N bytes (default 32000000; 0: everything)"
               "\nThe bytes are split 90/10: the first 90% train, the rest validation."),
      string_flag(kData, "token-dtype", "T", &Args::token_dtype, true,
                  "uint16 or uint32: the ids of raw token files without an llm.c header"
                  "\n(default uint16, nanoGPT's)", {"uint16", "uint32"}),
      string_flag(kData, "tokenizer", "PATH", &Args::tokenizer, false,
                  "a tokenizers JSON of a byte-level BPE (python -m arwrap_cpp.data"
                  "\nprepare writes DIR/tokenizer.json): a token model's samples print"
                  "\nas text and --sample takes a text prompt. Its ids must fit"
                  "\n--num-tokens. Not stored: give it again on --resume and --sample",
                  {}, true),
      int_flag(kModel, "num-tokens", &Args::num_tokens, 2, false,
               "the vocabulary size (default 256: bytes); token data needs it, and every"
               "\nid in the data must be below it"),
      int_flag(kModel, "seq-len", &Args::seq_len, 1, false, "window length, the model's max_seq_len (default 256)"),
      int_flag(kModel, "dim", &Args::dim, 1, false, "model width (default 256)"),
      int_flag(kModel, "depth", &Args::depth, 1, false, "layers (default 4)"),
      int_flag(kModel, "heads", &Args::heads, 1, false, "attention heads (default 4)"),
      int_flag(kModel, "dim-head", &Args::dim_head, 2, false, "width of a head (default 64)"),
      int_flag(kTraining, "steps", &Args::steps, 0, true,
               "optimizer steps in all, counting those of a resumed run (default 300)"),
      int_flag(kTraining, "batch", &Args::batch, 1, true, "windows per micro-batch (default 16)"),
      int_flag(kTraining, "accum", &Args::accum, 1, true, "micro-batches per step, gradient accumulation (default 1)"),
      float_flag(kTraining, "lr", &Args::lr, true,
                 "peak learning rate (default 0.002), linear warmup over --warmup steps"),
      int_flag(kTraining, "warmup", &Args::warmup, 0, true, "warmup steps (default 50)"),
      string_flag(kTraining, "schedule", "NAME", &Args::schedule, true,
                  "after the warmup: constant --lr (default), or cosine or linear decay"
                  "\nfrom --lr to --min-lr at the last step (--steps); a resume with the same"
                  "\n--steps continues it exactly",
                  {"constant", "cosine", "linear"}),
      {kTraining, "min-lr", "F", "the learning rate the decay ends at (default --lr / 10)", true,
       [](Args& a, const std::string& f, const std::string& v) { a.min_lr = parse_float(f, v, 0); },
       [](const Args& a) { return a.min_lr >= 0 ? text(a.min_lr) : std::string(); }},
      string_flag(kTraining, "optimizer", "NAME", &Args::optimizer, true, "adam or adamw (default adam)",
                  {"adam", "adamw"}),
      {kTraining, "weight-decay", "F", "default 0 for adam, 0.01 for adamw", true,
       [](Args& a, const std::string& f, const std::string& v) { a.weight_decay = parse_float(f, v, 0); },
       [](const Args& a) { return a.weight_decay >= 0 ? text(a.weight_decay) : std::string(); }},
      string_flag(kTraining, "precision", "P", &Args::precision, true,
                  "fp32, or bf16: mixed precision (autocast: bfloat16 products, float32"
                  "\nparameters, gradients and optimizer state). Default bf16 where the CPU"
                  "\nhas native bfloat16 products (avx512_bf16 or AMX), else fp32",
                  {"fp32", "bf16"}),
      int_flag(kTraining, "max-bad-steps", &Args::max_bad_steps, 1, true,
               "a step whose loss or gradient norm is not finite is skipped (weights and"
               "\nmoments stay as they were); after N such steps in a row the run stops"
               "\nwith an error and writes no checkpoint (default 5)"),
      int_flag(kTraining, "seed", &Args::seed, 0, true,
               "seeds the initial weights, the batches (step s draws from (seed, s)) and samples"),
      int_flag(kTraining, "threads", &Args::threads, 1, false,
               "CPU threads (default: torch's, all cores). On a busy machine set"
               "\nOMP_WAIT_POLICY=PASSIVE (scripts/train.sh does) or use fewer threads."),
      int_flag(kTraining, "log-every", &Args::log_every, 1, true, "progress line every N steps (default 10)"),
      int_flag(kTraining, "val-every", &Args::val_every, 0, true,
               "validation loss every N steps and at the start and end (default 50)"),
      int_flag(kTraining, "val-windows", &Args::val_windows, 1, true,
               "validation windows (default 32): the first N non-overlapping"
               "\n(seq-len + 1)-byte windows of the validation split"),
      int_flag(kTraining, "sample-every", &Args::sample_every, 0, true,
               "print a sample every N steps, 0: never (default 100)"),
      int_flag(kTraining, "sample-len", &Args::sample_len, 1, true,
               "bytes (a token model: tokens) to generate (default 256)"),
      float_flag(kTraining, "temperature", &Args::temperature, true,
                 "sampling temperature (default 0.8; top-k filter, k = 26)"),
      int_flag(kTraining, "save-every", &Args::save_every, 0, true,
               "checkpoint every N steps and at the end, 0: only at the end (default 100)"),
      {kTraining, "checkpoint-layers", "",
       "each layer keeps only its input and recomputes itself in the backward"
       "\n(DecoderOptions::checkpoint_layers): less memory, the same gradients,"
       "\nabout one more attention forward per step. Not stored: give it again on --resume", false,
       [](Args& a, const std::string&, const std::string&) { a.checkpoint_layers = true; }, nullptr},
      string_flag(kTraining, "checkpoint", "PATH", &Args::checkpoint, false,
                  "checkpoint file (default arwrap-train.pt); written atomically", {}, true),
      {kTraining, "resume", "", "continue from --checkpoint: weights, optimizer moments, step, flags", false,
       [](Args& a, const std::string&, const std::string&) { a.resume = true; }, nullptr},
      string_flag(kTraining, "metrics", "PATH", &Args::metrics, true,
                  "JSON Lines file, one line per logged step (loss, val_loss, tokens/s, lr,"
                  "\ngrad norm, memory, wall time; docs/metrics.md). Default: beside the"
                  "\ncheckpoint, NAME.metrics.jsonl. On --resume the lines of steps trained"
                  "\nagain are dropped and the rest appended to. Plot: scripts/plot.sh PATH",
                  {}, true),
      {kModes, "eval-only", "",
       "print the validation loss of --checkpoint (on its run's data, or --data) and exit", false,
       [](Args& a, const std::string&, const std::string&) { a.eval_only = true; }, nullptr},
      {kModes, "sample", "PROMPT",
       "print PROMPT and --sample-len generated bytes from --checkpoint and exit;"
       "\na token model's PROMPT is ids ('12 7 301'), or text with --tokenizer", false,
       [](Args& a, const std::string&, const std::string& v) { a.sample = v; }, nullptr},
      {kModes, "encode", "TEXT", "print the ids --tokenizer gives TEXT and exit", false,
       [](Args& a, const std::string&, const std::string& v) { a.encode = v; }, nullptr},
      {kModes, "decode", "IDS", "print the text of ids ('12 7 301') under --tokenizer and exit", false,
       [](Args& a, const std::string&, const std::string& v) { a.decode = v; }, nullptr},
      {kModes, "help", "", "this text", false, nullptr, nullptr},
  };
  return table;
}

const Flag* find_flag(const std::string& name) {
  for (const auto& f : flags())
    if (name == f.name) return &f;
  return nullptr;
}

std::string usage() {
  std::string out =
      "usage: arwrap-train [flags]\n\n"
      "Trains a byte-level (vocabulary 256) or token-level (--num-tokens) decoder, x-transformers' TransformerWrapper(Decoder(...,\n"
      "rotary_pos_emb=True), use_abs_pos_emb=False) implemented in libarwrap, with arwrap::ARWrapper:\n"
      "random windows, gradient accumulation, clip_grad_norm 0.5, Adam/AdamW, validation and samples\n"
      "at intervals, and a checkpoint that Python loads (arwrap_cpp.checkpoint.load_model).\n\n";
  const char* group = nullptr;
  for (const auto& f : flags()) {
    if (group != f.group) out += std::string(f.group) + "\n";
    group = f.group;
    std::string head = std::string("  --") + f.name + (*f.value ? std::string(" ") + f.value : std::string());
    head.resize(std::max<size_t>(head.size() + 2, 23), ' ');
    std::string help = f.help;
    for (size_t at = help.find('\n'); at != std::string::npos; at = help.find('\n', at + 1))
      help.insert(at + 1, std::string(23, ' '));
    out += head + help + "\n";
  }
  return out;
}

}  // namespace

// Sets one flag from its value. Used for the command line and for a checkpoint's train_args.
void set_flag(Args& a, const std::string& name, const std::string& v) {
  const Flag* f = find_flag(name);
  if (f != nullptr && f->set) return f->set(a, "--" + name, v);
  if (train::set_dist_flag(a.dist, name, v)) return;
  fail("unknown option --" + name + " (see --help)");
}

std::string train_args_string(const Args& a) {
  std::string out;
  for (const auto& f : flags())
    if (f.train_arg) out += std::string(f.name) + "=" + f.get(a) + "\n";
  return out;
}

// Fills the training flags not given on the command line from a checkpoint's train_args.
void apply_train_args(Args& a, const std::string& text) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    const auto eq = line.find('=');
    if (eq == std::string::npos) continue;
    const std::string name = line.substr(0, eq), value = line.substr(eq + 1);
    if (a.given.count(name)) continue;
    // (a flag this version does not know, e.g. from a newer one, is ignored)
    const Flag* f = find_flag(name);
    if (f == nullptr || !f->train_arg || value.empty()) continue;
    f->set(a, "--" + name, value);
  }
}

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(usage().c_str(), stdout);
      std::fputs(train::kDistUsage, stdout);
      std::exit(0);
    }
    if (arg.rfind("--", 0) != 0) fail("unexpected argument '" + arg + "' (see --help)");
    std::string name = arg.substr(2), value;
    if (const Flag* f = find_flag(name); f != nullptr && !*f->value && f->set) {  // a switch
      f->set(a, arg, "");
      continue;
    }
    if (const auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    } else {
      if (i + 1 >= argc) fail("--" + name + " needs a value (see --help)");
      value = argv[++i];
    }
    set_flag(a, name, value);
    a.given.insert(name);
  }
  if (a.resume && (a.eval_only || a.sample)) fail("--resume trains; it does not go with --eval-only or --sample");
  if (a.eval_only && a.sample) fail("--eval-only and --sample are two modes: pick one");
  if (a.encode || a.decode) {
    const std::string flag = a.encode ? "--encode" : "--decode";
    if (a.encode && a.decode) fail("--encode and --decode are two modes: pick one");
    if (a.resume || a.eval_only || a.sample)
      fail(flag + " is a mode of its own: it does not go with --resume, --eval-only or --sample");
    if (a.tokenizer.empty()) fail(flag + " needs --tokenizer PATH, the tokenizers JSON");
  }
  return a;
}

double min_lr(const Args& a) { return a.min_lr >= 0 ? a.min_lr : a.lr / 10; }

double scheduled_lr(const Args& a, int64_t step) {
  if (a.warmup > 0 && step <= a.warmup) return a.lr * static_cast<double>(step) / static_cast<double>(a.warmup);
  if (a.schedule == "constant") return a.lr;
  const double span = static_cast<double>(std::max<int64_t>(1, a.steps - a.warmup));
  const double p = std::clamp(static_cast<double>(step - a.warmup) / span, 0.0, 1.0);
  const double lo = min_lr(a);
  if (a.schedule == "linear") return a.lr - (a.lr - lo) * p;
  return lo + 0.5 * (a.lr - lo) * (1.0 + std::cos(M_PI * p));  // cosine
}

arwrap::TransformerWrapperOptions config_from_flags(const Args& a) {
  return arwrap::TransformerWrapperOptions(
             a.num_tokens, a.seq_len,
             arwrap::DecoderOptions(a.dim, a.depth).heads(a.heads).attn_dim_head(a.dim_head).rotary_pos_emb(true))
      .use_abs_pos_emb(false);
}

// The model flags given on the command line must agree with a checkpoint's configuration.
void check_model_flags(const Args& a, const arwrap::TransformerWrapperOptions& o, const std::string& path) {
  const auto& d = o.attn_layers();
  const std::vector<std::tuple<const char*, int64_t, int64_t>> checks = {
      {"num-tokens", a.num_tokens, o.num_tokens()}, {"seq-len", a.seq_len, o.max_seq_len()}, {"dim", a.dim, d.dim()},          {"depth", a.depth, d.depth()},
      {"heads", a.heads, d.heads()},           {"dim-head", a.dim_head, d.attn_dim_head()}};
  for (const auto& [flag, mine, theirs] : checks)
    if (a.given.count(flag) && mine != theirs)
      fail("checkpoint " + path + " holds another configuration: --" + flag + " " + std::to_string(mine) +
           " given, the checkpoint has " + std::to_string(theirs) + " (--seq-len " + std::to_string(o.max_seq_len()) +
           " --dim " + std::to_string(d.dim()) + " --depth " + std::to_string(d.depth()) + " --heads " +
           std::to_string(d.heads()) + " --dim-head " + std::to_string(d.attn_dim_head()) +
           "); leave the model flags out to use the checkpoint's, or pick another --checkpoint");
}

std::string describe(const arwrap::TransformerWrapperOptions& o) {
  const auto& d = o.attn_layers();
  std::ostringstream s;
  s << "TransformerWrapper(" << (o.num_tokens() != 256 ? "num_tokens=" + std::to_string(o.num_tokens()) + ", " : "")
    << "Decoder(dim=" << d.dim() << ", depth=" << d.depth() << ", heads=" << d.heads()
    << ", attn_dim_head=" << d.attn_dim_head() << (d.rotary_pos_emb() ? ", rotary_pos_emb=True" : "") << ")"
    << (o.use_abs_pos_emb() ? "" : ", use_abs_pos_emb=False") << ", max_seq_len=" << o.max_seq_len() << ")";
  return s.str();
}

}  // namespace train

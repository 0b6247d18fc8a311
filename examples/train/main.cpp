// arwrap-train: a byte-level language model trained with arwrap::ARWrapper around
// the native arwrap::TransformerWrapper, the loop of x-transformers' train_enwik8.py:
// random windows, gradient accumulation, clip_grad_norm 0.5, Adam/AdamW, validation
// on fixed windows, samples with generate, one-file checkpoints (see checkpoint.h).
// `arwrap-train --help` lists the flags.
#include "checkpoint.h"
#include "metrics.h"
#include <arwrap/corpus.h>

#include <arwrap/arwrap.h>
#include <torch/torch.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <unistd.h>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

// Resident memory of this process in MB (Linux /proc/self/statm; 0 where unavailable):
// shown on every progress line, so a leak shows as a rising number.
double resident_mb() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return 0.0;
  long long size = 0, resident = 0;
  const int n = std::fscanf(f, "%lld %lld", &size, &resident);
  std::fclose(f);
  if (n != 2) return 0.0;
  return static_cast<double>(resident) * static_cast<double>(sysconf(_SC_PAGESIZE)) / 1e6;
}

// ------------------------------------------------------------------ flags

struct Args {
  // data
  std::string data, ext;
  int64_t max_bytes = 32'000'000;
  // model (stored in the checkpoint's config)
  int64_t seq_len = 256, dim = 256, depth = 4, heads = 4, dim_head = 64;
  // training
  int64_t steps = 300, batch = 16, accum = 1, seed = 0, threads = 0;
  double lr = 2e-3, weight_decay = -1;  // -1: torch's default for the optimizer (0 adam, 0.01 adamw)
  int64_t warmup = 50;
  std::string optimizer = "adam";
  int64_t log_every = 10, val_every = 50, val_windows = 32, sample_every = 100, sample_len = 256, save_every = 100;
  double temperature = 0.8;
  std::string checkpoint = "arwrap-train.pt";
  std::string metrics;  // empty: beside the checkpoint (default_metrics_path)
  bool resume = false, eval_only = false;
  std::optional<std::string> sample;
  std::set<std::string> given;  // flags set on the command line
};

const char* kUsage = R"(usage: arwrap-train [flags]

Trains a byte-level (vocabulary 256) decoder, x-transformers' TransformerWrapper(Decoder(...,
rotary_pos_emb=True), use_abs_pos_emb=False) implemented in libarwrap, with arwrap::ARWrapper:
random windows, gradient accumulation, clip_grad_norm 0.5, Adam/AdamW, validation and samples
at intervals, and a checkpoint that Python loads (arwrap_cpp.checkpoint.load_model).

data
  --data PATH          a text file, or a directory read recursively in sorted path order
                       (default: the Python standard library's *.py files, found at
                       $ARWRAP_STDLIB or /usr/local/lib/python3.N, /usr/lib/python3.N)
  --ext SUFFIX         in a directory, read the files ending in SUFFIX (default: .py for the
                       default corpus; for --data every file without a NUL byte in its
                       first 8 KiB). Hidden entries, __pycache__, site-/dist-packages are skipped.
  --max-bytes N        read at most N bytes (default 32000000; 0: everything)
                       The bytes are split 90/10: the first 90% train, the rest validation.
model (stored in the checkpoint; on --resume they must agree with it or be left out)
  --seq-len N          window length, the model's max_seq_len (default 256)
  --dim N              model width (default 256)
  --depth N            layers (default 4)
  --heads N            attention heads (default 4)
  --dim-head N         width of a head (default 64)
training (on --resume, left-out flags take the checkpoint's values)
  --steps N            optimizer steps in all, counting those of a resumed run (default 300)
  --batch N            windows per micro-batch (default 16)
  --accum N            micro-batches per step, gradient accumulation (default 1)
  --lr F               peak learning rate (default 0.002), linear warmup over --warmup steps
  --warmup N           warmup steps (default 50)
  --optimizer NAME     adam or adamw (default adam)
  --weight-decay F     default 0 for adam, 0.01 for adamw
  --seed N             seeds the initial weights, the batches (step s draws from (seed, s)) and samples
  --threads N          CPU threads (default: torch's, all cores). On a busy machine set
                       OMP_WAIT_POLICY=PASSIVE (scripts/train.sh does) or use fewer threads.
  --log-every N        progress line every N steps (default 10)
  --val-every N        validation loss every N steps and at the start and end (default 50)
  --val-windows N      validation windows (default 32): the first N non-overlapping
                       (seq-len + 1)-byte windows of the validation split
  --sample-every N     print a sample every N steps, 0: never (default 100)
  --sample-len N       bytes to generate (default 256)
  --temperature F      sampling temperature (default 0.8; top-k filter, k = 26)
  --save-every N       checkpoint every N steps and at the end, 0: only at the end (default 100)
  --checkpoint PATH    checkpoint file (default arwrap-train.pt); written atomically
  --resume             continue from --checkpoint: weights, optimizer moments, step, flags
  --metrics PATH       JSON Lines file, one line per logged step (loss, val_loss, tokens/s, lr,
                       grad norm, memory, wall time; docs/metrics.md). Default: beside the
                       checkpoint, NAME.metrics.jsonl. On --resume the lines of steps trained
                       again are dropped and the rest appended to. Plot: scripts/plot.sh PATH
modes
  --eval-only          print the validation loss of --checkpoint (on its run's data, or --data) and exit
  --sample PROMPT      print PROMPT and --sample-len generated bytes from --checkpoint and exit
  --help               this text
)";

[[noreturn]] void fail(const std::string& msg) { throw std::runtime_error(msg); }

int64_t parse_int(const std::string& flag, const std::string& v, int64_t min) {
  size_t pos = 0;
  int64_t x = 0;
  try {
    x = std::stoll(v, &pos);
  } catch (...) {
    pos = 0;
  }
  if (pos == 0 || pos != v.size()) fail(flag + " expects an integer, got '" + v + "'");
  if (x < min) fail(flag + " must be >= " + std::to_string(min) + ", got " + v);
  return x;
}

double parse_float(const std::string& flag, const std::string& v, double min) {
  size_t pos = 0;
  double x = 0;
  try {
    x = std::stod(v, &pos);
  } catch (...) {
    pos = 0;
  }
  if (pos == 0 || pos != v.size() || !std::isfinite(x)) fail(flag + " expects a number, got '" + v + "'");
  if (x < min) fail(flag + " must be >= " + std::to_string(min) + ", got " + v);
  return x;
}

// Sets one flag from its value. Used for the command line and for a checkpoint's train_args.
void set_flag(Args& a, const std::string& name, const std::string& v) {
  const std::string f = "--" + name;
  if (name == "data") a.data = v;
  else if (name == "ext") a.ext = v;
  else if (name == "max-bytes") a.max_bytes = parse_int(f, v, 0);
  else if (name == "seq-len") a.seq_len = parse_int(f, v, 1);
  else if (name == "dim") a.dim = parse_int(f, v, 1);
  else if (name == "depth") a.depth = parse_int(f, v, 1);
  else if (name == "heads") a.heads = parse_int(f, v, 1);
  else if (name == "dim-head") a.dim_head = parse_int(f, v, 2);
  else if (name == "steps") a.steps = parse_int(f, v, 0);
  else if (name == "batch") a.batch = parse_int(f, v, 1);
  else if (name == "accum") a.accum = parse_int(f, v, 1);
  else if (name == "lr") a.lr = parse_float(f, v, 0);
  else if (name == "warmup") a.warmup = parse_int(f, v, 0);
  else if (name == "weight-decay") a.weight_decay = parse_float(f, v, 0);
  else if (name == "optimizer") {
    if (v != "adam" && v != "adamw") fail("--optimizer must be adam or adamw, got '" + v + "'");
    a.optimizer = v;
  } else if (name == "seed") a.seed = parse_int(f, v, 0);
  else if (name == "threads") a.threads = parse_int(f, v, 1);
  else if (name == "log-every") a.log_every = parse_int(f, v, 1);
  else if (name == "val-every") a.val_every = parse_int(f, v, 0);
  else if (name == "val-windows") a.val_windows = parse_int(f, v, 1);
  else if (name == "sample-every") a.sample_every = parse_int(f, v, 0);
  else if (name == "sample-len") a.sample_len = parse_int(f, v, 1);
  else if (name == "temperature") a.temperature = parse_float(f, v, 0);
  else if (name == "save-every") a.save_every = parse_int(f, v, 0);
  else if (name == "checkpoint") {
    if (v.empty()) fail("--checkpoint needs a path");
    a.checkpoint = v;
  } else if (name == "metrics") {
    if (v.empty()) fail("--metrics needs a path");
    a.metrics = v;
  } else if (name == "sample") a.sample = v;
  else fail("unknown option --" + name + " (see --help)");
}

// The flags a resumed run takes from the checkpoint when they are not given again.
const std::vector<std::string> kTrainFlags = {
    "data", "ext", "max-bytes", "steps", "batch", "accum", "lr", "warmup", "optimizer", "weight-decay", "seed",
    "log-every", "val-every", "val-windows", "sample-every", "sample-len", "temperature", "save-every", "metrics"};

std::string flag_value(const Args& a, const std::string& name) {
  std::ostringstream s;
  s.precision(17);
  if (name == "data") s << a.data;
  else if (name == "ext") s << a.ext;
  else if (name == "max-bytes") s << a.max_bytes;
  else if (name == "steps") s << a.steps;
  else if (name == "batch") s << a.batch;
  else if (name == "accum") s << a.accum;
  else if (name == "lr") s << a.lr;
  else if (name == "warmup") s << a.warmup;
  else if (name == "optimizer") s << a.optimizer;
  else if (name == "weight-decay" && a.weight_decay >= 0) s << a.weight_decay;
  else if (name == "seed") s << a.seed;
  else if (name == "log-every") s << a.log_every;
  else if (name == "val-every") s << a.val_every;
  else if (name == "val-windows") s << a.val_windows;
  else if (name == "sample-every") s << a.sample_every;
  else if (name == "sample-len") s << a.sample_len;
  else if (name == "temperature") s << a.temperature;
  else if (name == "save-every") s << a.save_every;
  else if (name == "metrics") s << a.metrics;
  return s.str();
}

std::string train_args_string(const Args& a) {
  std::string out;
  for (const auto& name : kTrainFlags) out += name + "=" + flag_value(a, name) + "\n";
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
    if (std::find(kTrainFlags.begin(), kTrainFlags.end(), name) == kTrainFlags.end()) continue;
    if (value.empty()) continue;
    set_flag(a, name, value);
  }
}

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    if (arg.rfind("--", 0) != 0) fail("unexpected argument '" + arg + "' (see --help)");
    std::string name = arg.substr(2), value;
    if (name == "resume") {
      a.resume = true;
      continue;
    }
    if (name == "eval-only") {
      a.eval_only = true;
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
  return a;
}

// ------------------------------------------------------------------ model

arwrap::TransformerWrapperOptions config_from_flags(const Args& a) {
  return arwrap::TransformerWrapperOptions(
             256, a.seq_len,
             arwrap::DecoderOptions(a.dim, a.depth).heads(a.heads).attn_dim_head(a.dim_head).rotary_pos_emb(true))
      .use_abs_pos_emb(false);
}

// The model flags given on the command line must agree with a checkpoint's configuration.
void check_model_flags(const Args& a, const arwrap::TransformerWrapperOptions& o, const std::string& path) {
  const auto& d = o.attn_layers();
  const std::vector<std::tuple<const char*, int64_t, int64_t>> checks = {
      {"seq-len", a.seq_len, o.max_seq_len()}, {"dim", a.dim, d.dim()},          {"depth", a.depth, d.depth()},
      {"heads", a.heads, d.heads()},           {"dim-head", a.dim_head, d.attn_dim_head()}};
  for (const auto& [flag, mine, theirs] : checks)
    if (a.given.count(flag) && mine != theirs)
      fail("checkpoint " + path + " holds another configuration: --" + flag + " " + std::to_string(mine) +
           " given, the checkpoint has " + std::to_string(theirs) + " (--seq-len " + std::to_string(o.max_seq_len()) +
           " --dim " + std::to_string(d.dim()) + " --depth " + std::to_string(d.depth()) + " --heads " +
           std::to_string(d.heads()) + " --dim-head " + std::to_string(d.attn_dim_head()) +
           "); leave the model flags out to use the checkpoint's, or pick another --checkpoint");
  if (o.num_tokens() != 256)
    fail("checkpoint " + path + " has num_tokens=" + std::to_string(o.num_tokens()) +
         "; arwrap-train models bytes (num_tokens=256)");
}

std::string describe(const arwrap::TransformerWrapperOptions& o) {
  const auto& d = o.attn_layers();
  std::ostringstream s;
  s << "TransformerWrapper(Decoder(dim=" << d.dim() << ", depth=" << d.depth() << ", heads=" << d.heads()
    << ", attn_dim_head=" << d.attn_dim_head() << (d.rotary_pos_emb() ? ", rotary_pos_emb=True" : "") << ")"
    << (o.use_abs_pos_emb() ? "" : ", use_abs_pos_emb=False") << ", max_seq_len=" << o.max_seq_len() << ")";
  return s.str();
}

// ------------------------------------------------------------------ data

struct Data {
  arwrap::Corpus corpus;
  std::string source;
  const char* train() const { return corpus.bytes.data(); }
  int64_t train_size() const { return static_cast<int64_t>(corpus.train_size()); }
  const char* val() const { return corpus.bytes.data() + corpus.train_size(); }
  int64_t val_size() const { return static_cast<int64_t>(corpus.bytes.size() - corpus.train_size()); }
};

Data load_data(Args& a, int64_t seq_len) {
  Data d;
  std::string suffix = a.ext;
  if (a.data.empty()) {
    std::string searched;
    a.data = arwrap::find_python_stdlib(&searched);
    if (a.data.empty())
      fail("no --data given and no Python standard library found (looked at " + searched +
           "); pass --data PATH (a text file or directory) or set ARWRAP_STDLIB");
    if (!a.given.count("ext")) {
      suffix = ".py";
      a.ext = ".py";
    }
  }
  d.corpus = arwrap::read_corpus(a.data, suffix, static_cast<size_t>(a.max_bytes));
  {  // the checkpoint records an absolute path, so --resume works from any directory
    std::error_code ec;
    const auto abs = std::filesystem::absolute(a.data, ec);
    if (!ec) a.data = abs.lexically_normal().string();
  }
  const int64_t n = static_cast<int64_t>(d.corpus.bytes.size());
  std::ostringstream s;
  s.precision(3);
  s << (n >= 1'000'000 ? n / 1e6 : n / 1e3) << (n >= 1'000'000 ? " MB" : " kB") << " from " << d.corpus.files
    << (d.corpus.files == 1 ? " file" : " files") << " of " << a.data << (suffix.empty() ? "" : " (*" + suffix + ")")
    << (d.corpus.truncated ? " (cut at --max-bytes)" : "");
  d.source = s.str();
  // train windows need seq_len + 1 bytes and a choice of start; validation at least one window
  const int64_t need = (seq_len + 2) * 10;
  if (d.train_size() < seq_len + 2 || d.val_size() < seq_len + 1)
    fail("--seq-len " + std::to_string(seq_len) + " is too long for the data: " + std::to_string(n) +
         " bytes give " + std::to_string(d.train_size()) + " train / " + std::to_string(d.val_size()) +
         " validation bytes, and a window needs " + std::to_string(seq_len + 1) + " (about " + std::to_string(need) +
         " bytes of data); use a shorter --seq-len or more data");
  return d;
}

at::Tensor bytes_to_tensor(const char* p, int64_t n) {
  auto t = torch::empty({n}, torch::kLong);
  auto* out = t.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<unsigned char>(p[i]);
  return t;
}

std::mt19937_64 rng_for(int64_t seed, int64_t step, int64_t stream) {
  std::seed_seq seq{static_cast<uint64_t>(seed), static_cast<uint64_t>(step), static_cast<uint64_t>(stream)};
  return std::mt19937_64(seq);
}

// batch random windows of seq_len + 1 bytes from the train split
at::Tensor random_batch(const Data& d, int64_t seq_len, int64_t batch, std::mt19937_64& rng) {
  std::uniform_int_distribution<int64_t> start(0, d.train_size() - seq_len - 1);
  std::vector<at::Tensor> rows;
  for (int64_t i = 0; i < batch; ++i) rows.push_back(bytes_to_tensor(d.train() + start(rng), seq_len + 1));
  return torch::stack(rows);
}

// Mean loss over every target of the first `windows` non-overlapping (seq_len + 1)-byte
// windows of the validation split (fewer when the split is shorter), in batches.
std::pair<double, int64_t> validation_loss(arwrap::ARWrapper& model, const Data& d, int64_t seq_len, int64_t windows,
                                           int64_t batch) {
  const int64_t count = std::min(windows, d.val_size() / (seq_len + 1));
  torch::NoGradGuard no_grad;
  const bool was_training = model->is_training();
  model->eval();
  double sum = 0;
  for (int64_t i = 0; i < count; i += batch) {
    const int64_t b = std::min(batch, count - i);
    auto x = bytes_to_tensor(d.val() + i * (seq_len + 1), b * (seq_len + 1)).view({b, seq_len + 1});
    sum += model->forward(x).loss.item<double>() * static_cast<double>(b);
  }
  model->train(was_training);
  return {sum / static_cast<double>(count), count};
}

std::string printable(const std::string& s, bool quote) {
  std::string out;
  for (unsigned char c : s) {
    if (quote && c == '\n') out += "\\n";
    else if (quote && c == '"') out += "\\\"";
    else if (c == '\n' || c == '\t' || (c >= 32 && c != 127)) out += static_cast<char>(c);
    else out += '?';
  }
  return out;
}

std::string generate_text(arwrap::TransformerWrapper& net, const std::string& prompt, int64_t len, double temperature,
                          int64_t seed) {
  const bool was_training = net->is_training();
  net->eval();
  auto gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(seed));
  auto out = net->generate(bytes_to_tensor(prompt.data(), static_cast<int64_t>(prompt.size())), len,
                           arwrap::GenerateOptions().temperature(temperature), gen);
  net->train(was_training);
  std::string text;
  auto acc = out.accessor<int64_t, 1>();
  for (int64_t i = 0; i < acc.size(0); ++i) text += static_cast<char>(acc[i]);
  return text;
}

std::string duration(double s) {
  char buf[32];
  const long t = static_cast<long>(s + 0.5);
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t / 60) % 60);
  else if (t >= 60) std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  else std::snprintf(buf, sizeof buf, "%lds", t);
  return buf;
}

std::atomic<bool> g_interrupted{false};
// The first Ctrl-C finishes the step, saves and exits; a second one kills at once.
extern "C" void on_sigint(int) {
  g_interrupted = true;
  std::signal(SIGINT, SIG_DFL);
}

// ------------------------------------------------------------------ run

int run(int argc, char** argv) {
  Args a = parse_args(argc, argv);
  const std::string prog = argv[0];
  if (a.threads > 0) torch::set_num_threads(static_cast<int>(a.threads));

  // the checkpoint: what to resume, evaluate or sample from
  std::optional<train::Checkpoint> ckpt;
  const bool needs_ckpt = a.resume || a.eval_only || a.sample;
  if (needs_ckpt) {
    std::error_code ec;
    if (!std::filesystem::exists(a.checkpoint, ec))
      fail("checkpoint " + a.checkpoint + " does not exist" +
           (a.resume ? " (leave out --resume to start a new run)" : ""));
    ckpt = train::load_checkpoint(a.checkpoint);
    apply_train_args(a, ckpt->train_args);  // the run's data, batch, ... unless given again
  }
  arwrap::TransformerWrapperOptions config = config_from_flags(a);
  if (ckpt) {
    try {
      config = arwrap::TransformerWrapperOptions::parse(ckpt->config);
    } catch (const c10::Error& e) {
      fail("checkpoint " + a.checkpoint + " has a configuration this libarwrap cannot build: " +
           std::string(e.what_without_backtrace()).substr(0, std::string(e.what_without_backtrace()).find('\n')));
    }
    check_model_flags(a, config, a.checkpoint);
  }
  const int64_t seq_len = config.max_seq_len();

  torch::manual_seed(static_cast<uint64_t>(a.seed));
  arwrap::TransformerWrapper net(config);
  arwrap::ARWrapper model(net, arwrap::ARWrapperOptions());
  if (ckpt) train::load_state_dict(*net, ckpt->model, "checkpoint " + a.checkpoint);

  if (a.sample) {
    if (a.sample->empty()) fail("--sample needs a non-empty prompt");
    const std::string text = generate_text(net, *a.sample, a.sample_len, a.temperature, a.seed);
    std::fwrite(a.sample->data(), 1, a.sample->size(), stdout);
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fputc('\n', stdout);
    return 0;
  }

  Data data = load_data(a, seq_len);
  std::printf("corpus: %s; %lld train / %lld validation bytes\n", data.source.c_str(),
              static_cast<long long>(data.train_size()), static_cast<long long>(data.val_size()));
  if (a.eval_only) {
    const auto [loss, count] = validation_loss(model, data, seq_len, a.val_windows, a.batch);
    std::printf("step %lld  val_loss %.6f  (%lld windows of %lld bytes)\n", static_cast<long long>(ckpt->step), loss,
                static_cast<long long>(count), static_cast<long long>(seq_len + 1));
    return 0;
  }

  // optimizer
  const auto named = net->named_parameters(true);
  std::vector<at::Tensor> params;
  int64_t n_params = 0;
  for (const auto& p : named) {
    params.push_back(p.value());
    n_params += p.value().numel();
  }
  std::unique_ptr<torch::optim::Optimizer> opt;
  std::function<void(double)> set_lr;
  if (a.optimizer == "adam") {
    auto o = std::make_unique<torch::optim::Adam>(
        params, torch::optim::AdamOptions(a.lr).weight_decay(a.weight_decay < 0 ? 0.0 : a.weight_decay));
    auto* raw = o.get();
    set_lr = [raw](double lr) {
      for (auto& g : raw->param_groups()) static_cast<torch::optim::AdamOptions&>(g.options()).lr(lr);
    };
    opt = std::move(o);
  } else {
    auto o = std::make_unique<torch::optim::AdamW>(
        params, torch::optim::AdamWOptions(a.lr).weight_decay(a.weight_decay < 0 ? 0.01 : a.weight_decay));
    auto* raw = o.get();
    set_lr = [raw](double lr) {
      for (auto& g : raw->param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);
    };
    opt = std::move(o);
  }
  int64_t start_step = 0;
  if (ckpt) {
    start_step = ckpt->step;
    if (!ckpt->optimizer_name.empty() && !ckpt->optimizer.empty()) {
      if (ckpt->optimizer_name != a.optimizer)
        fail("checkpoint " + a.checkpoint + " holds " + ckpt->optimizer_name + " state, --optimizer " + a.optimizer +
             " given; leave --optimizer out or start a new run");
      train::load_optimizer_state(*opt, a.optimizer, named, ckpt->optimizer, "checkpoint " + a.checkpoint);
    } else {
      std::printf("note: checkpoint %s has no optimizer state; %s starts from zero moments\n", a.checkpoint.c_str(),
                  a.optimizer.c_str());
    }
  } else if (std::error_code ec; std::filesystem::exists(a.checkpoint, ec)) {
    std::printf("note: %s exists and will be overwritten (use --resume to continue from it)\n", a.checkpoint.c_str());
  }

  std::printf("model: %s, %.2f M parameters, %d thread%s\n", describe(config).c_str(), n_params / 1e6,
              torch::get_num_threads(), torch::get_num_threads() == 1 ? "" : "s");
  std::printf("training: steps %lld..%lld, batch %lld x accum %lld x %lld bytes, %s lr %g (warmup %lld), seed %lld%s\n",
              static_cast<long long>(start_step + 1), static_cast<long long>(a.steps), static_cast<long long>(a.batch),
              static_cast<long long>(a.accum), static_cast<long long>(seq_len), a.optimizer.c_str(), a.lr,
              static_cast<long long>(a.warmup), static_cast<long long>(a.seed),
              ckpt ? (", resumed from " + a.checkpoint).c_str() : "");
  if (start_step >= a.steps) {
    std::printf("checkpoint %s is at step %lld and --steps is %lld: nothing to train (pass a larger --steps)\n",
                a.checkpoint.c_str(), static_cast<long long>(start_step), static_cast<long long>(a.steps));
    return 0;
  }

  if (!a.metrics.empty()) a.metrics = std::filesystem::absolute(a.metrics).lexically_normal().string();  // for --resume
  train::MetricsWriter metrics(a.metrics.empty() ? train::default_metrics_path(a.checkpoint) : a.metrics, start_step,
                               ckpt.has_value());
  std::printf("metrics: %s\n", metrics.path().c_str());

  auto save = [&](int64_t step) {
    train::Checkpoint c;
    c.config = config.to_string();
    c.step = step;
    c.seed = a.seed;
    c.model = net->state_dict();
    c.optimizer_name = a.optimizer;
    c.optimizer = train::optimizer_state(*opt, a.optimizer, named);
    c.train_args = train_args_string(a);
    train::save_checkpoint(a.checkpoint, c);
  };
  auto validate = [&](int64_t step) {
    const auto [loss, count] = validation_loss(model, data, seq_len, a.val_windows, a.batch);
    std::printf("step %5lld  val_loss %.6f  (bits/byte %.3f)\n", static_cast<long long>(step), loss,
                loss / std::log(2.0));
    std::fflush(stdout);
    metrics.validation(step, loss);
    return loss;
  };
  auto sample = [&](int64_t step) {
    auto rng = rng_for(a.seed, step, 1);
    const int64_t prime = std::min<int64_t>(64, seq_len);
    std::uniform_int_distribution<int64_t> pick(0, std::max<int64_t>(0, data.val_size() - 2 * prime - 1));
    int64_t at = pick(rng);
    const std::string val(data.val(), static_cast<size_t>(data.val_size()));
    if (const auto nl = val.find('\n', static_cast<size_t>(at)); nl != std::string::npos && nl + prime < val.size())
      at = static_cast<int64_t>(nl + 1);  // start the prompt at a line
    const std::string prompt = val.substr(static_cast<size_t>(at), static_cast<size_t>(prime));
    const std::string text = generate_text(net, prompt, a.sample_len, a.temperature, a.seed * 1000003 + step);
    std::string body = printable(text, false), indented = "  | ";
    for (char c : body) indented += c == '\n' ? std::string("\n  | ") : std::string(1, c);
    std::printf("sample at step %lld, prompt \"%s\":\n%s\n", static_cast<long long>(step),
                printable(prompt, true).c_str(), indented.c_str());
    std::fflush(stdout);
  };

  std::signal(SIGINT, on_sigint);
  model->train();
  const double first_val = validate(start_step);
  double last_val = first_val;
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  auto t_log = t0;
  double train_seconds = 0, log_loss = 0;
  int64_t log_steps = 0;
  const int64_t tokens_per_step = a.batch * a.accum * seq_len;
  int64_t step = start_step;
  while (step < a.steps) {
    ++step;
    const double lr = a.warmup > 0 && step <= a.warmup ? a.lr * static_cast<double>(step) / a.warmup : a.lr;
    set_lr(lr);
    const auto ts = clock::now();
    auto rng = rng_for(a.seed, step, 0);
    double loss_sum = 0;
    for (int64_t i = 0; i < a.accum; ++i) {
      auto loss = model->forward(random_batch(data, seq_len, a.batch, rng)).loss;
      (loss / static_cast<double>(a.accum)).backward();
      loss_sum += loss.item<double>();
    }
    const double grad_norm = torch::nn::utils::clip_grad_norm_(params, 0.5);
    opt->step();
    opt->zero_grad();
    train_seconds += std::chrono::duration<double>(clock::now() - ts).count();
    log_loss += loss_sum / static_cast<double>(a.accum);
    ++log_steps;

    if (step % a.log_every == 0 || step == a.steps || step == start_step + 1) {
      const auto now = clock::now();
      const double elapsed = std::chrono::duration<double>(now - t0).count();
      const double left = elapsed / static_cast<double>(step - start_step) * static_cast<double>(a.steps - step);
      const double interval = std::chrono::duration<double>(now - t_log).count();
      const double tok_s = static_cast<double>(tokens_per_step * log_steps) / std::max(interval, 1e-9), rss = resident_mb();
      std::printf("step %5lld/%lld  loss %.4f  %6.0f tok/s  %s left  rss %.1f MB\n", static_cast<long long>(step),
                  static_cast<long long>(a.steps), log_loss / log_steps, tok_s, duration(left).c_str(), rss);
      metrics.train(step, {log_loss / log_steps, tok_s, lr, grad_norm, rss});
      std::fflush(stdout);
      t_log = clock::now();
      log_loss = 0;
      log_steps = 0;
    }
    if ((a.val_every && step % a.val_every == 0) || step == a.steps) last_val = validate(step);
    if (a.sample_every && (step % a.sample_every == 0 || step == a.steps)) sample(step);
    if ((a.save_every && step % a.save_every == 0) || step == a.steps || g_interrupted) save(step);
    if (g_interrupted) {
      std::printf("interrupted at step %lld; checkpoint saved to %s\ncontinue: %s --checkpoint %s --resume\n",
                  static_cast<long long>(step), a.checkpoint.c_str(), prog.c_str(), a.checkpoint.c_str());
      return 130;
    }
  }
  const double wall = std::chrono::duration<double>(clock::now() - t0).count();
  std::string abs = std::filesystem::absolute(a.checkpoint).lexically_normal().string();
  std::printf("done: %lld steps in %s (%.0f tokens/s training); validation loss %.4f -> %.4f\n",
              static_cast<long long>(step - start_step), duration(wall).c_str(),
              static_cast<double>(tokens_per_step * (step - start_step)) / std::max(train_seconds, 1e-9), first_val,
              last_val);
  std::printf("checkpoint: %s (step %lld)\n", abs.c_str(), static_cast<long long>(step));
  std::printf("metrics:    %s  (plot: scripts/plot.sh %s)\n", metrics.path().c_str(), metrics.path().c_str());
  std::printf("sample:     %s --checkpoint %s --sample 'def main():' --sample-len 400\n", prog.c_str(), abs.c_str());
  std::printf("continue:   %s --checkpoint %s --resume --steps %lld\n", prog.c_str(), abs.c_str(),
              static_cast<long long>(2 * a.steps));
  std::printf("in Python:  from arwrap_cpp.checkpoint import load_model; net = load_model('%s')"
              "  # kind='x_transformers' for x-transformers' own\n",
              abs.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    std::fprintf(stderr, "arwrap-train: error: %s\n", msg.substr(0, msg.find('\n')).c_str());
  } catch (const std::exception& e) {
    const std::string msg = e.what();
    std::fprintf(stderr, "arwrap-train: error: %s\n", msg.substr(0, msg.find('\n')).c_str());
  }
  return 1;
}

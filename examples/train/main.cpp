// arwrap-train: a byte-level language model trained with arwrap::ARWrapper around
// the native arwrap::TransformerWrapper, the loop of x-transformers' train_enwik8.py:
// random windows, gradient accumulation, clip_grad_norm 0.5, Adam/AdamW, validation
// on fixed windows, samples with generate, one-file checkpoints (see checkpoint.h).
// `arwrap-train --help` lists the flags (flags.h); the data is data.h's.
#include "checkpoint.h"
#include "data.h"
#include "data_parallel.h"
#include "flags.h"
#include "metrics.h"
#include "precision.h"
#include "tokenizer.h"

#include <arwrap/arwrap.h>
#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace {

using namespace train;

std::atomic<bool> g_interrupted{false};
// The first Ctrl-C finishes the step, saves and exits; a second one kills at once.
extern "C" void on_sigint(int) {
  g_interrupted = true;
  std::signal(SIGINT, SIG_DFL);
}

// An Adam-family optimizer over params, and in set_lr the setter of its learning rate (the schedule's).
template <typename Optimizer, typename Options>
std::unique_ptr<torch::optim::Optimizer> make_optimizer(std::vector<at::Tensor> params, const Options& options,
                                                        std::function<void(double)>& set_lr) {
  auto o = std::make_unique<Optimizer>(std::move(params), options);
  set_lr = [raw = o.get()](double lr) {
    for (auto& g : raw->param_groups()) static_cast<Options&>(g.options()).lr(lr);
  };
  return o;
}

// A test seam: ARWRAP_TRAIN_INJECT_NAN="3,5@1" makes the loss NaN at step 3 on every rank and at
// step 5 on rank 1 only, as a diverging step would be (tests/integration/test_divergence.py).
std::vector<int64_t> injected_nan_steps(int rank) {
  std::vector<int64_t> out;
  const char* env = std::getenv("ARWRAP_TRAIN_INJECT_NAN");
  if (env == nullptr) return out;
  std::stringstream in(env);
  for (std::string item; std::getline(in, item, ',');) {
    const auto at = item.find('@');
    if (at != std::string::npos && parse_int("ARWRAP_TRAIN_INJECT_NAN", item.substr(at + 1), 0) != rank) continue;
    out.push_back(parse_int("ARWRAP_TRAIN_INJECT_NAN", item.substr(0, at), 1));
  }
  return out;
}

// "12 7 301": a 1-D tensor of ids
std::string ids_text(const at::Tensor& ids) {
  std::string out;
  auto acc = ids.accessor<int64_t, 1>();
  for (int64_t i = 0; i < acc.size(0); ++i) out += (i ? " " : "") + std::to_string(acc[i]);
  return out;
}

// The ids of "12 7 301" or "12,7,301"; each one a number >= 0, or fail() naming the flag.
std::vector<int64_t> parse_ids(const std::string& flag, const std::string& text) {
  std::vector<int64_t> ids;
  std::string item;
  for (std::istringstream in(text); in >> item;)
    for (std::istringstream parts(item); std::getline(parts, item, ',');)
      if (!item.empty()) ids.push_back(parse_int(flag, item, 0));
  return ids;
}

std::vector<int64_t> tensor_ids(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

std::string text_number(double x) {
  std::ostringstream s;
  s << x;
  return s.str();
}

// ------------------------------------------------------------------ run

int run(int argc, char** argv) {
  Args a = parse_args(argc, argv);
  const std::string prog = argv[0];
  if (a.threads > 0) torch::set_num_threads(static_cast<int>(a.threads));
  std::optional<train::Tokenizer> tok;  // --tokenizer: a token model's samples and prompts as text
  if (!a.tokenizer.empty()) tok = train::Tokenizer::load(a.tokenizer);
  if (a.encode) {  // the tool modes: no model
    const std::vector<int64_t> ids = tok->encode(*a.encode);
    std::string line;
    for (size_t i = 0; i < ids.size(); ++i) line += (i ? " " : "") + std::to_string(ids[i]);
    std::printf("%s\n", line.c_str());
    return 0;
  }
  if (a.decode) {
    const std::string text = tok->decode(parse_ids("--decode", *a.decode));
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fputc('\n', stdout);
    return 0;
  }
  train::DataParallel dp(a.dist, !(a.eval_only || a.sample));  // torchrun's ranks meet here; alone without

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
    if (const auto at = ckpt->train_args.find("\nsteps="); at != std::string::npos && a.schedule != "constant") {
      const std::string was = ckpt->train_args.substr(at + 7, ckpt->train_args.find('\n', at + 1) - at - 7);
      if (was != std::to_string(a.steps))
        std::printf("note: the run was scheduled for %s steps, --steps is %lld: the %s decay is stretched to "
                    "step %lld from here (the learning rate moves)\n",
                    was.c_str(), static_cast<long long>(a.steps), a.schedule.c_str(), static_cast<long long>(a.steps));
    }
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
  config.attn_layers().checkpoint_layers(a.checkpoint_layers);  // how this run trains, whatever the checkpoint says
  if (tok) {
    // its ids are the model's: a byte model (text data) has none, and every id must fit the vocabulary
    const std::string where = a.data.empty() ? std::string("the default corpus") : "--data " + a.data;
    if (!a.sample && !a.eval_only && !is_token_corpus(a.data))
      fail("--tokenizer " + tok->path() + " is for token data (the ids it made), and " + where +
           " is text, which the model reads as bytes: leave --tokenizer out");
    if (a.sample && config.num_tokens() == 256 && !is_token_corpus(a.data))
      fail("--tokenizer " + tok->path() + ": checkpoint " + a.checkpoint + " is a byte-level model (trained on text, " +
           where + "): its --sample prompt is text already; leave --tokenizer out");
    if (tok->vocab_size() > config.num_tokens())
      fail("--tokenizer " + tok->path() + " has " + std::to_string(tok->vocab_size()) + " ids, more than " +
           (ckpt ? "checkpoint " + a.checkpoint + "'s num_tokens " : std::string("--num-tokens ")) +
           std::to_string(config.num_tokens()) +
           (ckpt || a.given.count("num-tokens")
                ? std::string()
                : " (the default; give --num-tokens " + std::to_string(tok->vocab_size()) + ")"));
  }
  const int64_t seq_len = config.max_seq_len();

  torch::manual_seed(static_cast<uint64_t>(a.seed));
  arwrap::TransformerWrapper net(config);
  arwrap::ARWrapper model(net, arwrap::ARWrapperOptions());
  if (ckpt) train::load_state_dict(*net, ckpt->model, "checkpoint " + a.checkpoint);

  if (a.sample) {
    if (a.sample->empty()) fail("--sample needs a non-empty prompt");
    if (tok) {  // a token model's prompt and sample as text
      const std::vector<int64_t> ids = tok->encode(*a.sample);
      const at::Tensor prompt = torch::tensor(ids, torch::kLong);
      const at::Tensor out = generate_ids(net, prompt, a.sample_len, a.temperature, a.seed);
      const std::string text = tok->decode(tensor_ids(torch::cat({prompt, out})), false);
      std::fwrite(text.data(), 1, text.size(), stdout);
      std::fputc('\n', stdout);
      return 0;
    }
    if (config.num_tokens() != 256) {  // a token model: the prompt and the sample are ids
      const std::vector<int64_t> ids = parse_ids("--sample", *a.sample);
      for (int64_t id : ids)
        if (id >= config.num_tokens())
          fail("--sample: id " + std::to_string(id) + " is outside the vocabulary (num_tokens " +
               std::to_string(config.num_tokens()) + ")");
      if (ids.empty()) fail("--sample: a token model's prompt is token ids, e.g. --sample '12 7 301'");
      const at::Tensor out = generate_ids(net, torch::tensor(ids, torch::kLong), a.sample_len, a.temperature, a.seed);
      std::printf("%s\n", ids_text(torch::cat({torch::tensor(ids, torch::kLong), out})).c_str());
      return 0;
    }
    const std::string text = generate_text(net, *a.sample, a.sample_len, a.temperature, a.seed);
    std::fwrite(a.sample->data(), 1, a.sample->size(), stdout);
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fputc('\n', stdout);
    return 0;
  }

  Data data = load_data(a, seq_len, config.num_tokens(), ckpt.has_value() || a.given.count("num-tokens"));
  std::printf("corpus: %s; %lld train / %lld validation %s\n", data.source.c_str(),
              static_cast<long long>(data.train_size()), static_cast<long long>(data.val_size()), data.unit());
  if (tok)
    std::printf("tokenizer: %s (byte-level BPE, %lld ids, %lld merges, %lld added tokens): samples as text\n",
                tok->path().c_str(), static_cast<long long>(tok->vocab_size()), static_cast<long long>(tok->merges()),
                static_cast<long long>(tok->added()));
  const train::Precision precision =
      a.precision.empty() ? train::default_precision(c10::DeviceType::CPU) : train::parse_precision(a.precision);
  if (a.eval_only) {
    const auto [loss, count] = validation_loss(model, data, seq_len, a.val_windows, a.batch);
    std::printf("step %lld  val_loss %.6f  (%lld windows of %lld %s)\n", static_cast<long long>(ckpt->step), loss,
                static_cast<long long>(count), static_cast<long long>(seq_len + 1), data.unit());
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
    opt = make_optimizer<torch::optim::Adam>(
        params, torch::optim::AdamOptions(a.lr).weight_decay(a.weight_decay < 0 ? 0.0 : a.weight_decay), set_lr);
  } else {
    opt = make_optimizer<torch::optim::AdamW>(
        params, torch::optim::AdamWOptions(a.lr).weight_decay(a.weight_decay < 0 ? 0.01 : a.weight_decay), set_lr);
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

  dp.start(params, net->buffers(true));  // rank 0's weights everywhere; the gradient reducer
  std::printf("model: %s, %.2f M parameters, %d thread%s\n", describe(config).c_str(), n_params / 1e6,
              torch::get_num_threads(), torch::get_num_threads() == 1 ? "" : "s");
  const std::string schedule = a.schedule == "constant"
                                   ? std::string()
                                   : ", " + a.schedule + " to " + text_number(min_lr(a)) + " at step " + std::to_string(a.steps);
  std::printf("training: steps %lld..%lld, batch %lld x accum %lld x %lld %s, %s lr %g (warmup %lld%s), seed %lld%s\n",
              static_cast<long long>(start_step + 1), static_cast<long long>(a.steps), static_cast<long long>(a.batch),
              static_cast<long long>(a.accum), static_cast<long long>(seq_len), data.unit(), a.optimizer.c_str(), a.lr,
              static_cast<long long>(a.warmup), schedule.c_str(), static_cast<long long>(a.seed),
              ckpt ? (", resumed from " + a.checkpoint).c_str() : "");
  std::printf("precision: %s (%s)%s\n", train::precision_name(precision),
              train::precision_reason(precision, c10::DeviceType::CPU, !a.precision.empty()).c_str(),
              precision == train::Precision::BF16
                  ? "; autocast: bfloat16 products, float32 parameters, gradients and optimizer state"
                  : "");
  std::printf("%s\n", dp.header(a.batch * a.accum * seq_len).c_str());
  if (start_step >= a.steps) {
    std::printf("checkpoint %s is at step %lld and --steps is %lld: nothing to train (pass a larger --steps)\n",
                a.checkpoint.c_str(), static_cast<long long>(start_step), static_cast<long long>(a.steps));
    return 0;
  }

  if (!a.metrics.empty()) a.metrics = std::filesystem::absolute(a.metrics).lexically_normal().string();  // for --resume
  train::MetricsOptions metrics_options;
  metrics_options.enabled = dp.is_main();  // rank 0 writes the file
  if (dp.world_size() > 1) metrics_options.world_size = dp.world_size();
  metrics_options.precision = train::precision_name(precision);
  train::MetricsWriter metrics(a.metrics.empty() ? train::default_metrics_path(a.checkpoint) : a.metrics, start_step,
                               ckpt.has_value(), metrics_options);
  std::printf("metrics: %s\n", metrics.path().c_str());

  // Writes the checkpoint of `step` from rank 0, and only weights and moments that are all finite:
  // a diverged model never replaces the last good checkpoint.
  auto save = [&](int64_t step) {
    if (!dp.is_main()) return;  // rank 0 writes the checkpoint
    train::Checkpoint c;
    c.config = config.to_string();
    c.step = step;
    c.seed = a.seed;
    c.model = net->state_dict();
    c.optimizer_name = a.optimizer;
    c.optimizer = train::optimizer_state(*opt, a.optimizer, named);
    c.train_args = train_args_string(a);
    for (const auto* m : {&c.model, &c.optimizer})
      for (const auto& [name, t] : *m)
        if (t.is_floating_point() && !t.isfinite().all().item<bool>())
          fail("step " + std::to_string(step) + ": " + name + " holds NaN or infinite values; checkpoint " +
               a.checkpoint + " not written (the file there, if any, is unchanged)");
    train::save_checkpoint(a.checkpoint, c);
  };
  auto validate = [&](int64_t step) {  // in float32 whatever --precision: one scale for every run
    if (!dp.is_main()) return std::nan("");  // rank 0 validates
    const auto [loss, count] = validation_loss(model, data, seq_len, a.val_windows, a.batch);
    std::printf("step %5lld  val_loss %.6f  (bits/%s %.3f)\n", static_cast<long long>(step), loss,
                data.tokens ? "token" : "byte", loss / std::log(2.0));
    std::fflush(stdout);
    metrics.validation(step, loss);
    return loss;
  };
  // A sample's text under its prompt, each line indented.
  auto show = [](int64_t step, const std::string& prompt, const std::string& text) {
    std::string body = printable(text, false), indented = "  | ";
    for (char c : body) indented += c == '\n' ? std::string("\n  | ") : std::string(1, c);
    std::printf("sample at step %lld, prompt \"%s\":\n%s\n", static_cast<long long>(step),
                printable(prompt, true).c_str(), indented.c_str());
    std::fflush(stdout);
  };
  auto sample = [&](int64_t step) {
    if (!dp.is_main()) return;
    auto rng = rng_for(a.seed, step, 1);
    const int64_t prime = std::min<int64_t>(64, seq_len);
    if (data.tokens) {  // a token corpus: the prompt and the sample as ids, or as text with --tokenizer
      const Segment& s = data.val_segments.front();
      std::uniform_int_distribution<int64_t> pick(0, std::max<int64_t>(0, s.count - prime - 1));
      const at::Tensor prompt = segment_tensor(s, pick(rng), std::min(prime, s.count));
      const at::Tensor out = generate_ids(net, prompt, a.sample_len, a.temperature, a.seed * 1000003 + step);
      if (tok)
        return show(step, utf8_lossy(tok->decode(tensor_ids(prompt), false)),
                    utf8_lossy(tok->decode(tensor_ids(out), false)));
      std::printf("sample at step %lld, prompt ids %s:\n  | %s\n", static_cast<long long>(step),
                  ids_text(prompt).c_str(), ids_text(out).c_str());
      std::fflush(stdout);
      return;
    }
    std::uniform_int_distribution<int64_t> pick(0, std::max<int64_t>(0, data.val_size() - 2 * prime - 1));
    int64_t at = pick(rng);
    const std::string val(data.val(), static_cast<size_t>(data.val_size()));
    if (const auto nl = val.find('\n', static_cast<size_t>(at)); nl != std::string::npos && nl + prime < val.size())
      at = static_cast<int64_t>(nl + 1);  // start the prompt at a line
    const std::string prompt = val.substr(static_cast<size_t>(at), static_cast<size_t>(prime));
    show(step, prompt, generate_text(net, prompt, a.sample_len, a.temperature, a.seed * 1000003 + step));
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
  const int64_t tokens_per_step = dp.global_tokens(a.batch * a.accum * seq_len);  // all ranks
  // Divergence: a step whose loss or gradient norm is not finite (on any rank: they agree) takes no
  // optimizer step, so the weights and the moments stay as they were; it is printed and counted in
  // the metrics. --max-bad-steps of them in a row stop the run with an error, before any save.
  const std::vector<int64_t> inject_nan = injected_nan_steps(dp.rank());
  int64_t bad_streak = 0, bad_total = 0, log_skipped = 0, streak_from = 0;
  bool save_due = false;
  int64_t saved_step = -1;  // the step of this run's latest checkpoint
  const bool had_checkpoint = std::filesystem::exists(a.checkpoint);
  auto kept = [&] {
    if (saved_step >= 0)
      return "the checkpoint at " + a.checkpoint + " holds step " + std::to_string(saved_step) + ", the last good one";
    return had_checkpoint ? "the checkpoint at " + a.checkpoint + " is unchanged" : std::string("no checkpoint written");
  };
  int64_t step = start_step;
  while (step < a.steps) {
    ++step;
    const double lr = scheduled_lr(a, step);
    set_lr(lr);
    const auto ts = clock::now();
    auto rngs = dp.window_rngs(a.seed, step);  // this rank's windows: (seed, step, rank)
    double loss_sum = 0;
    for (int64_t i = 0; i < a.accum; ++i) {
      std::vector<at::Tensor> parts;
      for (auto& rng : rngs) parts.push_back(random_batch(data, seq_len, a.batch, rng));
      if (i == a.accum - 1) dp.before_last_backward();
      at::Tensor loss;
      {  // the forward in the run's precision; the backward follows the recorded casts
        train::PrecisionScope in_precision(precision, c10::DeviceType::CPU);
        loss = model->forward(parts.size() == 1 ? parts[0] : torch::cat(parts)).loss;
      }
      if (std::find(inject_nan.begin(), inject_nan.end(), step) != inject_nan.end()) loss = loss * std::nan("");
      (loss / static_cast<double>(a.accum)).backward();
      loss_sum += loss.item<double>();
    }
    dp.after_backward();  // .grad = the mean over ranks: the clip below is on the global norm
    const double grad_norm = torch::nn::utils::clip_grad_norm_(params, 0.5);
    const auto agreed = dp.agree(loss_sum / static_cast<double>(a.accum), grad_norm, g_interrupted);
    if (agreed.interrupted) g_interrupted = true;  // every rank stops at the same step
    if (agreed.finite) {
      opt->step();
      bad_streak = 0;
      log_loss += agreed.loss;
      ++log_steps;
    } else {
      if (bad_streak++ == 0) streak_from = step;
      ++bad_total;
      ++log_skipped;
      std::printf("step %5lld/%lld  loss %g, gradient norm %g: not finite, optimizer step skipped "
                  "(%lld in a row, %lld in this run; --max-bad-steps %lld)\n",
                  static_cast<long long>(step), static_cast<long long>(a.steps), agreed.loss, grad_norm,
                  static_cast<long long>(bad_streak), static_cast<long long>(bad_total),
                  static_cast<long long>(a.max_bad_steps));
      std::fflush(stdout);
    }
    opt->zero_grad();
    train_seconds += std::chrono::duration<double>(clock::now() - ts).count();

    const bool stop_bad = bad_streak >= a.max_bad_steps;
    if (step % a.log_every == 0 || step == a.steps || step == start_step + 1 || stop_bad) {
      const auto now = clock::now();
      const double elapsed = std::chrono::duration<double>(now - t0).count();
      const double left = elapsed / static_cast<double>(step - start_step) * static_cast<double>(a.steps - step);
      const double interval = std::chrono::duration<double>(now - t_log).count();
      const double tok_s = static_cast<double>(tokens_per_step * (log_steps + log_skipped)) / std::max(interval, 1e-9);
      const double rss = resident_mb(), mean_loss = log_steps ? log_loss / log_steps : std::nan("");
      std::printf("step %5lld/%lld  loss %.4f  %6.0f tok/s  %s left  rss %.1f MB%s\n", static_cast<long long>(step),
                  static_cast<long long>(a.steps), mean_loss, tok_s, duration(left).c_str(), rss,
                  log_skipped ? ("  (" + std::to_string(log_skipped) + " skipped)").c_str() : "");
      metrics.train(step, {mean_loss, tok_s, lr, grad_norm, rss, log_skipped});
      std::fflush(stdout);
      t_log = clock::now();
      log_loss = 0;
      log_steps = 0;
      log_skipped = 0;
    }
    if (stop_bad) {
      metrics.flush();
      fail("training diverged: " + std::to_string(bad_streak) + " step" + (bad_streak == 1 ? "" : "s") +
           " in a row (" + std::to_string(streak_from) + ".." + std::to_string(step) +
           ") had a non-finite loss or gradient norm (--max-bad-steps " + std::to_string(a.max_bad_steps) + "); " +
           kept() + "; try a lower --lr (" + text_number(a.lr) + ") or a longer --warmup");
    }
    if ((a.val_every && step % a.val_every == 0) || step == a.steps) last_val = validate(step);
    if (a.sample_every && (step % a.sample_every == 0 || step == a.steps)) sample(step);
    save_due = save_due || (a.save_every && step % a.save_every == 0) || step == a.steps || g_interrupted;
    // A checkpoint due during a streak of skipped steps waits for the next good one, so that a streak
    // that becomes a divergence leaves the previous checkpoint as it was. The last step (or Ctrl-C)
    // saves anyway: the weights are the last good step's, and the streak stayed under --max-bad-steps.
    if (save_due && (bad_streak == 0 || step == a.steps || g_interrupted)) {
      save(step);
      saved_step = step;
      save_due = false;
    }
    if (g_interrupted) {
      std::printf("interrupted at step %lld; checkpoint saved to %s\ncontinue: %s --checkpoint %s --resume%s\n",
                  static_cast<long long>(step), a.checkpoint.c_str(), prog.c_str(), a.checkpoint.c_str(),
                  tok ? (" --tokenizer " + a.tokenizer).c_str() : "");
      return 130;
    }
  }
  const double wall = std::chrono::duration<double>(clock::now() - t0).count();
  std::string abs = std::filesystem::absolute(a.checkpoint).lexically_normal().string();
  std::printf("done: %lld steps in %s (%.0f tokens/s training); validation loss %.4f -> %.4f\n",
              static_cast<long long>(step - start_step), duration(wall).c_str(),
              static_cast<double>(tokens_per_step * (step - start_step)) / std::max(train_seconds, 1e-9), first_val,
              last_val);
  if (const std::string comm = dp.summary(train_seconds, step - start_step); !comm.empty())
    std::printf("%s\n", comm.c_str());
  std::printf("checkpoint: %s (step %lld)\n", abs.c_str(), static_cast<long long>(step));
  std::printf("metrics:    %s  (plot: scripts/plot.sh %s)\n", metrics.path().c_str(), metrics.path().c_str());
  // --tokenizer is not stored in the checkpoint: the lines that need it say it again
  const std::string with_tok =
      tok ? " --tokenizer " + std::filesystem::absolute(a.tokenizer).lexically_normal().string() : std::string();
  if (tok)
    std::printf("sample:     %s --checkpoint %s%s --sample 'def main():' --sample-len 64\n", prog.c_str(), abs.c_str(),
                with_tok.c_str());
  else if (data.tokens)
    std::printf("sample:     %s --checkpoint %s --sample '0 1 2' --sample-len 64  (token ids)\n", prog.c_str(),
                abs.c_str());
  else
    std::printf("sample:     %s --checkpoint %s --sample 'def main():' --sample-len 400\n", prog.c_str(), abs.c_str());
  std::printf("continue:   %s --checkpoint %s --resume --steps %lld%s\n", prog.c_str(), abs.c_str(),
              static_cast<long long>(2 * a.steps), with_tok.c_str());
  std::printf("in Python:  from arwrap_cpp.checkpoint import load_model; net = load_model('%s')"
              "  # kind='x_transformers' for x-transformers' own\n",
              abs.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
#ifdef SIGPIPE
  // A peer rank that dies closes its sockets: a write to them must be an error this rank reports
  // (arwrap::distributed's, exit 1), not SIGPIPE ending it silently (exit by signal 13, when the
  // peer dies in the middle of a gradient all-reduce). Python ignores SIGPIPE too.
  std::signal(SIGPIPE, SIG_IGN);
#endif
  try {
    return run(argc, argv);
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    return train::report_error(msg.substr(0, msg.find('\n')));
  } catch (const std::exception& e) {
    const std::string msg = e.what();
    return train::report_error(msg.substr(0, msg.find('\n')));
  }
}

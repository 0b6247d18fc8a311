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

#include <arwrap/arwrap.h>
#include <torch/torch.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
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

// ------------------------------------------------------------------ run

int run(int argc, char** argv) {
  Args a = parse_args(argc, argv);
  const std::string prog = argv[0];
  if (a.threads > 0) torch::set_num_threads(static_cast<int>(a.threads));
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
  const train::Precision precision =
      a.precision.empty() ? train::default_precision(c10::DeviceType::CPU) : train::parse_precision(a.precision);
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
  std::printf("training: steps %lld..%lld, batch %lld x accum %lld x %lld bytes, %s lr %g (warmup %lld), seed %lld%s\n",
              static_cast<long long>(start_step + 1), static_cast<long long>(a.steps), static_cast<long long>(a.batch),
              static_cast<long long>(a.accum), static_cast<long long>(seq_len), a.optimizer.c_str(), a.lr,
              static_cast<long long>(a.warmup), static_cast<long long>(a.seed),
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
    train::save_checkpoint(a.checkpoint, c);
  };
  auto validate = [&](int64_t step) {  // in float32 whatever --precision: one scale for every run
    if (!dp.is_main()) return std::nan("");  // rank 0 validates
    const auto [loss, count] = validation_loss(model, data, seq_len, a.val_windows, a.batch);
    std::printf("step %5lld  val_loss %.6f  (bits/byte %.3f)\n", static_cast<long long>(step), loss,
                loss / std::log(2.0));
    std::fflush(stdout);
    metrics.validation(step, loss);
    return loss;
  };
  auto sample = [&](int64_t step) {
    if (!dp.is_main()) return;
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
  const int64_t tokens_per_step = dp.global_tokens(a.batch * a.accum * seq_len);  // all ranks
  int64_t step = start_step;
  while (step < a.steps) {
    ++step;
    const double lr = a.warmup > 0 && step <= a.warmup ? a.lr * static_cast<double>(step) / a.warmup : a.lr;
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
      (loss / static_cast<double>(a.accum)).backward();
      loss_sum += loss.item<double>();
    }
    dp.after_backward();  // .grad = the mean over ranks: the clip below is on the global norm
    const double grad_norm = torch::nn::utils::clip_grad_norm_(params, 0.5);
    opt->step();
    opt->zero_grad();
    const auto [step_loss, stop] = dp.agree(loss_sum / static_cast<double>(a.accum), g_interrupted);
    if (stop) g_interrupted = true;  // every rank stops at the same step
    train_seconds += std::chrono::duration<double>(clock::now() - ts).count();
    log_loss += step_loss;
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
  if (const std::string comm = dp.summary(train_seconds, step - start_step); !comm.empty())
    std::printf("%s\n", comm.c_str());
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
    return train::report_error(msg.substr(0, msg.find('\n')));
  } catch (const std::exception& e) {
    const std::string msg = e.what();
    return train::report_error(msg.substr(0, msg.find('\n')));
  }
}

// arwrap-deploy: greedy decoding or sampling from an AOTInductor package of the native net
// (python -m arwrap_cpp.export CHECKPOINT OUT.pt2), in a C++ process without Python.
//
// The package's program is one decoding step of arwrap_cpp.TransformerWrapper:
//   (tokens (b, n), k_cache, v_cache, offset) -> (logits (b, n, num_tokens), k_cache, v_cache)
// with the caches (depth, b, heads, cached, dim_head) and offset the position of the first
// cached key. The prompt's step is the same program with empty caches. The loop below is
// arwrap_cpp.export.greedy_decode's, and so net.generate(..., temperature=0.0)'s: the prompt
// cropped to max_seq_len, then the cache cropped to max_seq_len - 1 as the window slides.
//
//   arwrap-deploy PACKAGE [--prompt TEXT | --tokens "ID ID ..."] [--steps N] [--temperature T]
//                 [--seed S] [--threads N] [--repeat R]
#include <arwrap/transformer_options.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct Args {
  std::string package, prompt = "def ", tokens;
  int64_t steps = 64, seed = 0, threads = 0, repeat = 1;
  double temperature = 0.0;
};

[[noreturn]] void fail(const std::string& msg) { throw std::runtime_error(msg); }

int64_t to_int(const std::string& flag, const std::string& v, int64_t min) {
  size_t used = 0;
  int64_t x = 0;
  try {
    x = std::stoll(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != v.size() || v.empty() || x < min) fail(flag + " must be an integer >= " + std::to_string(min) + ", got '" + v + "'");
  return x;
}

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) fail(f + " needs a value");
      return argv[++i];
    };
    if (f == "--help" || f == "-h") {
      std::cout << "usage: arwrap-deploy PACKAGE [--prompt TEXT | --tokens \"ID ID ...\"] [--steps N=64]\n"
                   "                     [--temperature T=0 (greedy)] [--seed S=0] [--threads N] [--repeat R=1]\n"
                   "PACKAGE: a .pt2 file written by `python -m arwrap_cpp.export CHECKPOINT PACKAGE`.\n"
                   "--prompt: text, as bytes (a byte-level model, as arwrap-train's); --tokens: token ids.\n"
                   "--repeat: decode R times, report the median time.\n";
      std::exit(0);
    } else if (f == "--prompt") {
      a.prompt = value();
    } else if (f == "--tokens") {
      a.tokens = value();
    } else if (f == "--steps") {
      a.steps = to_int(f, value(), 0);
    } else if (f == "--seed") {
      a.seed = to_int(f, value(), 0);
    } else if (f == "--threads") {
      a.threads = to_int(f, value(), 0);
    } else if (f == "--repeat") {
      a.repeat = to_int(f, value(), 1);
    } else if (f == "--temperature") {
      const std::string v = value();
      try {
        a.temperature = std::stod(v);
      } catch (const std::exception&) {
        a.temperature = -1;
      }
      if (!(a.temperature >= 0.0)) fail("--temperature must be a number >= 0, got '" + v + "'");
    } else if (!f.empty() && f[0] == '-') {
      fail("unknown flag " + f + " (--help lists them)");
    } else if (a.package.empty()) {
      a.package = f;
    } else {
      fail("one package only, got '" + a.package + "' and '" + f + "'");
    }
  }
  if (a.package.empty()) fail("the package (a .pt2 file) is missing (--help)");
  return a;
}

std::vector<int64_t> prompt_ids(const Args& a, int64_t num_tokens) {
  std::vector<int64_t> ids;
  if (!a.tokens.empty()) {
    std::istringstream in(a.tokens);
    std::string t;
    while (in >> t) ids.push_back(to_int("--tokens", t, 0));
  } else {
    for (unsigned char c : a.prompt) ids.push_back(c);
  }
  if (ids.empty()) fail("the prompt must hold at least one token");
  for (int64_t t : ids)
    if (t >= num_tokens) fail("prompt token " + std::to_string(t) + " is outside the vocabulary [0, num_tokens=" + std::to_string(num_tokens) + ")");
  return ids;
}

// The decoding loop over the package (see the top of the file). Returns the new tokens.
std::vector<int64_t> decode(torch::inductor::AOTIModelPackageLoader& model, const arwrap::TransformerWrapperOptions& o,
                            const std::vector<int64_t>& prompt, const Args& a, double* prompt_ms) {
  const auto& d = o.attn_layers();
  const int64_t window = o.max_seq_len();
  at::Tensor tokens = at::tensor(prompt, at::kLong).unsqueeze(0);
  if (tokens.size(1) > window) tokens = tokens.narrow(1, tokens.size(1) - window, window);
  at::Tensor k = at::zeros({d.depth(), 1, d.heads(), 0, d.attn_dim_head()});
  at::Tensor v = k.clone();
  int64_t offset = 0;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(a.seed);
  std::vector<int64_t> out;
  out.reserve(a.steps);
  for (int64_t step = 0; step < a.steps; ++step) {
    const int64_t cached = k.size(3);
    if (cached > window - 1) {  // the window slides: drop the oldest keys, count them in offset
      const int64_t drop = cached - (window - 1);
      k = k.narrow(3, drop, window - 1).contiguous();
      v = v.narrow(3, drop, window - 1).contiguous();
      offset += drop;
    }
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<at::Tensor> res = model.run({tokens, k, v, at::scalar_tensor(offset, at::kLong)});
    k = res[1];
    v = res[2];
    const at::Tensor last = res[0].select(1, res[0].size(1) - 1);  // (1, num_tokens)
    if (a.temperature == 0.0) {
      tokens = last.argmax(-1, true);
    } else {
      tokens = at::multinomial(at::softmax(last / a.temperature, -1), 1, false, gen);
    }
    out.push_back(tokens.item<int64_t>());
    if (step == 0) *prompt_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args a = parse_args(argc, argv);
    if (a.threads > 0) at::set_num_threads(static_cast<int>(a.threads));
    torch::inductor::AOTIModelPackageLoader model(a.package);
    const auto meta = model.get_metadata();
    const auto config = meta.find("arwrap.config");
    if (config == meta.end())
      fail(a.package + " holds no arwrap.config metadata: write it with python -m arwrap_cpp.export");
    // parsing the configuration is libarwrap's, as are the operators the package calls
    const arwrap::TransformerWrapperOptions o = arwrap::TransformerWrapperOptions::parse(config->second);
    const std::vector<int64_t> prompt = prompt_ids(a, o.num_tokens());
    if (o.use_abs_pos_emb() && static_cast<int64_t>(prompt.size()) + a.steps > o.max_seq_len() + 1)
      fail("with absolute positional embeddings the sequence (" + std::to_string(prompt.size() + a.steps) +
           " tokens) cannot outgrow max_seq_len=" + std::to_string(o.max_seq_len()) +
           " with the cache (as generate); use fewer --steps");
    std::cout << "model: " << o.to_string() << "\n";
    std::cout << "threads: " << at::get_num_threads() << ", prompt: " << prompt.size() << " tokens, "
              << (a.temperature == 0.0 ? std::string("greedy") : "temperature " + std::to_string(a.temperature))
              << "\n";
    std::vector<double> seconds;
    std::vector<int64_t> out;
    double prompt_ms = 0.0;
    for (int64_t r = 0; r < a.repeat; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      out = decode(model, o, prompt, a, &prompt_ms);
      seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(seconds.begin(), seconds.end());
    const double s = seconds[seconds.size() / 2];
    std::cout << "tokens:";
    for (int64_t t : out) std::cout << ' ' << t;
    std::cout << "\n";
    if (o.num_tokens() == 256) {  // a byte-level model: the text, unprintable bytes as '.'
      std::string text;
      for (int64_t t : out) text += (t == '\n' || (t >= 32 && t < 127)) ? static_cast<char>(t) : '.';
      std::cout << "text: " << text << "\n";
    }
    std::printf("generated %zu tokens in %.3f s: %.1f tokens/s (prompt step %.2f ms; median of %lld)\n", out.size(), s,
                s > 0 ? out.size() / s : 0.0, prompt_ms, static_cast<long long>(a.repeat));
    return 0;
  } catch (const c10::Error& e) {
    std::cerr << "arwrap-deploy: error: " << e.what_without_backtrace() << "\n";
  } catch (const std::exception& e) {
    std::cerr << "arwrap-deploy: error: " << e.what() << "\n";
  }
  return 1;
}

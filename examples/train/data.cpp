// arwrap-train's data and small helpers: see data.h.
#include "data.h"

#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <unistd.h>
#include <vector>

namespace train {

int64_t Data::train_size() const {
  int64_t n = 0;
  for (const auto& s : train_segments) n += s.count;
  return n;
}
int64_t Data::val_size() const {
  int64_t n = 0;
  for (const auto& s : val_segments) n += s.count;
  return n;
}

namespace {

std::string size_text(int64_t n, const char* unit) {
  std::ostringstream s;
  s.precision(3);
  if (unit[0] == 'b') s << (n >= 1'000'000 ? n / 1e6 : n / 1e3) << (n >= 1'000'000 ? " MB" : " kB");
  else s << (n >= 1'000'000 ? n / 1e6 : n / 1e3) << (n >= 1'000'000 ? " M tokens" : " k tokens");
  return s.str();
}

// The token files of --data: the validation shards (*_val_*, val.bin) for validation, the others
// for training; without validation shards, the last 10% of all the tokens.
void load_tokens(Data& d, Args& a, int64_t num_tokens, bool num_tokens_known) {
  std::vector<bool> is_val;
  d.files = open_token_files(a.data, a.token_dtype == "uint32" ? 4 : 2, is_val);
  d.tokens = true;
  int64_t total = 0;
  for (const auto& f : d.files) total += f->count;
  std::string max_file;
  int64_t max_id = -1;
  for (const auto& f : d.files) {
    const int64_t m = f->max_id();
    if (m > max_id) max_id = m, max_file = f->path;
  }
  if (!num_tokens_known)
    fail("token data needs --num-tokens N, the vocabulary size (the largest id in " + a.data + " is " +
         std::to_string(max_id) + ", in " + max_file + ")");
  if (max_id >= num_tokens)
    fail("token file " + max_file + " holds id " + std::to_string(max_id) + ", outside the vocabulary (--num-tokens " +
         std::to_string(num_tokens) + ")");
  const bool named_val = std::find(is_val.begin(), is_val.end(), true) != is_val.end();
  if (named_val) {
    for (size_t i = 0; i < d.files.size(); ++i)
      (is_val[i] ? d.val_segments : d.train_segments).push_back({d.files[i]->tokens, d.files[i]->width, d.files[i]->count});
  } else {
    int64_t left = total * 9 / 10;  // train tokens still to place
    for (const auto& f : d.files) {
      const int64_t t = std::min(left, f->count);
      if (t > 0) d.train_segments.push_back({f->tokens, f->width, t});
      if (t < f->count) d.val_segments.push_back({f->tokens + t * f->width, f->width, f->count - t});
      left -= t;
    }
  }
  int64_t val_files = 0;
  for (bool v : is_val) val_files += v;
  std::ostringstream s;
  s << size_text(total, "tokens") << " in " << d.files.size() << (d.files.size() == 1 ? " file" : " files") << " of "
    << a.data << " (largest id " << max_id << ", memory-mapped)"
    << (named_val ? ", validation: the " + std::to_string(val_files) + " shard" + (val_files == 1 ? "" : "s") +
                        " named *val*"
                  : std::string(", validation: the last 10%"));
  d.source = s.str();
}

}  // namespace

Data load_data(Args& a, int64_t seq_len, int64_t num_tokens, bool num_tokens_known) {
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
  if (is_token_corpus(a.data)) {
    load_tokens(d, a, num_tokens, num_tokens_known);
  } else {
    d.corpus = arwrap::read_corpus(a.data, suffix, static_cast<size_t>(a.max_bytes));
    const auto* p = reinterpret_cast<const unsigned char*>(d.corpus.bytes.data());
    const int64_t n = static_cast<int64_t>(d.corpus.bytes.size()), t = static_cast<int64_t>(d.corpus.train_size());
    d.train_segments.push_back({p, 1, t});
    d.val_segments.push_back({p + t, 1, n - t});
    if (num_tokens < 256) {
      const int64_t top = *std::max_element(p, p + n);
      if (top >= num_tokens)
        fail("--data " + a.data + " holds the byte " + std::to_string(top) + ", outside the vocabulary (--num-tokens " +
             std::to_string(num_tokens) + "); text needs --num-tokens 256 or more");
    }
    std::ostringstream s;
    s << size_text(n, "bytes") << " from " << d.corpus.files << (d.corpus.files == 1 ? " file" : " files") << " of "
      << a.data << (suffix.empty() ? "" : " (*" + suffix + ")") << (d.corpus.truncated ? " (cut at --max-bytes)" : "");
    d.source = s.str();
  }
  {  // the checkpoint records an absolute path, so --resume works from any directory
    std::error_code ec;
    const auto abs = std::filesystem::absolute(a.data, ec);
    if (!ec) a.data = abs.lexically_normal().string();
  }
  // train windows need seq_len + 1 ids and a choice of start; validation at least one window
  int64_t starts = 0, val_windows = 0;
  for (const auto& s : d.train_segments) starts += std::max<int64_t>(0, s.count - seq_len);
  for (const auto& s : d.val_segments) val_windows += s.count / (seq_len + 1);
  if (starts < 2 || val_windows < 1) {
    const int64_t n = d.train_size() + d.val_size(), need = (seq_len + 2) * 10;
    const std::string u = d.unit();
    fail("--seq-len " + std::to_string(seq_len) + " is too long for the data: " + std::to_string(n) + " " + u +
         " give " + std::to_string(d.train_size()) + " train / " + std::to_string(d.val_size()) + " validation " + u +
         ", and a window needs " + std::to_string(seq_len + 1) + " (about " + std::to_string(need) + " " + u +
         " of data); use a shorter --seq-len or more data");
  }
  return d;
}

at::Tensor segment_tensor(const Segment& s, int64_t at, int64_t n) {
  auto t = torch::empty({n}, torch::kLong);
  auto* out = t.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) out[i] = s.at(at + i);
  return t;
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

// batch random windows of seq_len + 1 ids from the train split: each start drawn uniformly over
// every start of every train segment (one draw a window: with one segment, the text runs' draws)
at::Tensor random_batch(const Data& d, int64_t seq_len, int64_t batch, std::mt19937_64& rng) {
  int64_t starts = 0;
  for (const auto& s : d.train_segments) starts += std::max<int64_t>(0, s.count - seq_len);
  std::uniform_int_distribution<int64_t> start(0, starts - 1);
  std::vector<at::Tensor> rows;
  for (int64_t i = 0; i < batch; ++i) {
    int64_t at = start(rng);
    for (const auto& s : d.train_segments) {
      const int64_t n = std::max<int64_t>(0, s.count - seq_len);
      if (at < n) {
        rows.push_back(segment_tensor(s, at, seq_len + 1));
        break;
      }
      at -= n;
    }
  }
  return torch::stack(rows);
}

// Mean loss over every target of the first `windows` non-overlapping (seq_len + 1)-id windows
// of the validation split (segment by segment; fewer when the split is shorter), in batches.
std::pair<double, int64_t> validation_loss(arwrap::ARWrapper& model, const Data& d, int64_t seq_len, int64_t windows,
                                           int64_t batch) {
  std::vector<at::Tensor> rows;
  for (const auto& s : d.val_segments)
    for (int64_t w = 0; w < s.count / (seq_len + 1) && static_cast<int64_t>(rows.size()) < windows; ++w)
      rows.push_back(segment_tensor(s, w * (seq_len + 1), seq_len + 1));
  const int64_t count = static_cast<int64_t>(rows.size());
  torch::NoGradGuard no_grad;
  const bool was_training = model->is_training();
  model->eval();
  double sum = 0;
  for (int64_t i = 0; i < count; i += batch) {
    const int64_t b = std::min(batch, count - i);
    auto x = torch::stack(std::vector<at::Tensor>(rows.begin() + i, rows.begin() + i + b));
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

at::Tensor generate_ids(arwrap::TransformerWrapper& net, const at::Tensor& prompt, int64_t len, double temperature,
                        int64_t seed) {
  const bool was_training = net->is_training();
  net->eval();
  auto gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(seed));
  auto out = net->generate(prompt, len, arwrap::GenerateOptions().temperature(temperature), gen);
  net->train(was_training);
  return out;
}

std::string generate_text(arwrap::TransformerWrapper& net, const std::string& prompt, int64_t len, double temperature,
                          int64_t seed) {
  auto out = generate_ids(net, bytes_to_tensor(prompt.data(), static_cast<int64_t>(prompt.size())), len, temperature,
                          seed);
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

}  // namespace train

// arwrap-train's data and small helpers: see data.h.
#include "data.h"

#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>

#include <cstdio>
#include <filesystem>
#include <sstream>
#include <unistd.h>
#include <vector>

namespace train {

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

// arwrap-train's data and small helpers: the corpus split into train and validation, the
// random training windows, the validation loss, samples, and what the progress lines show.
#pragma once

#include "flags.h"

#include <arwrap/arwrap.h>
#include <arwrap/corpus.h>

#include <cstdint>
#include <random>
#include <string>
#include <utility>

namespace train {

struct Data {
  arwrap::Corpus corpus;
  std::string source;
  const char* train() const { return corpus.bytes.data(); }
  int64_t train_size() const { return static_cast<int64_t>(corpus.train_size()); }
  const char* val() const { return corpus.bytes.data() + corpus.train_size(); }
  int64_t val_size() const { return static_cast<int64_t>(corpus.bytes.size() - corpus.train_size()); }
};

// Reads --data (or finds the standard library), records an absolute path in a.data, and
// checks a window of seq_len + 1 bytes fits in both splits.
Data load_data(Args& a, int64_t seq_len);

// Bytes as int64 token ids.
at::Tensor bytes_to_tensor(const char* p, int64_t n);
// The random stream of (seed, step, stream): each step's windows, reproducible on resume.
std::mt19937_64 rng_for(int64_t seed, int64_t step, int64_t stream);
// batch random windows of seq_len + 1 bytes from the train split
at::Tensor random_batch(const Data& d, int64_t seq_len, int64_t batch, std::mt19937_64& rng);
// Mean loss over every target of the first `windows` non-overlapping (seq_len + 1)-byte
// windows of the validation split, and how many windows that was.
std::pair<double, int64_t> validation_loss(arwrap::ARWrapper& model, const Data& d, int64_t seq_len, int64_t windows,
                                           int64_t batch);
// len bytes generated after prompt (eval mode, seeded).
std::string generate_text(arwrap::TransformerWrapper& net, const std::string& prompt, int64_t len, double temperature,
                          int64_t seed);
// s with control bytes shown as '?' (and, quoted, newlines and quotes escaped).
std::string printable(const std::string& s, bool quote);
// "1h02m", "3m05s", "42s"
std::string duration(double s);
// Resident memory of this process in MB (0 where unavailable).
double resident_mb();

}  // namespace train

// arwrap-train's data and small helpers: the corpus split into train and validation, the
// random training windows, the validation loss, samples, and what the progress lines show.
#pragma once

#include "flags.h"
#include "tokens.h"

#include <arwrap/arwrap.h>
#include <arwrap/corpus.h>

#include <cstdint>
#include <memory>
#include <vector>
#include <random>
#include <string>
#include <utility>

namespace train {

// A run of token ids: text bytes (width 1) or a memory-mapped token file's (2 or 4).
struct Segment {
  const unsigned char* p = nullptr;
  int width = 1;
  int64_t count = 0;
  int64_t at(int64_t i) const { return token_at(p, width, i); }
};

struct Data {
  arwrap::Corpus corpus;                          // text: the bytes
  std::vector<std::unique_ptr<TokenFile>> files;  // token files: their maps
  std::vector<Segment> train_segments, val_segments;
  bool tokens = false;  // a token corpus (ids), not text (bytes)
  std::string source;
  const char* unit() const { return tokens ? "tokens" : "bytes"; }
  // text only: the bytes of each split
  const char* val() const { return corpus.bytes.data() + corpus.train_size(); }
  int64_t train_size() const;
  int64_t val_size() const;
};

// Reads --data (or finds the standard library), records an absolute path in a.data, and
// checks a window of seq_len + 1 ids fits in both splits and every id is < num_tokens
// (a token corpus needs num_tokens_known: --num-tokens or a checkpoint's).
Data load_data(Args& a, int64_t seq_len, int64_t num_tokens, bool num_tokens_known);

// ids [at, at + n) of a segment as int64
at::Tensor segment_tensor(const Segment& s, int64_t at, int64_t n);
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
// len ids generated after prompt, a 1-D int64 tensor (eval mode, seeded).
at::Tensor generate_ids(arwrap::TransformerWrapper& net, const at::Tensor& prompt, int64_t len, double temperature,
                        int64_t seed);
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

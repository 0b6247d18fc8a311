// Token corpora for arwrap-train: files of token ids, memory-mapped (never read whole).
//   llm.c shards: a header of 256 int32 (magic 20240520 and version 1: uint16 tokens, GPT-2's;
//   magic 20240801 and version 7: uint32, Llama 3's; [2] the token count), then the tokens.
//   nanoGPT's raw train.bin / val.bin: the tokens alone, uint16 (or uint32: --token-dtype uint32).
// --data is a token corpus when it names a *.bin file, a glob (* ? [) of them, or a directory
// holding llm.c shards or a train.bin; the validation split is the shards named *_val_* (llm.c) or
// val.bin (nanoGPT), else the last 10% of the tokens.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace train {

// Token i of a run of `width`-byte ids (1: text bytes, 2: uint16, 4: uint32), read unaligned.
inline int64_t token_at(const unsigned char* p, int width, int64_t i) {
  if (width == 1) return p[i];
  if (width == 2) {
    uint16_t v;
    __builtin_memcpy(&v, p + 2 * i, 2);
    return v;
  }
  uint32_t v;
  __builtin_memcpy(&v, p + 4 * i, 4);
  return v;
}

// A read-only memory map of one file's tokens.
struct TokenFile {
  std::string path;
  const unsigned char* tokens = nullptr;  // the first token
  int64_t count = 0;                      // tokens in the file
  int width = 2;                          // bytes per token: 2 (uint16) or 4 (uint32)
  void* map = nullptr;
  size_t map_size = 0;
  TokenFile() = default;
  TokenFile(const TokenFile&) = delete;
  TokenFile& operator=(const TokenFile&) = delete;
  ~TokenFile();
  int64_t at(int64_t i) const { return token_at(tokens, width, i); }
  int64_t max_id() const;  // a pass over the map
};

// True when `data` names token files (see above).
bool is_token_corpus(const std::string& data);
// The files `data` names, each checked (magic, version, size against the header's count): a bad
// one is a one-line std::runtime_error naming the file and what is wrong. `raw_width` is the
// width of files without an llm.c header. `val` gets the validation shards' indices.
std::vector<std::unique_ptr<TokenFile>> open_token_files(const std::string& data, int raw_width,
                                                         std::vector<bool>& is_val);

}  // namespace train

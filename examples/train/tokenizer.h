// A reader of Hugging Face `tokenizers` JSON for byte-level BPE, the kind `python -m arwrap_cpp.data
// prepare` writes (and GPT-2's tokenizer.json), so arwrap-train prints samples of a token model as
// text and takes text prompts (--tokenizer). No dependency: the JSON parser is ours (tokenizer.cpp).
//
// What it reads, and refuses with a one-line error naming the file and what it found otherwise:
//   model            type "BPE"; vocab {token: id}; merges ["a b", ...] or [["a", "b"], ...]
//                    (tokenizers >= 0.20 writes pairs); ignore_merges, unk_token, fuse_unk;
//                    no dropout, continuing_subword_prefix or end_of_word_suffix
//   added_tokens     [{id, content, special, normalized}, ...] (lstrip, rstrip and single_word are not applied)
//   pre_tokenizer    ByteLevel (add_prefix_space, use_regex)
//   decoder          ByteLevel
//   normalizer       null;  post_processor: null or ByteLevel (it only moves offsets)
//
// decode: each token's characters mapped back through GPT-2's bytes_to_unicode table, as the
// ByteLevel decoder does (a token holding a character outside the table, e.g. an added token with a
// space in it, stands for its own UTF-8 bytes); special tokens are kept (skip_special_tokens=False).
// The bytes may be invalid UTF-8 (a cut character): utf8_lossy() makes them printable.
//
// encode: the added tokens are split out first (leftmost, longest), then ByteLevel pre-tokenization
// with GPT-2's pattern
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// matched by hand, then BPE by merge rank on each pre-token's byte-level characters.
// The character classes are exact for ASCII, and \s is Unicode's White_Space set. For the other
// code points \p{L} / \p{N} come from a small table (tokenizer.cpp) that agrees with tokenizers on
// every assigned code point of U+0080..U+06FF (Latin, IPA, Greek, Cyrillic, Armenian, Hebrew,
// Arabic), Devanagari, Thai, U+2000..U+2BFF (punctuation, super- and subscripts, currency,
// letterlike, number forms, arrows, mathematical, technical, box, shapes, dingbats), CJK symbols,
// kana and ideographs, Hangul syllables, U+FE00..U+FFFF (presentation and fullwidth forms,
// specials) and the emoji and symbol planes U+1F000..U+1FBFF (tests/integration/
// test_trainer_tokenizer.py checks them, the large blocks in part). Everywhere else a non-ASCII
// code point counts as a letter: an approximation, so combining marks, digits and punctuation of
// other scripts (Syriac, Bengali, Tibetan, Myanmar, Ethiopic, ...) and unassigned code points may
// split differently from tokenizers' there. Invalid UTF-8 counts as "other", one maximal invalid
// sequence at a time (as its U+FFFD would).
// Whatever the split, every byte becomes tokens: decode(encode(t)) == t for any bytes t (unless an
// added token's content, matched in the text, decodes to other bytes: an added "é" is the byte-level
// character of byte 0xE9, in tokenizers too).
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace train {

class Tokenizer {
 public:
  // Reads and checks `path`; a problem is a one-line std::runtime_error "tokenizer PATH: ...".
  static Tokenizer load(const std::string& path);

  std::vector<int64_t> encode(const std::string& text) const;
  // The bytes of ids. An id the tokenizer does not have is an error, or with strict = false is
  // shown as "<unknown id N>" (a model with more ids than its tokenizer can sample one).
  std::string decode(const std::vector<int64_t>& ids, bool strict = true) const;

  const std::string& path() const { return path_; }
  int64_t vocab_size() const { return static_cast<int64_t>(bytes_.size()); }  // the largest id + 1
  int64_t merges() const { return static_cast<int64_t>(merge_.size()); }
  int64_t added() const { return added_count_; }

 private:
  struct Merge {
    int32_t rank, id;  // the merge's rank (lower merges first) and the merged token's id
  };
  struct Added {
    std::string content;
    int32_t id;
    bool normalized;
  };
  void bpe(const std::string& word, std::vector<int64_t>& out) const;
  void pre_tokenize(const std::string& piece, std::vector<int64_t>& out) const;

  std::string path_;
  std::vector<std::string> bytes_;  // id -> its bytes (decode)
  std::vector<bool> known_;         // id -> the tokenizer has it
  std::unordered_map<std::string, int32_t> vocab_;  // byte-level token string -> id
  std::unordered_map<uint64_t, Merge> merge_;       // (left id << 32 | right id) -> merge
  std::vector<Added> added_;                        // longest content first
  int64_t added_count_ = 0;
  int32_t byte_id_[256];  // the id of each byte's byte-level character, -1 if not in the vocabulary
  int32_t unk_ = -1;
  bool fuse_unk_ = false, ignore_merges_ = false, prefix_space_ = false, use_regex_ = true;
};

// bytes as valid UTF-8: each invalid sequence becomes U+FFFD (as Python's errors="replace" and
// tokenizers' decode do).
std::string utf8_lossy(const std::string& bytes);

}  // namespace train

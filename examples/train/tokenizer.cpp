// A byte-level BPE tokenizer read from a `tokenizers` JSON: see tokenizer.h.
#include "tokenizer.h"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <utility>

namespace train {

namespace {

// ------------------------------------------------------------------ UTF-8

// The code point at s[i] and its length in bytes; -1 for invalid UTF-8, with len the length of the
// maximal subpart (the bytes one U+FFFD replaces, as Unicode recommends and Python and Rust do).
int32_t utf8_next(const std::string& s, size_t i, size_t& len) {
  const auto at = [&](size_t k) { return k < s.size() ? static_cast<unsigned char>(s[k]) : 0x100u; };
  const unsigned c = at(i);
  len = 1;
  if (c < 0x80) return static_cast<int32_t>(c);
  int need;
  unsigned lo = 0x80, hi = 0xBF;
  int32_t cp;
  if (c >= 0xC2 && c <= 0xDF) {
    need = 1, cp = c & 0x1F;
  } else if (c >= 0xE0 && c <= 0xEF) {
    need = 2, cp = c & 0x0F;
    if (c == 0xE0) lo = 0xA0;  // no overlong forms
    if (c == 0xED) hi = 0x9F;  // no surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    need = 3, cp = c & 0x07;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    return -1;
  }
  for (int k = 0; k < need; ++k, lo = 0x80, hi = 0xBF) {
    const unsigned d = at(i + 1 + k);
    if (d < lo || d > hi) return -1;
    cp = cp << 6 | static_cast<int32_t>(d & 0x3F);
    ++len;
  }
  return cp;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | cp >> 6);
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | cp >> 12);
    out += static_cast<char>(0x80 | (cp >> 6 & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | cp >> 18);
    out += static_cast<char>(0x80 | (cp >> 12 & 0x3F));
    out += static_cast<char>(0x80 | (cp >> 6 & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// ------------------------------------------------------------------ GPT-2's bytes_to_unicode

// Byte b is the character kByteChar[b]: the printable bytes ! .. ~, ¡ .. ¬, ® .. ÿ are themselves,
// the other 68 (controls, space, DEL, NBSP, soft hyphen) U+0100 .. U+0143 in byte order.
struct ByteTable {
  uint32_t chr[256];
  int16_t byte[0x144];  // a character < U+0144 -> its byte, or -1
  std::string utf8[256];
  ByteTable() {
    std::fill(std::begin(byte), std::end(byte), -1);
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      chr[b] = printable ? static_cast<uint32_t>(b) : next++;
      byte[chr[b]] = static_cast<int16_t>(b);
      append_utf8(utf8[b], chr[b]);
    }
  }
};
const ByteTable& byte_table() {
  static const ByteTable t;
  return t;
}

// The bytes a token stands for, as the ByteLevel decoder reads it: every character mapped back
// through the table, or, when one of them is not in it, the token's own UTF-8 bytes.
std::string token_bytes(const std::string& token) {
  const ByteTable& t = byte_table();
  std::string out;
  for (size_t i = 0, len = 0; i < token.size(); i += len) {
    const int32_t cp = utf8_next(token, i, len);
    if (cp < 0 || cp >= 0x144 || t.byte[cp] < 0) return token;
    out += static_cast<char>(t.byte[cp]);
  }
  return out;
}

// ------------------------------------------------------------------ character classes

// The classes of GPT-2's pattern: \s, \p{L}, \p{N}, and the rest ([^\s\p{L}\p{N}]).
enum Class : uint8_t { L, N, S, O };

// The non-ASCII code points that are not letters (tokenizer.h says where this table is exact).
// Derived from tokenizers' own ByteLevel pre-tokenizer (0.23.3), probed code point by code point.
struct Range {
  uint32_t first, last;
  Class cls;
};
constexpr Range kRanges[] = {
    {0x0080, 0x0084, O}, {0x0085, 0x0085, S}, {0x0086, 0x009F, O}, {0x00A0, 0x00A0, S}, {0x00A1, 0x00A9, O},
    {0x00AB, 0x00B1, O}, {0x00B2, 0x00B3, N}, {0x00B4, 0x00B4, O}, {0x00B6, 0x00B8, O}, {0x00B9, 0x00B9, N},
    {0x00BB, 0x00BB, O}, {0x00BC, 0x00BE, N}, {0x00BF, 0x00BF, O}, {0x00D7, 0x00D7, O}, {0x00F7, 0x00F7, O},
    {0x02C2, 0x02C5, O}, {0x02D2, 0x02DF, O}, {0x02E5, 0x02EB, O}, {0x02ED, 0x02ED, O}, {0x02EF, 0x036F, O},
    {0x0375, 0x0375, O}, {0x0378, 0x0379, O}, {0x037E, 0x037E, O}, {0x0380, 0x0385, O}, {0x0387, 0x0387, O},
    {0x038B, 0x038B, O}, {0x038D, 0x038D, O}, {0x03A2, 0x03A2, O}, {0x03F6, 0x03F6, O}, {0x0482, 0x0489, O},
    {0x055A, 0x055F, O}, {0x0589, 0x058A, O}, {0x058D, 0x058F, O}, {0x0591, 0x05C7, O}, {0x05F3, 0x05F4, O},
    {0x0600, 0x061F, O}, {0x064B, 0x065F, O}, {0x0660, 0x0669, N}, {0x066A, 0x066D, O}, {0x0670, 0x0670, O},
    {0x06D4, 0x06D4, O}, {0x06D6, 0x06E4, O}, {0x06E7, 0x06ED, O}, {0x06F0, 0x06F9, N}, {0x06FD, 0x06FE, O},
    {0x0900, 0x0903, O}, {0x093A, 0x093C, O}, {0x093E, 0x094F, O}, {0x0951, 0x0957, O}, {0x0962, 0x0965, O},
    {0x0966, 0x096F, N}, {0x0970, 0x0970, O}, {0x09E6, 0x09EF, N}, {0x0E31, 0x0E31, O}, {0x0E34, 0x0E3A, O},
    {0x0E3F, 0x0E3F, O}, {0x0E47, 0x0E4F, O}, {0x0E50, 0x0E59, N}, {0x0E5A, 0x0E5B, O}, {0x1680, 0x1680, S},
    {0x2000, 0x200A, S}, {0x200B, 0x2027, O}, {0x2028, 0x2029, S}, {0x202A, 0x202E, O}, {0x202F, 0x202F, S},
    {0x2030, 0x205E, O}, {0x205F, 0x205F, S}, {0x2060, 0x206F, O}, {0x2070, 0x2070, N}, {0x2072, 0x2073, O},
    {0x2074, 0x2079, N}, {0x207A, 0x207E, O}, {0x2080, 0x2089, N}, {0x208A, 0x208F, O}, {0x209D, 0x2101, O},
    {0x2103, 0x2106, O}, {0x2108, 0x2109, O}, {0x2114, 0x2114, O}, {0x2116, 0x2118, O}, {0x211E, 0x2123, O},
    {0x2125, 0x2125, O}, {0x2127, 0x2127, O}, {0x2129, 0x2129, O}, {0x212E, 0x212E, O}, {0x213A, 0x213B, O},
    {0x2140, 0x2144, O}, {0x214A, 0x214D, O}, {0x214F, 0x214F, O}, {0x2150, 0x2182, N}, {0x2185, 0x2189, N},
    {0x218A, 0x245F, O}, {0x2460, 0x249B, N}, {0x249C, 0x24E9, O}, {0x24EA, 0x24FF, N}, {0x2500, 0x2775, O},
    {0x2776, 0x2793, N}, {0x2794, 0x2BFF, O}, {0x2E00, 0x2E7F, O}, {0x3000, 0x3000, S}, {0x3001, 0x3004, O},
    {0x3007, 0x3007, N}, {0x3008, 0x3020, O}, {0x3021, 0x3029, N}, {0x302A, 0x3030, O}, {0x3036, 0x3037, O},
    {0x3038, 0x303A, N}, {0x303D, 0x3040, O}, {0x3097, 0x309C, O}, {0x30A0, 0x30A0, O}, {0x30FB, 0x30FB, O},
    {0x3100, 0x3104, O}, {0x3130, 0x3130, O}, {0x318F, 0x3191, O}, {0x3192, 0x3195, N}, {0x3196, 0x319F, O},
    {0x31C0, 0x31EF, O}, {0x3200, 0x321F, O}, {0x3220, 0x3229, N}, {0x322A, 0x3247, O}, {0x3248, 0x324F, N},
    {0x3250, 0x3250, O}, {0x3251, 0x325F, N}, {0x3260, 0x327F, O}, {0x3280, 0x3289, N}, {0x328A, 0x32B0, O},
    {0x32B1, 0x32BF, N}, {0x32C0, 0x33FF, O}, {0x4DC0, 0x4DFF, O}, {0xE000, 0xF8FF, O}, {0xFE00, 0xFE6F, O},
    {0xFE75, 0xFE75, O}, {0xFEFD, 0xFF0F, O}, {0xFF10, 0xFF19, N}, {0xFF1A, 0xFF20, O}, {0xFF3B, 0xFF40, O},
    {0xFF5B, 0xFF65, O}, {0xFFBF, 0xFFC1, O}, {0xFFC8, 0xFFC9, O}, {0xFFD0, 0xFFD1, O}, {0xFFD8, 0xFFD9, O},
    {0xFFDD, 0xFFFF, O}, {0x1F000, 0x1F0FF, O}, {0x1F100, 0x1F10C, N}, {0x1F10D, 0x1FBEF, O}, {0x1FBF0, 0x1FBF9, N},
    {0x1FBFA, 0x1FFFF, O}, {0xE0000, 0xE0FFF, O}, {0xF0000, 0x10FFFF, O},
};

Class class_of(int32_t cp) {
  if (cp < 0) return O;  // an invalid byte, as U+FFFD
  if (cp < 0x80) {
    if (cp == ' ' || (cp >= '\t' && cp <= '\r')) return S;
    if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z')) return L;
    if (cp >= '0' && cp <= '9') return N;
    return O;
  }
  const auto* end = std::end(kRanges);
  const auto* r = std::upper_bound(std::begin(kRanges), end, static_cast<uint32_t>(cp),
                                   [](uint32_t c, const Range& x) { return c < x.first; });
  if (r != std::begin(kRanges) && static_cast<uint32_t>(cp) <= (r - 1)->last) return (r - 1)->cls;
  return L;
}

// ------------------------------------------------------------------ JSON

// A JSON value: just what a tokenizers file needs.
struct Json {
  enum Kind { kNull, kBool, kNumber, kString, kArray, kObject } kind = kNull;
  bool boolean = false;
  double number = 0;
  std::string text;                                   // a string
  std::vector<Json> items;                            // an array
  std::vector<std::pair<std::string, Json>> members;  // an object, in file order

  const Json* get(const std::string& key) const {
    if (kind != kObject) return nullptr;
    for (const auto& [k, v] : members)
      if (k == key) return &v;
    return nullptr;
  }
};

const char* kind_name(Json::Kind k) {
  static const char* const names[] = {"null", "a boolean", "a number", "a string", "an array", "an object"};
  return names[k];
}

class JsonParser {
 public:
  JsonParser(const std::string& s, const std::string& path) : s_(s), path_(path) {}

  Json document() {
    Json v = value(0);
    space();
    if (i_ != s_.size()) fail("more text after the JSON value");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error("tokenizer " + path_ + " is not JSON: " + what + " at byte " + std::to_string(i_) +
                             (i_ >= s_.size() ? ", the end of the file (cut short?)" : ""));
  }
  void space() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\r' || s_[i_] == '\t')) ++i_;
  }
  bool literal(const char* word) {
    const size_t n = std::strlen(word);
    if (s_.compare(i_, n, word) != 0) return false;
    i_ += n;
    return true;
  }
  void expect(char c) {
    space();
    if (i_ >= s_.size() || s_[i_] != c) fail(std::string("expected '") + c + "'");
    ++i_;
  }

  Json value(int depth) {
    if (depth > 64) fail("nested deeper than 64 levels");  // a tokenizers file nests about 4 deep
    space();
    if (i_ >= s_.size()) fail("expected a value");
    Json v;
    const char c = s_[i_];
    if (c == '{') {
      v.kind = Json::kObject;
      ++i_;
      space();
      if (i_ < s_.size() && s_[i_] == '}') return ++i_, v;
      for (;;) {
        space();
        if (i_ >= s_.size() || s_[i_] != '"') fail("expected a string key");
        std::string key = string();
        expect(':');
        v.members.emplace_back(std::move(key), value(depth + 1));
        space();
        if (i_ < s_.size() && s_[i_] == ',') {
          ++i_;
          continue;
        }
        expect('}');
        return v;
      }
    }
    if (c == '[') {
      v.kind = Json::kArray;
      ++i_;
      space();
      if (i_ < s_.size() && s_[i_] == ']') return ++i_, v;
      for (;;) {
        v.items.push_back(value(depth + 1));
        space();
        if (i_ < s_.size() && s_[i_] == ',') {
          ++i_;
          continue;
        }
        expect(']');
        return v;
      }
    }
    if (c == '"') {
      v.kind = Json::kString;
      v.text = string();
      return v;
    }
    if (literal("true") || literal("false")) {
      v.kind = Json::kBool;
      v.boolean = s_[i_ - 1] == 'e' && s_[i_ - 4] == 't';
      return v;
    }
    if (literal("null")) return v;
    if (c == '-' || (c >= '0' && c <= '9')) return number();
    fail(std::string("unexpected ") + (c >= 32 && c < 127 ? std::string("'") + c + "'" : "byte"));
  }

  // -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
  Json number() {
    const size_t start = i_;
    const auto digits = [&] {
      const size_t from = i_;
      while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
      return i_ > from;
    };
    if (s_[i_] == '-') ++i_;
    if (i_ < s_.size() && s_[i_] == '0') ++i_;
    else if (!digits()) fail("a malformed number");
    if (i_ < s_.size() && s_[i_] == '.' && (++i_, !digits())) fail("a malformed number");
    if (i_ < s_.size() && (s_[i_] == 'e' || s_[i_] == 'E')) {
      ++i_;
      if (i_ < s_.size() && (s_[i_] == '+' || s_[i_] == '-')) ++i_;
      if (!digits()) fail("a malformed number");
    }
    Json v;
    v.kind = Json::kNumber;
    v.number = std::strtod(s_.substr(start, i_ - start).c_str(), nullptr);
    return v;
  }

  uint32_t hex4() {
    if (i_ + 4 > s_.size()) fail("a truncated \\u escape");
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k, ++i_) {
      const char h = s_[i_];
      const int d = h >= '0' && h <= '9'   ? h - '0'
                    : h >= 'a' && h <= 'f' ? h - 'a' + 10
                    : h >= 'A' && h <= 'F' ? h - 'A' + 10
                                           : -1;
      if (d < 0) fail("a \\u escape with a non-hex digit");
      v = v << 4 | static_cast<uint32_t>(d);
    }
    return v;
  }

  std::string string() {
    ++i_;  // the opening quote
    std::string out;
    for (;;) {
      if (i_ >= s_.size()) fail("a string that does not end");
      const unsigned char c = static_cast<unsigned char>(s_[i_]);
      if (c == '"') {
        ++i_;
        return out;
      }
      if (c < 0x20) fail("a control character inside a string");
      if (c != '\\') {
        out += static_cast<char>(c);
        ++i_;
        continue;
      }
      if (++i_ >= s_.size()) fail("a string that does not end");
      const char e = s_[i_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t cp = hex4();
          if (cp >= 0xDC00 && cp <= 0xDFFF) fail("a lone low surrogate in a \\u escape");
          if (cp >= 0xD800 && cp <= 0xDBFF) {  // a surrogate pair: \uD83D\uDE00
            if (s_.compare(i_, 2, "\\u") != 0) fail("a high surrogate without its low half");
            i_ += 2;
            const uint32_t low = hex4();
            if (low < 0xDC00 || low > 0xDFFF) fail("a high surrogate without its low half");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          }
          append_utf8(out, cp);
          break;
        }
        default:
          --i_;
          fail(std::string("an unknown escape '\\") + e + "'");
      }
    }
  }

  const std::string& s_;
  const std::string& path_;
  size_t i_ = 0;
};

// ------------------------------------------------------------------ GPT-2's pattern

// The end (a byte offset) of the pattern's match at byte i of s, which is never empty:
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// tried in that order, as the regex engine does. `cls` and `len` are per byte: the class and length
// of the character that starts there (only the first byte of each character is read).
size_t match_end(const std::string& s, size_t i, const std::vector<Class>& cls, const std::vector<uint8_t>& len) {
  const size_t n = s.size();
  if (s[i] == '\'' && i + 1 < n) {
    const char a = s[i + 1], b = i + 2 < n ? s[i + 2] : '\0';
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
  }
  const size_t start = s[i] == ' ' && i + 1 < n ? i + 1 : i;  // the optional space
  const Class c = cls[start];
  if (c != S) {  // a run of letters, numbers or other characters
    size_t j = start;
    while (j < n && cls[j] == c) j += len[j];
    return j;
  }
  size_t j = i;  // whitespace: all of it at the end, else all but the last character (\s+(?!\S))
  size_t last = i;
  while (j < n && cls[j] == S) last = j, j += len[j];
  if (j < n && last > i) return last;
  return j;
}

[[noreturn]] void bad(const std::string& path, const std::string& what) {
  throw std::runtime_error("tokenizer " + path + ": " + what);
}

}  // namespace

// ------------------------------------------------------------------ Tokenizer

std::string utf8_lossy(const std::string& bytes) {
  std::string out;
  for (size_t i = 0, len = 0; i < bytes.size(); i += len) {
    if (utf8_next(bytes, i, len) < 0) out += "\xEF\xBF\xBD";  // U+FFFD
    else out.append(bytes, i, len);
  }
  return out;
}

Tokenizer Tokenizer::load(const std::string& path) {
  const auto fail = [&](const std::string& what) { bad(path, what); };
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) throw std::runtime_error("tokenizer " + path + " does not exist");
  if (std::filesystem::is_directory(path, ec))
    fail("is a directory (give the JSON file, e.g. " + (std::filesystem::path(path) / "tokenizer.json").string() + ")");
  std::string text;
  {
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (f == nullptr) fail(std::string("cannot read it: ") + std::strerror(errno));
    char buf[1 << 16];
    for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) text.append(buf, n);
    std::fclose(f);
  }
  const Json doc = JsonParser(text, path).document();
  const Json* model = doc.get("model");
  if (model == nullptr || model->kind != Json::kObject)
    fail("not a tokenizers JSON (no \"model\" object at the top level)");

  // what a field holds, for the errors: its type, or its kind
  const auto what = [](const Json* v) -> std::string {
    if (v == nullptr) return "missing";
    if (const Json* t = v->get("type"); t != nullptr && t->kind == Json::kString) return t->text;
    return kind_name(v->kind);
  };
  const auto text_of = [](const Json* v) { return v != nullptr && v->kind == Json::kString ? v->text : std::string(); };
  const auto flag = [](const Json* obj, const char* key, bool otherwise) {
    const Json* v = obj->get(key);
    return v != nullptr && v->kind == Json::kBool ? v->boolean : otherwise;
  };
  const auto is_null = [](const Json* v) { return v == nullptr || v->kind == Json::kNull; };

  if (const Json* type = model->get("type"); type == nullptr || type->kind != Json::kString || type->text != "BPE")
    fail("model.type is " + (type != nullptr && type->kind == Json::kString ? "\"" + type->text + "\"" : what(type)) +
         "; arwrap-train reads byte-level BPE (model.type \"BPE\")");
  const Json* pre = doc.get("pre_tokenizer");
  if (what(pre) != "ByteLevel")
    fail("pre_tokenizer is " + what(pre) + "; arwrap-train reads ByteLevel (byte-level BPE)");
  if (const Json* dec = doc.get("decoder"); what(dec) != "ByteLevel")
    fail("decoder is " + what(dec) + "; arwrap-train reads ByteLevel (byte-level BPE)");
  if (const Json* norm = doc.get("normalizer"); !is_null(norm))
    fail("normalizer is " + what(norm) + "; arwrap-train applies none (it reads null)");
  if (const Json* post = doc.get("post_processor"); !is_null(post) && what(post) != "ByteLevel")
    fail("post_processor is " + what(post) + "; arwrap-train reads null or ByteLevel");
  if (const Json* d = model->get("dropout"); !is_null(d) && !(d->kind == Json::kNumber && d->number == 0))
    fail("model.dropout is set; arwrap-train encodes deterministically (dropout null)");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (!text_of(model->get(key)).empty())
      fail(std::string("model.") + key + " is set; arwrap-train reads byte-level BPE without it");

  Tokenizer t;
  t.path_ = path;
  t.prefix_space_ = flag(pre, "add_prefix_space", true);  // tokenizers' defaults
  t.use_regex_ = flag(pre, "use_regex", true);
  t.ignore_merges_ = flag(model, "ignore_merges", false);
  t.fuse_unk_ = flag(model, "fuse_unk", false);

  // an id: an integer in [0, 2^24), far above any vocabulary (the tables are indexed by id, so a
  // stray 4000000000 must not allocate them)
  const auto id_of = [&](const Json& v, const std::string& where) {
    if (v.kind != Json::kNumber || v.number != std::floor(v.number) || v.number < 0 || v.number >= 16777216.0)
      fail(where + " is not an id (an integer from 0 to 16777215)");
    return static_cast<int32_t>(v.number);
  };
  const Json* vocab = model->get("vocab");
  if (vocab == nullptr || vocab->kind != Json::kObject) fail("model.vocab is " + what(vocab) + ", not an object");
  if (vocab->members.empty()) fail("model.vocab is empty");
  const auto place = [&](int32_t id) {
    if (static_cast<size_t>(id) >= t.bytes_.size()) {
      t.bytes_.resize(static_cast<size_t>(id) + 1);
      t.known_.resize(static_cast<size_t>(id) + 1, false);
    }
  };
  std::vector<const std::string*> owner;  // id -> its token in model.vocab
  for (const auto& [token, v] : vocab->members) {
    const int32_t id = id_of(v, "model.vocab[\"" + utf8_lossy(token) + "\"]");
    place(id);
    if (owner.size() < t.bytes_.size()) owner.resize(t.bytes_.size(), nullptr);
    if (owner[id] != nullptr && *owner[id] != token)
      fail("model.vocab gives id " + std::to_string(id) + " to both \"" + utf8_lossy(*owner[id]) + "\" and \"" +
           utf8_lossy(token) + "\"");
    owner[id] = &token;
    t.vocab_[token] = id;
    t.bytes_[id] = token_bytes(token);
    t.known_[id] = true;
  }
  const ByteTable& bt = byte_table();
  for (int b = 0; b < 256; ++b) {
    const auto it = t.vocab_.find(bt.utf8[b]);
    t.byte_id_[b] = it == t.vocab_.end() ? -1 : it->second;
  }
  if (const std::string unk = text_of(model->get("unk_token")); !unk.empty()) {
    const auto it = t.vocab_.find(unk);
    if (it == t.vocab_.end()) fail("model.unk_token \"" + utf8_lossy(unk) + "\" is not in model.vocab");
    t.unk_ = it->second;
  }

  const Json* merges = model->get("merges");
  if (merges == nullptr || merges->kind != Json::kArray) fail("model.merges is " + what(merges) + ", not an array");
  for (size_t r = 0; r < merges->items.size(); ++r) {
    const Json& m = merges->items[r];
    const std::string where = "model.merges[" + std::to_string(r) + "]";
    std::string a, b;
    if (m.kind == Json::kString) {  // "a b" (tokenizers before 0.20)
      const size_t sp = m.text.find(' ');
      if (sp == std::string::npos || m.text.find(' ', sp + 1) != std::string::npos)
        fail(where + " \"" + utf8_lossy(m.text) + "\" is not two tokens separated by a space");
      a = m.text.substr(0, sp), b = m.text.substr(sp + 1);
    } else if (m.kind == Json::kArray && m.items.size() == 2 && m.items[0].kind == Json::kString &&
               m.items[1].kind == Json::kString) {  // ["a", "b"]
      a = m.items[0].text, b = m.items[1].text;
    } else {
      fail(where + " is " + std::string(kind_name(m.kind)) + ", not a pair of tokens (\"a b\" or [\"a\", \"b\"])");
    }
    int32_t ids[3];
    const std::string* parts[3] = {&a, &b, nullptr};
    const std::string ab = a + b;
    parts[2] = &ab;
    for (int k = 0; k < 3; ++k) {
      const auto it = t.vocab_.find(*parts[k]);
      if (it == t.vocab_.end())
        fail(where + " (\"" + utf8_lossy(a) + "\", \"" + utf8_lossy(b) + "\"): \"" + utf8_lossy(*parts[k]) +
             "\" is not in model.vocab");
      ids[k] = it->second;
    }
    // a pair listed twice keeps its last rank, as tokenizers' map does
    t.merge_[static_cast<uint64_t>(ids[0]) << 32 | static_cast<uint32_t>(ids[1])] = {static_cast<int32_t>(r), ids[2]};
  }

  if (const Json* added = doc.get("added_tokens"); !is_null(added)) {
    if (added->kind != Json::kArray) fail("added_tokens is " + what(added) + ", not an array");
    for (size_t k = 0; k < added->items.size(); ++k) {
      const Json& a = added->items[k];
      const std::string where = "added_tokens[" + std::to_string(k) + "]";
      const Json* content = a.get("content");
      if (a.kind != Json::kObject || a.get("id") == nullptr || content == nullptr || content->kind != Json::kString)
        fail(where + " is not an object with an \"id\" and a \"content\" string");
      const int32_t id = id_of(*a.get("id"), where + ".id");
      place(id);
      t.bytes_[id] = token_bytes(content->text);  // the decoder reads added tokens as any other
      t.known_[id] = true;
      const bool special = flag(&a, "special", false);
      if (!content->text.empty()) t.added_.push_back({content->text, id, flag(&a, "normalized", !special)});
      ++t.added_count_;
    }
    std::stable_sort(t.added_.begin(), t.added_.end(),
                     [](const Added& x, const Added& y) { return x.content.size() > y.content.size(); });
  }
  return t;
}

// BPE on one pre-token: its bytes as byte-level characters, then the lowest-ranked adjacent pair
// merged (the leftmost of equals) until no pair has a merge; the ids are appended to out.
void Tokenizer::bpe(const std::string& word, std::vector<int64_t>& out) const {
  const ByteTable& bt = byte_table();
  if (ignore_merges_) {  // a word in the vocabulary is its token
    std::string chars;
    for (unsigned char c : word) chars += bt.utf8[c];
    if (const auto it = vocab_.find(chars); it != vocab_.end()) return out.push_back(it->second);
  }
  std::vector<int32_t> ids;
  bool last_unk = false;
  for (unsigned char c : word) {
    const int32_t id = byte_id_[c];
    if (id >= 0) {
      ids.push_back(id);
      last_unk = false;
      continue;
    }
    if (unk_ < 0) {
      char hex[8];
      std::snprintf(hex, sizeof hex, "0x%02X", c);
      throw std::runtime_error("tokenizer " + path_ + ": its vocabulary has no token for byte " + hex +
                               " (nor an unk_token), so this text cannot be encoded");
    }
    if (!(fuse_unk_ && last_unk)) ids.push_back(unk_);
    last_unk = true;
  }
  while (ids.size() > 1) {
    int32_t best = INT32_MAX, merged = -1;
    size_t at = 0;
    for (size_t i = 0; i + 1 < ids.size(); ++i) {
      const auto it = merge_.find(static_cast<uint64_t>(ids[i]) << 32 | static_cast<uint32_t>(ids[i + 1]));
      if (it != merge_.end() && it->second.rank < best) best = it->second.rank, merged = it->second.id, at = i;
    }
    if (merged < 0) break;
    ids[at] = merged;
    ids.erase(ids.begin() + static_cast<std::ptrdiff_t>(at) + 1);
  }
  out.insert(out.end(), ids.begin(), ids.end());
}

// ByteLevel pre-tokenization of a piece of text between added tokens, then BPE on each pre-token.
void Tokenizer::pre_tokenize(const std::string& piece, std::vector<int64_t>& out) const {
  const std::string s = prefix_space_ && piece[0] != ' ' ? " " + piece : piece;
  if (!use_regex_) return bpe(s, out);
  std::vector<Class> cls(s.size(), O);
  std::vector<uint8_t> len(s.size(), 1);
  for (size_t i = 0, n = 0; i < s.size(); i += n) {
    cls[i] = class_of(utf8_next(s, i, n));
    len[i] = static_cast<uint8_t>(n);
  }
  for (size_t i = 0; i < s.size();) {
    const size_t end = match_end(s, i, cls, len);
    bpe(s.substr(i, end - i), out);
    i = end;
  }
}

std::vector<int64_t> Tokenizer::encode(const std::string& text) const {
  // The added tokens split the text first, leftmost and longest, in tokenizers' two passes: those
  // matched on the raw text (normalized false: the special ones, by default), then the others
  // (without a normalizer the two see the same text).
  struct Piece {
    std::string text;
    int32_t added = -1;  // an added token's id, or -1: text to pre-tokenize
  };
  std::vector<Piece> pieces = {{text, -1}};
  for (const bool normalized : {false, true}) {
    std::vector<Piece> next;
    for (Piece& p : pieces) {
      if (p.added >= 0) {
        next.push_back(std::move(p));
        continue;
      }
      size_t from = 0;
      for (size_t i = 0; i < p.text.size(); ++i) {
        for (const Added& a : added_) {
          if (a.normalized != normalized || p.text.compare(i, a.content.size(), a.content) != 0) continue;
          if (i > from) next.push_back({p.text.substr(from, i - from), -1});
          next.push_back({a.content, a.id});
          i += a.content.size() - 1;
          from = i + 1;
          break;
        }
      }
      if (from < p.text.size()) next.push_back({p.text.substr(from), -1});
    }
    pieces = std::move(next);
  }
  std::vector<int64_t> out;
  for (const Piece& p : pieces) {
    if (p.added >= 0) out.push_back(p.added);
    else if (!p.text.empty()) pre_tokenize(p.text, out);
  }
  return out;
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids, bool strict) const {
  std::string out;
  for (const int64_t id : ids) {
    if (id >= 0 && id < vocab_size() && known_[static_cast<size_t>(id)]) {
      out += bytes_[static_cast<size_t>(id)];
    } else if (strict) {
      throw std::runtime_error("tokenizer " + path_ + " has no token " + std::to_string(id) + " (its ids are 0.." +
                               std::to_string(vocab_size() - 1) + ")");
    } else {
      out += "<unknown id " + std::to_string(id) + ">";
    }
  }
  return out;
}

}  // namespace train

// Token corpora, memory-mapped: see tokens.h.
#include "tokens.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <glob.h>
#include <stdexcept>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace train {

namespace fs = std::filesystem;

namespace {

constexpr int32_t kMagicGpt2 = 20240520, kMagicLlama3 = 20240801;
constexpr int64_t kHeaderBytes = 256 * 4;

bool has_glob(const std::string& s) { return s.find_first_of("*?[") != std::string::npos; }
bool ends_with(const std::string& s, const std::string& t) {
  return s.size() >= t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0;
}

int32_t first_int32(const fs::path& p) {
  int32_t v = 0;
  if (std::FILE* f = std::fopen(p.c_str(), "rb")) {
    if (std::fread(&v, 4, 1, f) != 1) v = 0;
    std::fclose(f);
  }
  return v;
}

bool is_val_name(const std::string& name) {
  return name == "val.bin" || name.find("_val_") != std::string::npos || name.rfind("val_", 0) == 0;
}

std::vector<std::string> files_of(const std::string& data) {
  std::vector<std::string> out;
  if (has_glob(data)) {
    glob_t g{};
    if (::glob(data.c_str(), 0, nullptr, &g) == 0)
      for (size_t i = 0; i < g.gl_pathc; ++i) out.emplace_back(g.gl_pathv[i]);
    globfree(&g);
    if (out.empty()) throw std::runtime_error("--data " + data + " matches no file");
  } else if (fs::is_directory(data)) {
    for (const auto& e : fs::directory_iterator(data))
      if (e.is_regular_file() && ends_with(e.path().filename().string(), ".bin")) out.push_back(e.path().string());
  } else {
    out.push_back(data);
  }
  std::sort(out.begin(), out.end());
  return out;
}

[[noreturn]] void bad(const std::string& path, const std::string& what) {
  throw std::runtime_error("token file " + path + ": " + what);
}

}  // namespace

TokenFile::~TokenFile() {
  if (map != nullptr) ::munmap(map, map_size);
}

int64_t TokenFile::max_id() const {
  int64_t m = -1;
  if (width == 2) {
    uint16_t best = 0;
    for (int64_t i = 0; i < count; ++i) best = std::max(best, static_cast<uint16_t>(at(i)));
    m = count ? best : -1;
  } else {
    for (int64_t i = 0; i < count; ++i) m = std::max(m, at(i));
  }
  return m;
}

bool is_token_corpus(const std::string& data) {
  if (data.empty()) return false;
  if (has_glob(data) || (ends_with(data, ".bin") && !fs::is_directory(data))) return true;
  if (!fs::is_directory(data)) return false;
  for (const auto& e : fs::directory_iterator(data)) {
    const std::string name = e.path().filename().string();
    if (!e.is_regular_file() || !ends_with(name, ".bin")) continue;
    const int32_t magic = first_int32(e.path());
    if (name == "train.bin" || magic == kMagicGpt2 || magic == kMagicLlama3) return true;
  }
  return false;
}

std::vector<std::unique_ptr<TokenFile>> open_token_files(const std::string& data, int raw_width,
                                                         std::vector<bool>& is_val) {
  if (!has_glob(data) && !fs::exists(data)) throw std::runtime_error("--data " + data + " does not exist");
  std::vector<std::unique_ptr<TokenFile>> out;
  for (const std::string& path : files_of(data)) {
    auto t = std::make_unique<TokenFile>();
    t->path = path;
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) bad(path, std::strerror(errno));
    struct stat st {};
    ::fstat(fd, &st);
    const int64_t size = st.st_size;
    if (size == 0) {
      ::close(fd);
      bad(path, "is empty");
    }
    t->map_size = static_cast<size_t>(size);
    t->map = ::mmap(nullptr, t->map_size, PROT_READ, MAP_SHARED, fd, 0);
    ::close(fd);
    if (t->map == MAP_FAILED) {
      t->map = nullptr;
      bad(path, std::string("cannot map it: ") + std::strerror(errno));
    }
    const auto* bytes = static_cast<const unsigned char*>(t->map);
    int32_t header[3] = {0, 0, 0};
    if (size >= 12) std::memcpy(header, bytes, 12);
    if (header[0] == kMagicGpt2 || header[0] == kMagicLlama3) {
      const bool gpt2 = header[0] == kMagicGpt2;
      if (header[1] != (gpt2 ? 1 : 7))
        bad(path, "llm.c header with magic " + std::to_string(header[0]) + " has version " + std::to_string(header[1]) +
                      " (expected " + (gpt2 ? "1: uint16 tokens" : "7: uint32 tokens") + ")");
      t->width = gpt2 ? 2 : 4;
      if (size < kHeaderBytes) bad(path, "truncated: " + std::to_string(size) + " bytes, shorter than the 1024-byte header");
      t->count = header[2];
      const int64_t want = kHeaderBytes + t->count * t->width;
      if (t->count <= 0) bad(path, "its header says " + std::to_string(t->count) + " tokens");
      if (size < want)
        bad(path, "truncated: the header says " + std::to_string(t->count) + " tokens (" + std::to_string(want) +
                      " bytes), the file has " + std::to_string(size) + " bytes");
      if (size > want)
        bad(path, std::to_string(size - want) + " bytes after the " + std::to_string(t->count) +
                      " tokens its header says (a wrong header?)");
      t->tokens = bytes + kHeaderBytes;
    } else if (size >= 4 && !ends_with(path, ".bin")) {
      bad(path, "has no llm.c header (magic " + std::to_string(kMagicGpt2) + ") and is not a raw *.bin file");
    } else {
      const std::string name = fs::path(path).filename().string();
      const bool raw_name = name == "train.bin" || name == "val.bin";
      if (!raw_name && size >= 4)
        bad(path, "wrong magic " + std::to_string(header[0]) + " (an llm.c shard starts with " +
                      std::to_string(kMagicGpt2) + "; raw nanoGPT files are named train.bin and val.bin)");
      t->width = raw_width;
      if (size % raw_width != 0)
        bad(path, "truncated: " + std::to_string(size) + " bytes is not a whole number of uint" +
                      std::to_string(8 * raw_width) + " tokens (--token-dtype)");
      t->count = size / raw_width;
      t->tokens = bytes;
    }
    is_val.push_back(is_val_name(fs::path(path).filename().string()));
    out.push_back(std::move(t));
  }
  if (out.empty()) throw std::runtime_error("--data " + data + " holds no token files (*.bin)");
  return out;
}

}  // namespace train

#include <arwrap/corpus.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <system_error>

namespace fs = std::filesystem;

namespace arwrap {

namespace {

bool skipped_dir(const std::string& name) {
  return name.empty() || name[0] == '.' || name == "__pycache__" || name == "site-packages" ||
         name == "dist-packages";
}

std::string read_file(const fs::path& p, std::size_t limit) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + p.string());
  std::string s;
  char buf[1 << 16];
  while (s.size() < limit && in.read(buf, sizeof buf).gcount() > 0)
    s.append(buf, static_cast<std::size_t>(in.gcount()));
  if (in.bad()) throw std::runtime_error("error reading " + p.string());
  if (s.size() > limit) s.resize(limit);
  return s;
}

bool looks_like_text(const fs::path& p) {
  const std::string head = read_file(p, 8192);
  return head.find('\0') == std::string::npos;
}

}  // namespace

Corpus read_corpus(const std::string& path, const std::string& suffix, std::size_t max_bytes) {
  const std::size_t limit = max_bytes ? max_bytes : static_cast<std::size_t>(-1);
  std::error_code ec;
  const fs::path root(path);
  const auto st = fs::status(root, ec);
  if (ec || !fs::exists(st)) throw std::runtime_error("data path " + path + " does not exist");
  Corpus c;
  if (fs::is_regular_file(st)) {
    c.bytes = read_file(root, limit);
    c.files = 1;
    c.truncated = max_bytes && fs::file_size(root, ec) > max_bytes;
    if (c.bytes.empty()) throw std::runtime_error("data file " + path + " is empty");
    return c;
  }
  if (!fs::is_directory(st)) throw std::runtime_error("data path " + path + " is neither a file nor a directory");

  std::vector<fs::path> files;
  fs::recursive_directory_iterator it(root, fs::directory_options::skip_permission_denied, ec), end;
  if (ec) throw std::runtime_error("cannot list " + path + ": " + ec.message());
  for (; it != end; it.increment(ec)) {
    if (ec) throw std::runtime_error("cannot list " + path + ": " + ec.message());
    const std::string name = it->path().filename().string();
    std::error_code e2;
    if (it->is_directory(e2)) {
      if (skipped_dir(name) || it->is_symlink(e2)) it.disable_recursion_pending();
      continue;
    }
    if (name.empty() || name[0] == '.' || !it->is_regular_file(e2)) continue;
    const bool matches = suffix.empty() || (name.size() >= suffix.size() &&
                                            name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0);
    if (!matches) continue;
    files.push_back(it->path());
  }
  std::sort(files.begin(), files.end());
  for (const auto& f : files) {
    if (c.bytes.size() >= limit) {
      c.truncated = true;
      break;
    }
    if (suffix.empty() && !looks_like_text(f)) continue;
    c.bytes += read_file(f, limit - c.bytes.size());
    ++c.files;
  }
  if (c.bytes.empty())
    throw std::runtime_error("data directory " + path + " holds no non-empty " +
                             (suffix.empty() ? std::string("text files") : "*" + suffix + " files"));
  return c;
}

std::string find_python_stdlib(std::string* searched) {
  std::vector<std::string> looked;
  if (const char* env = std::getenv("ARWRAP_STDLIB"); env && *env) {
    std::error_code ec;
    if (fs::is_directory(env, ec)) return env;
    looked.push_back(std::string("$ARWRAP_STDLIB=") + env);
  }
  for (const char* base : {"/usr/local/lib", "/usr/lib"}) {
    looked.push_back(std::string(base) + "/python3.N");
    // newest minor version first
    for (int minor = 30; minor >= 6; --minor) {
      const fs::path dir = fs::path(base) / ("python3." + std::to_string(minor));
      std::error_code ec;
      if (fs::is_regular_file(dir / "os.py", ec)) return dir.string();
    }
  }
  if (searched) {
    searched->clear();
    for (const auto& l : looked) *searched += (searched->empty() ? "" : ", ") + l;
  }
  return {};
}

}  // namespace arwrap

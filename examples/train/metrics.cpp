#include "metrics.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace train {
namespace {

// The number after "key": in a line this writer wrote (no nesting, no strings with colons
// before it); nullopt when absent or not a number.
std::optional<double> number_field(const std::string& line, const std::string& key) {
  const std::string needle = "\"" + key + "\":";
  const auto at = line.find(needle);
  if (at == std::string::npos) return std::nullopt;
  const char* begin = line.c_str() + at + needle.size();
  char* end = nullptr;
  const double v = std::strtod(begin, &end);
  if (end == begin) return std::nullopt;
  return v;
}

std::string format_number(double v, int digits) {
  if (!std::isfinite(v)) return "null";  // JSON has no NaN or infinity
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*g", digits, v);
  return buf;
}

std::string quote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) < 0x20) continue;
    out += c;
  }
  return out + "\"";
}

}  // namespace

std::string default_metrics_path(const std::string& checkpoint) {
  std::filesystem::path p(checkpoint);
  p.replace_extension(".metrics.jsonl");
  return p.string();
}

MetricsWriter::MetricsWriter(std::string path, int64_t start_step, bool resume, MetricsOptions options)
    : path_(std::move(path)), options_(std::move(options)), t0_(std::chrono::steady_clock::now()) {
  if (!options_.enabled) return;
  if (path_.empty()) throw std::runtime_error("--metrics needs a path");
  std::string kept;
  if (resume) {
    std::ifstream in(path_);
    for (std::string line; std::getline(in, line);) {
      const auto step = number_field(line, "step");
      if (!step || *step >= static_cast<double>(start_step)) continue;  // trained again in this run
      kept += line + "\n";
      ++kept_;
      if (const auto w = number_field(line, "wall_s")) wall_offset_ = std::max(wall_offset_, *w);
    }
  }
  {  // replace the file atomically by the kept lines, then append to it (its folder made, as the checkpoint's)
    if (const auto parent = std::filesystem::path(path_).parent_path(); !parent.empty()) {
      std::error_code ec;
      std::filesystem::create_directories(parent, ec);  // a failure shows in the fopen below
    }
    const std::string tmp = path_ + ".tmp";
    std::FILE* f = std::fopen(tmp.c_str(), "w");
    if (f == nullptr)
      throw std::runtime_error("cannot write the metrics file " + tmp + ": " + std::strerror(errno) +
                               " (choose another with --metrics PATH)");
    std::fwrite(kept.data(), 1, kept.size(), f);
    std::fclose(f);
    std::error_code ec;
    std::filesystem::rename(tmp, path_, ec);
    if (ec) throw std::runtime_error("cannot write the metrics file " + path_ + ": " + ec.message());
  }
  file_ = std::fopen(path_.c_str(), "a");
  if (file_ == nullptr)
    throw std::runtime_error("cannot append to the metrics file " + path_ + ": " + std::strerror(errno));
}

MetricsWriter::~MetricsWriter() {
  flush();
  if (file_ != nullptr) std::fclose(file_);
}

void MetricsWriter::field(int64_t step, const std::string& key, double value, int digits) {
  if (!options_.enabled) return;
  if (step != step_) {
    flush();
    step_ = step;
  }
  wall_ = wall_offset_ + std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  fields_.emplace_back(key, format_number(value, digits));
}

void MetricsWriter::train(int64_t step, const TrainPoint& p) {
  field(step, "loss", p.loss, 7);
  field(step, "bits_per_byte", p.loss / std::log(2.0), 7);
  field(step, "tokens_per_s", p.tokens_per_s, 6);
  field(step, "lr", p.lr, 7);
  field(step, "grad_norm", p.grad_norm, 7);
  field(step, "rss_mb", p.rss_mb, 6);
  field(step, "skipped_steps", static_cast<double>(p.skipped), 17);
}

void MetricsWriter::validation(int64_t step, double loss) {
  field(step, "val_loss", loss, 7);
  field(step, "val_bits_per_byte", loss / std::log(2.0), 7);
}

void MetricsWriter::flush() {
  if (file_ == nullptr || step_ < 0) return;
  std::string line = "{\"step\":" + std::to_string(step_);
  for (const auto& [k, v] : fields_) line += ",\"" + k + "\":" + v;
  line += ",\"wall_s\":" + format_number(wall_, 7);
  if (options_.precision) line += ",\"precision\":" + quote(*options_.precision);
  if (options_.world_size) line += ",\"world_size\":" + std::to_string(*options_.world_size);
  line += "}\n";
  std::fwrite(line.data(), 1, line.size(), file_);
  std::fflush(file_);  // a plot made during the run sees every finished line
  step_ = -1;
  fields_.clear();
}

}  // namespace train

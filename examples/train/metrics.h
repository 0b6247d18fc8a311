// The trainer's metrics file: one JSON object per line (JSON Lines), one line per logged
// step, for plotting and comparing runs (scripts/plot.sh; docs/metrics.md lists the fields).
// python/arwrap_cpp/metrics.py writes the same format from Python.
//
// A line is written when its step is complete: the training fields of a logged step and the
// validation loss measured at that step go into the same line. A field not measured at a
// step is left out (step 0 has a validation loss only). On --resume the writer first drops
// the lines whose step is >= the resumed step (they belong to steps that are trained again),
// then appends, and continues the wall clock of the kept lines.
#pragma once

#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <chrono>

namespace train {

struct MetricsOptions {
  bool enabled = true;                   // false on every rank but 0 of a multi-process run
  std::optional<std::string> precision;  // e.g. "fp32", "bf16": written on every line when set
  std::optional<int64_t> world_size;     // processes of a data-parallel run: written when set
};

// The training side of one logged step.
struct TrainPoint {
  double loss = 0;          // mean training loss over the steps since the previous logged step
  double tokens_per_s = 0;  // training tokens per second over the same interval
  double lr = 0;            // learning rate of this step
  double grad_norm = 0;     // total gradient norm of this step, before clipping
  double rss_mb = 0;        // resident memory of the process (MB)
  int64_t skipped = 0;      // steps skipped since the previous logged step (non-finite loss or gradient)
};

class MetricsWriter {
 public:
  // Opens `path` for a run starting after `start_step` optimizer steps. resume=false starts
  // a new file (an old one is replaced); resume=true keeps the lines with step < start_step.
  MetricsWriter(std::string path, int64_t start_step, bool resume, MetricsOptions options = {});
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;

  void train(int64_t step, const TrainPoint& p);
  void validation(int64_t step, double loss);
  // Writes the pending line (also done by the next step's first field and the destructor).
  void flush();

  const std::string& path() const { return path_; }
  bool enabled() const { return options_.enabled; }
  // lines kept from an earlier run on --resume
  int64_t kept_lines() const { return kept_; }

 private:
  void field(int64_t step, const std::string& key, double value, int digits);

  std::string path_;
  MetricsOptions options_;
  std::FILE* file_ = nullptr;
  double wall_offset_ = 0;
  int64_t kept_ = 0;
  std::chrono::steady_clock::time_point t0_;
  double wall_ = 0;  // seconds since the run began (plus the kept lines'), at its latest field
  int64_t step_ = -1;                                   // the step of the pending line, -1: none
  std::vector<std::pair<std::string, std::string>> fields_;  // its fields, formatted
};

// Where the metrics go when --metrics is not given: beside the checkpoint, its name with
// the extension replaced (runs/model.pt -> runs/model.metrics.jsonl).
std::string default_metrics_path(const std::string& checkpoint);

}  // namespace train

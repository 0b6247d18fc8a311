// Shared by the C++ test programs: the token files the tests write for them ("b n1" then
// b*n1 token ids), and their closing bad-input check.
#pragma once

#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

// The (b, n1) int64 tensor, or nothing when the file cannot be read.
inline std::optional<torch::Tensor> read_tokens(const std::string& path) {
  std::ifstream in(path);
  int64_t b = 0, n1 = 0;
  in >> b >> n1;
  if (!in || b < 0 || n1 < 0) return std::nullopt;
  std::vector<int64_t> ids(static_cast<size_t>(b * n1));
  for (auto& v : ids) in >> v;
  if (!in) return std::nullopt;
  return torch::from_blob(ids.data(), {b, n1}, torch::kLong).clone();
}

// For programs called as `PROGRAM MODEL.pt TOKENS.txt`: the tokens of argv[2]; a usage line
// (model_arg names the first argument) or a read error exits with status 2.
inline torch::Tensor tokens_from_args(int argc, char** argv, const char* model_arg) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s %s TOKENS.txt\n", argv[0], model_arg);
    std::exit(2);
  }
  auto read = read_tokens(argv[2]);
  if (!read) {
    std::fprintf(stderr, "error: could not read %s\n", argv[2]);
    std::exit(2);
  }
  return *read;
}

// The programs' closing check: `bad` (a call with bad input) must throw a clear c10::Error,
// never crash or pass; prints the error and "ALL OK" and returns 0, or says what was accepted
// and returns 1 (the program's exit status).
template <typename F>
int expect_rejected_then_ok(const char* what, F&& bad) {
  try {
    bad();
    std::fprintf(stderr, "FAILED: %s accepted\n", what);
    return 1;
  } catch (const c10::Error& e) {
    std::printf("bad input: %s\n", e.what_without_backtrace());
  }
  std::printf("ALL OK\n");
  return 0;
}

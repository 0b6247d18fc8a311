// The training text of arwrap-train (and of arwrap_cpp.checkpoint.read_corpus, which calls
// this): a file or a directory of files read as raw bytes (vocabulary 256), split 90/10
// into train and validation. Plain C++ (no LibTorch headers), so it compiles fast.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace arwrap {

struct Corpus {
  std::string bytes;          // every file, in sorted path order, concatenated
  std::size_t files = 0;      // how many files were read
  bool truncated = false;     // max_bytes cut it short
  std::size_t train_size() const { return bytes.size() * 9 / 10; }  // bytes [0, train_size) train, the rest validation
};

// Reads PATH: a regular file as is; a directory recursively, in sorted path order,
// skipping hidden entries, __pycache__, site-packages and dist-packages, taking the
// files whose name ends with `suffix` (e.g. ".py"), or with an empty suffix every
// file that looks like text (no NUL byte in its first 8 KiB). Stops after max_bytes
// (0: no limit). Throws std::runtime_error with a one-line message.
Corpus read_corpus(const std::string& path, const std::string& suffix, std::size_t max_bytes);

// The Python standard library's source directory: $ARWRAP_STDLIB, else the newest
// /usr/local/lib/python3.N or /usr/lib/python3.N holding os.py. Empty when none is
// found; `searched` then says where it looked.
std::string find_python_stdlib(std::string* searched);

}  // namespace arwrap

// CPU kernel of shift_tokens: what AutoregressiveWrapper.forward does to its
// token ids before calling the net, in one pass over x.
//   target[i, j] = x[i, j + 1] if j + 1 < lens[i] else ignore_index
//   input[i, j]  = pad_value if (j >= lens[i] or x[i, j] == ignore_index) else x[i, j]
//   mask[i, :]   = false at the k = min(int(m * mask_prob), m - 1) positions in 1..m-1
//                  with the largest noise (position 0 is never masked), true elsewhere;
//                  with mask_token_id, those input positions also become mask_token_id.
// Input and mask have m = n columns, or m = n + 1 with keep_last (x-transformers 2.31
// feeds its net all n + 1 tokens and draws its mask over them).
#include "../common.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace arwrap::ops::cpu {
namespace {

template <typename noise_t>
void choose_masked(const noise_t* noise, int64_t n, int64_t k, std::vector<int64_t>& idx, bool* keep) {
  std::fill(keep, keep + n, true);
  if (k <= 0) return;
  idx.resize(static_cast<size_t>(n - 1));
  std::iota(idx.begin(), idx.end(), int64_t{1});
  // largest noise first; ties broken by position so the choice is a pure function of noise
  auto before = [noise](int64_t a, int64_t b) { return noise[a] > noise[b] || (noise[a] == noise[b] && a < b); };
  std::nth_element(idx.begin(), idx.begin() + (k - 1), idx.end(), before);
  for (int64_t r = 0; r < k; ++r) keep[idx[static_cast<size_t>(r)]] = false;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> shift_tokens_cpu(
    const at::Tensor& x_in, const std::optional<at::Tensor>& lens_in, const std::optional<at::Tensor>& noise_in,
    int64_t ignore_index, int64_t pad_value, double mask_prob, std::optional<int64_t> mask_token_id,
    bool keep_last) {
  check_shift_tokens_args(x_in, lens_in, noise_in, mask_prob, mask_token_id, keep_last);
  auto out = alloc_shift_tokens_outputs(x_in, mask_prob, keep_last);
  const at::Tensor x = x_in.contiguous();
  const int64_t b = x.size(0), n1 = x.size(1), n = n1 - 1, m = input_columns(x_in, keep_last);
  const int64_t* xp = x.data_ptr<int64_t>();

  std::vector<int64_t> lens(static_cast<size_t>(b), n1);
  if (lens_in.has_value() && lens_in->defined()) {
    const at::Tensor l = lens_in->to(at::kLong).contiguous();
    const int64_t* lp = l.data_ptr<int64_t>();
    for (int64_t i = 0; i < b; ++i) {
      TORCH_CHECK_VALUE(lp[i] >= 0 && lp[i] <= n1, "shift_tokens: lens must be in [0, seq_len + 1] = [0, ", n1,
                        "], got lens[", i, "] = ", lp[i]);
      lens[static_cast<size_t>(i)] = lp[i];
    }
  }
  // token ids inside lens must be >= 0 or ignore_index
  for (int64_t i = 0; i < b; ++i) {
    const int64_t L = lens[static_cast<size_t>(i)];
    for (int64_t j = 0; j < L; ++j) {
      const int64_t v = xp[i * n1 + j];
      TORCH_CHECK_INDEX(v >= 0 || v == ignore_index, "shift_tokens: x must hold token ids >= 0 (or ignore_index ",
                        ignore_index, "), got ", v, " at x[", i, ", ", j, "]");
    }
  }

  int64_t* inp = out.input.data_ptr<int64_t>();
  int64_t* tgt = out.target.data_ptr<int64_t>();
  at::parallel_for(0, b, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t L = lens[static_cast<size_t>(i)];
      const int64_t* row = xp + i * n1;
      for (int64_t j = 0; j < m; ++j) {
        const int64_t v = j < L ? row[j] : ignore_index;
        inp[i * m + j] = v == ignore_index ? pad_value : v;
      }
      for (int64_t j = 0; j < n; ++j) tgt[i * n + j] = j + 1 < L ? row[j + 1] : ignore_index;
    }
  });

  if (mask_prob > 0.0) {
    const at::Tensor noise = noise_in->contiguous();
    bool* keep = out.mask.data_ptr<bool>();
    const int64_t k = num_masked(m, mask_prob);
    auto run = [&](auto* np) {
      for (int64_t i = 0; i < b * m; ++i) {
        TORCH_CHECK_VALUE(!std::isnan(np[i]), "shift_tokens: noise must not contain NaN");
      }
      std::vector<int64_t> idx;
      for (int64_t i = 0; i < b; ++i) {
        choose_masked(np + i * m, m, k, idx, keep + i * m);
        if (mask_token_id.has_value()) {
          for (int64_t j = 0; j < m; ++j) {
            if (!keep[i * m + j]) inp[i * m + j] = *mask_token_id;
          }
        }
      }
    };
    if (noise.scalar_type() == at::kFloat) {
      run(noise.data_ptr<float>());
    } else {
      run(noise.data_ptr<double>());
    }
  }
  return {out.input, out.target, out.mask};
}

}  // namespace

TORCH_LIBRARY_IMPL(arwrap, CPU, m) { m.impl("shift_tokens", &shift_tokens_cpu); }

}  // namespace arwrap::ops::cpu

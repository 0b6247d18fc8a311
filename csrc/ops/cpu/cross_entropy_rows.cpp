// The row math of the CPU cross-entropy (declared in cross_entropy_rows.h), shared by
// cpu/cross_entropy_kernel.cpp and cpu/linear_cross_entropy_kernel.cpp.
//
// Per row z (length V) with target t, label smoothing eps and z-loss weight w:
//   lse    = log sum_j exp(z_j)
//   nll    = lse - z_t = log1p(sum_{j != t} exp(z_j - z_t))   (no cancellation for
//            confident rows: the sum over j != t is accumulated apart from z_t)
//   loss   = (1 - eps) nll + eps (lse - mean_j z_j) + w lse^2
//   dloss/dz_j = p_j (1 + 2 w lse) - eps / V - (1 - eps) [j == t],   p = softmax(z)
// and for the true class p_t - 1 = -sum_{j != t} p_j, again without cancellation.
//
// Memory traffic per row: the forward reads z once (blocks of kBlock values:
// a max pass and an exp-sum pass over an L1-resident block, an online rescale
// between blocks). The fused forward+gradient then writes the gradient in a second
// sweep over the row, which is still in L2: one read and one write of the logits
// in all. The plain backward reads z and writes the gradient once.
//
// Every row is computed by one thread, and the loss is reduced over rows in a
// fixed order in double, so results are bitwise independent of the thread count.
#include "cross_entropy_rows.h"

#include "softmax_simd.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace arwrap::ops::cpu {
namespace {

constexpr int64_t kBlock = 2048;

template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Where each row of logits (..., V) starts, for any strides of the leading dims.
struct RowIndex {
  int64_t nrows = 1;
  std::vector<int64_t> sizes, strides;  // leading dims only
  explicit RowIndex(const at::Tensor& t) {
    for (int64_t d = 0; d + 1 < t.dim(); ++d) {
      sizes.push_back(t.size(d));
      strides.push_back(t.stride(d));
      nrows *= t.size(d);
    }
  }
  int64_t offset(int64_t row) const {
    int64_t off = 0;
    for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 0; --d) {
      off += (row % sizes[d]) * strides[d];
      row /= sizes[d];
    }
    return off;
  }
};

// ---- float32 primitives over a block of values of any storage type ----------

struct Stats {
  double m = -std::numeric_limits<double>::infinity();  // running max
  double s_excl = 0.0;                                  // sum_{j != t} exp(z_j - m)
  double sum_z = 0.0;                                   // sum_j z_j (label smoothing)
};

// acc += f(off, len) over the block [b0, b0 + n) with the target position t left
// out (every sweep keeps the true class apart from the rest of the row).
template <typename Acc, typename F>
inline void add_except_target(Acc& acc, int64_t b0, int64_t n, int64_t t, F&& f) {
  if (t >= b0 && t < b0 + n) {
    const int64_t tl = t - b0;
    acc += f(0, tl);
    acc += f(tl + 1, n - tl - 1);
  } else {
    acc += f(0, n);
  }
}

// Converts a block of T to float in buf (or points at it directly for float).
template <typename T>
inline const float* as_float(const T* z, int64_t n, float* buf) {
  if constexpr (std::is_same_v<T, float>) {
    return z;
  } else {
    for (int64_t j = 0; j < n; ++j) buf[j] = static_cast<float>(z[j]);
    return buf;
  }
}

// Forward statistics of one row, for T in {float, bf16, half}.
template <typename T>
Stats row_stats_f32(const T* z, int64_t V, int64_t t, bool need_sum_z, float* buf) {
  const auto& k = simd::kernels();
  float m = -std::numeric_limits<float>::infinity();
  float s = 0.0f;
  double sum_z = 0.0;
  for (int64_t b0 = 0; b0 < V; b0 += kBlock) {
    const int64_t n = std::min(kBlock, V - b0);
    const float* x = as_float(z + b0, n, buf);
    const float bm = k.max_of(x, n);
    if (bm > m) {
      s *= std::exp(m - bm);
      m = bm;
    }
    add_except_target(s, b0, n, t, [&](int64_t o, int64_t len) { return k.sum_exp(x + o, len, m); });
    if (need_sum_z) sum_z += k.sum_of(x, n);
  }
  Stats st;
  st.m = m;
  st.s_excl = s;
  st.sum_z = sum_z;
  return st;
}

// Forward statistics of one row in float64 (reference precision, scalar code).
Stats row_stats_f64(const double* z, int64_t V, int64_t t, bool need_sum_z) {
  Stats st;
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < V; ++j) m = z[j] > m ? z[j] : m;
  double s = 0.0, sz = 0.0;
  for (int64_t j = 0; j < V; ++j) {
    if (j != t) s += std::exp(z[j] - m);
    if (need_sum_z) sz += z[j];
  }
  if (std::isnan(m)) m = std::numeric_limits<double>::quiet_NaN();
  st.m = m;
  st.s_excl = s;
  st.sum_z = sz;
  return st;
}

template <typename T>
Stats row_stats(const T* z, int64_t V, int64_t t, bool need_sum_z, float* buf) {
  if constexpr (std::is_same_v<T, double>) {
    (void)buf;
    return row_stats_f64(z, V, t, need_sum_z);
  } else {
    return row_stats_f32(z, V, t, need_sum_z, buf);
  }
}

struct RowLoss {
  double lse, loss;
};

// lse and the loss of a row from its statistics (double arithmetic, O(1)).
inline RowLoss row_loss(const Stats& st, double zt, int64_t V, bool ignored, double eps, double w) {
  RowLoss r{};
  if (ignored) {
    r.lse = st.m + std::log(st.s_excl);  // here s_excl is the sum over all j
    r.loss = 0.0;
    return r;
  }
  const double d = st.m - zt;  // >= 0 (NaN propagates)
  const double e_t = std::exp(-d);
  r.lse = st.m + std::log(st.s_excl + e_t);
  // nll = log(1 + sum_{j!=t} exp(z_j - z_t)); exp(d) overflows only for absurd d
  const double nll = d < 600.0 ? std::log1p(st.s_excl * std::exp(d)) : d + std::log(st.s_excl + e_t);
  double loss = (1.0 - eps) * nll;
  if (eps > 0.0) loss += eps * (r.lse - st.sum_z / static_cast<double>(V));
  if (w > 0.0) loss += w * r.lse * r.lse;
  r.loss = loss;
  return r;
}

// Writes the gradient of one row: out_j = c (p_j (1 + 2 w lse) - eps/V - (1-eps)[j==t]) + g_lse p_j,
// with p_t - 1 taken as -sum_{j != t} p_j. out may alias z.
template <typename T>
void row_grad(const T* z, T* out, int64_t V, int64_t t, double lse, double c, double g_lse, double eps, double w,
              float* buf) {
  const double a = c * (1.0 + 2.0 * w * lse) + g_lse;
  const double b = -c * eps / static_cast<double>(V);
  if (a == 0.0 && b == 0.0 && t < 0) {  // ignored row, nothing flows back
    std::fill(out, out + V, T(0));
    return;
  }
  const double zt = t >= 0 ? static_cast<double>(z[t]) : 0.0;  // read before out overwrites it
  double q = 0.0;                                               // sum_{j != t} p_j
  if constexpr (std::is_same_v<T, double>) {
    (void)buf;
    for (int64_t j = 0; j < V; ++j) {
      const double p = std::exp(z[j] - lse);
      if (j != t) q += p;
      out[j] = a * p + b;
    }
  } else {
    const auto& k = simd::kernels();
    const float af = static_cast<float>(a), bf = static_cast<float>(b), lf = static_cast<float>(lse);
    for (int64_t b0 = 0; b0 < V; b0 += kBlock) {
      const int64_t n = std::min(kBlock, V - b0);
      if constexpr (std::is_same_v<T, float>) {
        add_except_target(q, b0, n, t, [&](int64_t o, int64_t len) {
          return k.grad_affine(z + b0 + o, out + b0 + o, len, lf, af, bf);
        });
      } else {
        const float* x = as_float(z + b0, n, buf);
        add_except_target(q, b0, n, t,
                          [&](int64_t o, int64_t len) { return k.grad_affine(x + o, buf + o, len, lf, af, bf); });
        for (int64_t j = 0; j < n; ++j) out[b0 + j] = static_cast<T>(buf[j]);
      }
    }
  }
  if (t >= 0) {
    const double pt = std::exp(zt - lse);
    out[t] = static_cast<T>(c * ((1.0 - eps) * (-q) + eps * (pt - 1.0 / static_cast<double>(V)) + 2.0 * w * lse * pt) + g_lse * pt);
  }
}

// Fused forward + gradient of one float32 row, with one exponential per element:
// the first sweep stores e_j = exp(z_j - m_b) (m_b: the running max after block b)
// into g while it sums them; the second turns them into p_j = e_j exp(m_b - lse) and
// the gradient, in the same buffer. g may alias z (the in-place gradient): z_t and
// the sum of z (label smoothing) are read before they are overwritten.
RowLoss row_fused_f32(const float* z, float* g, int64_t V, int64_t t, double eps, double w, double c, double g_lse,
                      std::vector<float>& mblk) {
  const auto& k = simd::kernels();
  const double zt = t >= 0 ? static_cast<double>(z[t]) : 0.0;
  const int64_t nblk = (V + kBlock - 1) / kBlock;
  mblk.resize(static_cast<size_t>(nblk));
  float m = -std::numeric_limits<float>::infinity();
  float s = 0.0f;
  double sum_z = 0.0;
  for (int64_t bi = 0, b0 = 0; b0 < V; ++bi, b0 += kBlock) {
    const int64_t n = std::min(kBlock, V - b0);
    const float bm = k.max_of(z + b0, n);
    if (bm > m) {
      s *= std::exp(m - bm);
      m = bm;
    }
    mblk[static_cast<size_t>(bi)] = m;
    if (eps > 0.0 && t >= 0) sum_z += k.sum_of(z + b0, n);
    add_except_target(s, b0, n, t,
                      [&](int64_t o, int64_t len) { return k.exp_store(z + b0 + o, g + b0 + o, len, m); });
  }
  Stats st;
  st.m = m;
  st.s_excl = s;
  st.sum_z = sum_z;
  const RowLoss r = row_loss(st, zt, V, t < 0, eps, w);
  const double a = c * (1.0 + 2.0 * w * r.lse) + g_lse;
  const double b = -c * eps / static_cast<double>(V);
  if (a == 0.0 && b == 0.0 && t < 0) {
    std::fill(g, g + V, 0.0f);
    return r;
  }
  const float af = static_cast<float>(a), bf = static_cast<float>(b);
  double q = 0.0;  // sum_{j != t} p_j
  for (int64_t bi = 0, b0 = 0; b0 < V; ++bi, b0 += kBlock) {
    const int64_t n = std::min(kBlock, V - b0);
    const float sc = static_cast<float>(std::exp(static_cast<double>(mblk[static_cast<size_t>(bi)]) - r.lse));
    add_except_target(q, b0, n, t, [&](int64_t o, int64_t len) {
      return k.scale_affine(g + b0 + o, g + b0 + o, len, sc, af, bf);
    });
  }
  if (t >= 0) {
    const double pt = std::exp(zt - r.lse);
    g[t] = static_cast<float>(c * ((1.0 - eps) * (-q) + eps * (pt - 1.0 / static_cast<double>(V)) + 2.0 * w * r.lse * pt) + g_lse * pt);
  }
  return r;
}

// Dispatches to row_fused_f32 for float rows (callers only use it for float).
template <typename T>
RowLoss row_fused(const T* z, T* g, int64_t V, int64_t t, double eps, double w, double c, double g_lse,
                  std::vector<float>& mblk) {
  if constexpr (std::is_same_v<T, float>) {
    return row_fused_f32(z, g, V, t, eps, w, c, g_lse, mblk);
  } else {
    TORCH_INTERNAL_ASSERT(false, "row_fused is float32 only");
  }
}

// ---- validation -------------------------------------------------------------

}  // namespace

// Checks target values and counts the non-ignored ones (before any write, so an
// error never leaves the logits half overwritten).
int64_t count_valid_targets(const at::Tensor& target, int64_t V, int64_t ignore_index, const char* op) {
  const int64_t* t = target.data_ptr<int64_t>();
  const int64_t N = target.numel();
  int64_t count = 0;
  for (int64_t i = 0; i < N; ++i) {
    const int64_t ti = t[i];
    if (ti == ignore_index) continue;
    TORCH_CHECK_INDEX(ti >= 0 && ti < V, op, ": target must be in [0, ", V, ") or ignore_index (",
                      ignore_index, "), got ", ti, " at flat position ", i);
    ++count;
  }
  return count;
}

namespace {

inline int64_t grain_for(int64_t V) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(V, 1)); }

// ---- the kernels ------------------------------------------------------------

}  // namespace

void cross_entropy_rows(const at::Tensor& lg, const int64_t* tgt, int64_t ignore_index, double eps, double w,
                        double* row_losses, double* lse_rows, const at::Tensor* grad, double scale,
                        const double* row_scale, const double* row_glse) {
  const int64_t V = lg.size(-1);
  const RowIndex rows(lg);
  const int64_t N = rows.nrows;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, lg.scalar_type(), "arwrap_cross_entropy_rows", [&] {
    scalar_t* base = lg.data_ptr<scalar_t>();
    scalar_t* gbase = grad != nullptr ? grad->data_ptr<scalar_t>() : nullptr;
    const bool grad_in_place = grad != nullptr && grad->is_same(lg);
    at::parallel_for(0, N, grain_for(V), [&](int64_t begin, int64_t end) {
      std::vector<float> buf(kBlock), mblk;
      for (int64_t i = begin; i < end; ++i) {
        const scalar_t* z = base + rows.offset(i);
        const int64_t t = tgt[i] == ignore_index ? -1 : tgt[i];
        if (gbase != nullptr && std::is_same_v<scalar_t, float>) {
          // float32 forward + gradient: one exponential per element
          scalar_t* g = grad_in_place ? const_cast<scalar_t*>(z) : gbase + i * V;
          const double c = t < 0 ? 0.0 : (row_scale != nullptr ? row_scale[i] : scale);
          const RowLoss r = row_fused<scalar_t>(z, g, V, t, eps, w, c, row_glse != nullptr ? row_glse[i] : 0.0, mblk);
          lse_rows[i] = r.lse;
          row_losses[i] = r.loss;
          continue;
        }
        const Stats st = row_stats<scalar_t>(z, V, t, eps > 0.0 && t >= 0, buf.data());
        const RowLoss r = row_loss(st, t >= 0 ? static_cast<double>(z[t]) : 0.0, V, t < 0, eps, w);
        lse_rows[i] = r.lse;
        row_losses[i] = r.loss;
        if (gbase != nullptr) {
          scalar_t* g = grad_in_place ? const_cast<scalar_t*>(z) : gbase + i * V;
          const double c = t < 0 ? 0.0 : (row_scale != nullptr ? row_scale[i] : scale);
          row_grad<scalar_t>(z, g, V, t, r.lse, c, row_glse != nullptr ? row_glse[i] : 0.0, eps, w, buf.data());
        }
      }
    });
  });
}

void cross_entropy_rows_backward(const at::Tensor& lg, const int64_t* target, int64_t ignore_index, double eps,
                                 double w, const double* lse_rows, double scale, const double* row_scale,
                                 const double* row_glse, const at::Tensor& grad) {
  const int64_t V = lg.size(-1);
  const RowIndex rows(lg);
  const RowIndex grows(grad);
  const int64_t N = rows.nrows;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, lg.scalar_type(), "arwrap_cross_entropy_backward", [&] {
    const scalar_t* base = lg.data_ptr<scalar_t>();
    scalar_t* gbase = grad.data_ptr<scalar_t>();
    at::parallel_for(0, N, grain_for(V), [&](int64_t begin, int64_t end) {
      std::vector<float> buf(kBlock);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t t = target[i] == ignore_index ? -1 : target[i];
        const double c = t < 0 ? 0.0 : (row_scale != nullptr ? row_scale[i] : scale);
        row_grad<scalar_t>(base + rows.offset(i), gbase + grows.offset(i), V, t, lse_rows[i], c,
                           row_glse != nullptr ? row_glse[i] : 0.0, eps, w, buf.data());
      }
    });
  });
}

}  // namespace arwrap::ops::cpu

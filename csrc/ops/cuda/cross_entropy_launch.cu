// CUDA kernels of the fused cross-entropy and their launches; the operator's CUDA kernels,
// with the argument checks and every error they raise, are cross_entropy_kernel.cpp (built by
// the host compiler: no exception is thrown from, or through, code nvcc compiled; see
// docs/cuda.md). The math is that of ../cpu/cross_entropy_kernel.cpp. Per row z (length V) with target t, label
// smoothing eps and z-loss weight w:
//   lse    = log sum_j exp(z_j) = m + log(s_excl + exp(z_t - m)),  m = max_j z_j,
//            s_excl = sum_{j != t} exp(z_j - m)
//   nll    = lse - z_t = log1p(s_excl exp(m - z_t))       (no cancellation when p_t ~ 1)
//   loss   = (1 - eps) nll + eps (lse - mean_j z_j) + w lse^2
//   dloss/dz_j = c (p_j (1 + 2 w lse) - eps / V - (1 - eps) [j == t]) + g_lse p_j
// with p_t - 1 taken as -sum_{j != t} p_j, c the upstream gradient of the row's loss
// (1/count for mean) and g_lse that of its lse. Ignored rows: loss 0, gradient 0.
//
// One thread block per row (grid-stride over rows); threads read the row with
// coalesced 16-byte loads, four in flight per thread, after a scalar head up to the
// first 16-byte boundary (row_sweep.h), so unaligned rows (most rows at odd V) are
// vectorised too. Statistics accumulate in
// float32 (float64 for float64 logits), the per-row loss in float64; block
// reductions and the reduction over rows have a fixed order, so results are
// bitwise reproducible for a given shape and layout.
//
// Targets are validated first on the device, in the kernel that counts the
// non-ignored targets: a bad target stops the kernel with a device-side assertion
// (as ATen's nll_loss does), without a host synchronisation (../sync_checks.h). With
// ARWRAP_SYNC_CHECKS=1 the first bad position is instead kept on the device, and
// cross_entropy_kernel.cpp copies it to the host (a sync) and raises an IndexError before
// anything is written, so that error never leaves logits half overwritten. The count stays on the device for the kernels;
// grad_loss is read on the device too.
#include "cross_entropy_launch.h"
#include "cross_entropy_rows.cuh"

#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

namespace arwrap::ops::cuda {
namespace {

// Target validation: counts non-ignored targets into status[0]; a target outside
// [0, V) either fails a device-side assertion (device_assert) or records its first
// flat position in status[1] for the host. Reads N int64.
__global__ void __launch_bounds__(256) validate_targets_kernel(const int64_t* __restrict__ target, int64_t N,
                                                                int64_t V, int64_t ignore_index, ull* status,
                                                                bool device_assert) {
  ull count = 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < N;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = target[i];
    if (t == ignore_index) continue;
    if (t >= 0 && t < V) {
      ++count;
    } else if (device_assert) {
      CUDA_KERNEL_ASSERT(false && "arwrap cross_entropy: target must be in [0, V) or ignore_index");
    } else {
      atomicMin(&status[1], static_cast<ull>(i));
    }
  }
  count = block_sum(count);
  if (threadIdx.x == 0 && count > 0) atomicAdd(&status[0], count);
}

// Forward, one block per row: online softmax over the row (running max, rescaled
// sum over j != t, and sum_j z_j for label smoothing), one block reduction, the
// row's lse and loss in float64. With kGrad, a second sweep writes the gradient
// for an upstream gradient of 1 on the reduced loss (c = 1/count for mean).
// Traffic per row: one read of V logits (+ with kGrad one more read, from L2 for
// rows up to a few MB, and one write of V gradients).
template <typename T, bool kGrad>
__global__ void __launch_bounds__(kMaxRowThreads)
    ce_forward_kernel(const T* logits, RowIndex rows, T* grad, RowIndex grad_rows, const int64_t* __restrict__ target,
                      int64_t N, int64_t V, int64_t ignore_index, int64_t reduction, const ull* count, double eps,
                      double w, acc_t<T>* __restrict__ lse_out, acc_t<T>* __restrict__ loss_out,
                      double* __restrict__ loss_rows) {
  using A = acc_t<T>;
  double c_valid = 1.0;
  if (kGrad && reduction == static_cast<int64_t>(Reduction::Mean)) {
    const ull cnt = *count;
    c_valid = cnt > 0 ? 1.0 / static_cast<double>(cnt) : 0.0;
  }
  for (int64_t row = blockIdx.x; row < N; row += gridDim.x) {
    const T* z = logits + rows.offset(row);
    const int64_t t = target[row] == ignore_index ? -1 : target[row];
    const A zt = t >= 0 ? static_cast<A>(z[t]) : A(0);
    MaxSum<A> st{-static_cast<A>(INFINITY), A(0)};
    A sum_z = 0;
    row_read<T, A>(z, V, [&](int64_t j, A x) {
      if (x > st.m) {
        st.s *= exp_(st.m - x);
        st.m = x;
      }
      if (j != t) st.s += x == -static_cast<A>(INFINITY) ? A(0) : exp_(x - st.m);
      sum_z += x;
    });
    st = block_max_sum(st);
    const bool need_sum_z = eps > 0.0 && t >= 0;  // uniform over the block
    if (need_sum_z) sum_z = block_sum(sum_z);

    const double m = static_cast<double>(st.m), s_excl = static_cast<double>(st.s);
    double lse, loss = 0.0;
    if (t < 0) {
      lse = m + log(s_excl);  // here s_excl is the sum over all j
    } else {
      const double d = m - static_cast<double>(zt);  // >= 0 (NaN propagates)
      const double e_t = exp(-d);
      lse = m + log(s_excl + e_t);
      const double nll = d < 600.0 ? log1p(s_excl * exp(d)) : d + log(s_excl + e_t);
      loss = (1.0 - eps) * nll;
      if (eps > 0.0) loss += eps * (lse - static_cast<double>(sum_z) / static_cast<double>(V));
      if (w > 0.0) loss += w * lse * lse;
    }
    if (threadIdx.x == 0) {
      lse_out[row] = static_cast<A>(lse);
      if (loss_out != nullptr) {
        loss_out[row] = static_cast<A>(loss);
      } else {
        loss_rows[row] = loss;
      }
    }
    if constexpr (kGrad) {
      // every thread read z[t] and the block synchronised (block_max_sum) above
      row_grad<T, A>(z, grad + grad_rows.offset(row), V, t, zt, lse, t >= 0 ? c_valid : 0.0, 0.0, eps, w);
    }
  }
}

// Sum of the per-row losses (times 1/count for mean) in one block, in a fixed
// order: deterministic. Reads N doubles.
template <typename A>
__global__ void __launch_bounds__(1024) reduce_loss_kernel(const double* __restrict__ loss_rows, int64_t N,
                                                            int64_t reduction, const ull* count, A* out) {
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) s += loss_rows[i];
  s = block_sum(s);
  if (threadIdx.x == 0) {
    double c = 1.0;
    if (reduction == static_cast<int64_t>(Reduction::Mean)) {
      const ull cnt = *count;
      c = cnt > 0 ? 1.0 / static_cast<double>(cnt) : 0.0;
    }
    *out = static_cast<A>(s * c);
  }
}

// Backward from the saved lse, one block per row: a single sweep reads z and
// writes the gradient (over z in place), plus one block reduction for the true
// class. grad_loss (0-dim for mean/sum, per row for none) is read on the device.
// Traffic per row: one read and one write of V values.
template <typename T>
__global__ void __launch_bounds__(kMaxRowThreads)
    ce_backward_kernel(const T* logits, RowIndex rows, T* grad, RowIndex grad_rows, const int64_t* __restrict__ target,
                       int64_t N, int64_t V, int64_t ignore_index, int64_t reduction, const ull* count,
                       const acc_t<T>* __restrict__ grad_loss, const acc_t<T>* __restrict__ grad_lse,
                       const acc_t<T>* __restrict__ lse, double eps, double w) {
  using A = acc_t<T>;
  double scale = 1.0;
  if (reduction == static_cast<int64_t>(Reduction::Mean)) {
    const ull cnt = *count;
    scale = cnt > 0 ? static_cast<double>(grad_loss[0]) / static_cast<double>(cnt) : 0.0;
  } else if (reduction == static_cast<int64_t>(Reduction::Sum)) {
    scale = static_cast<double>(grad_loss[0]);
  }
  for (int64_t row = blockIdx.x; row < N; row += gridDim.x) {
    const T* z = logits + rows.offset(row);
    const int64_t t = target[row] == ignore_index ? -1 : target[row];
    const A zt = t >= 0 ? static_cast<A>(z[t]) : A(0);
    __syncthreads();  // every thread has read z[t] before any thread overwrites it (in place)
    double c = 0.0;
    if (t >= 0) c = reduction == static_cast<int64_t>(Reduction::None) ? static_cast<double>(grad_loss[row]) : scale;
    const double g_lse = grad_lse != nullptr ? static_cast<double>(grad_lse[row]) : 0.0;
    row_grad<T, A>(z, grad + grad_rows.offset(row), V, t, zt, static_cast<double>(lse[row]), c, g_lse, eps, w);
  }
}

// ---- host side ------------------------------------------------------------------

int row_threads(int64_t V, int vec) {
  int threads = 32;
  while (threads < kMaxRowThreads && static_cast<int64_t>(threads) * vec * 2 <= V) threads <<= 1;
  return threads;
}

unsigned row_blocks(int64_t N) { return static_cast<unsigned>(std::min<int64_t>(N, int64_t{1} << 30)); }

// Logits with unit stride in the last dim and a RowIndex for them (a contiguous
// copy when the strides need one).
at::Tensor row_view(const at::Tensor& logits, RowIndex& rows) {
  at::Tensor lg = logits.stride(-1) == 1 ? logits : logits.contiguous();
  if (!make_row_index(lg, rows)) {
    lg = lg.contiguous();
    TORCH_INTERNAL_ASSERT(make_row_index(lg, rows));
  }
  return lg;
}

}  // namespace

// (what each launch computes: cross_entropy_launch.h)
cudaError_t launch_validate_targets(const at::Tensor& target, int64_t V, int64_t ignore_index,
                                    const at::Tensor& status, bool device_assert) {
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  ull* st = reinterpret_cast<ull*>(status.data_ptr<int64_t>());
  cudaError_t e = cudaMemsetAsync(st, 0, sizeof(ull), stream);
  if (e == cudaSuccess) e = cudaMemsetAsync(st + 1, 0xff, sizeof(ull), stream);
  const int64_t N = target.numel();
  if (e != cudaSuccess || N == 0) return e;
  const auto blocks = static_cast<unsigned>(std::min<int64_t>((N + 255) / 256, 1024));
  validate_targets_kernel<<<blocks, 256, 0, stream>>>(target.data_ptr<int64_t>(), N, V, ignore_index, st,
                                                      device_assert);
  return cudaGetLastError();
}

cudaError_t launch_ce_forward(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& status,
                              int64_t ignore_index, Reduction reduction, double eps, double w, const at::Tensor& loss,
                              const at::Tensor& lse, const at::Tensor* grad) {
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  RowIndex rows;
  const at::Tensor lg = row_view(logits, rows);
  const bool in_place = grad != nullptr && grad->is_same(logits);
  // in place on a copy (only when the leading strides needed one): copied back below
  const at::Tensor g = grad == nullptr ? at::Tensor() : (in_place ? lg : *grad);
  RowIndex grad_rows;
  if (g.defined()) TORCH_INTERNAL_ASSERT(make_row_index(g, grad_rows) && g.stride(-1) == 1);
  const int64_t V = lg.size(-1), N = target.numel();
  const ull* count = reinterpret_cast<const ull*>(status.data_ptr<int64_t>());
  cudaError_t err = cudaSuccess;
  const at::Tensor loss_rows =
      reduction == Reduction::None ? at::Tensor() : at::empty({N}, lse.options().dtype(at::kDouble));
  const auto red = static_cast<int64_t>(reduction);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, lg.scalar_type(), "arwrap_cross_entropy_forward_cuda", [&] {
    using A = acc_t<scalar_t>;
    A* lse_p = lse.data_ptr<A>();
    A* loss_p = reduction == Reduction::None ? loss.data_ptr<A>() : nullptr;
    double* rows_p = reduction == Reduction::None ? nullptr : loss_rows.data_ptr<double>();
    if (N > 0) {
      const int threads = row_threads(V, Pack<scalar_t>::n);
      const scalar_t* zp = lg.data_ptr<scalar_t>();
      if (g.defined()) {
        ce_forward_kernel<scalar_t, true><<<row_blocks(N), threads, 0, stream>>>(
            zp, rows, g.data_ptr<scalar_t>(), grad_rows, target.data_ptr<int64_t>(), N, V, ignore_index, red, count,
            eps, w, lse_p, loss_p, rows_p);
      } else {
        ce_forward_kernel<scalar_t, false><<<row_blocks(N), threads, 0, stream>>>(
            zp, rows, nullptr, grad_rows, target.data_ptr<int64_t>(), N, V, ignore_index, red, count, eps, w, lse_p,
            loss_p, rows_p);
      }
      err = cudaGetLastError();
    }
    if (err == cudaSuccess && reduction != Reduction::None) {
      reduce_loss_kernel<A><<<1, 1024, 0, stream>>>(rows_p, N, red, count, loss.data_ptr<A>());
      err = cudaGetLastError();
    }
  });
  if (err == cudaSuccess && in_place && !lg.is_same(logits)) logits.copy_(lg);
  return err;
}

// Gradient from the saved lse into grad (which may be logits itself).
cudaError_t launch_ce_backward(const at::Tensor& grad_loss, const std::optional<at::Tensor>& grad_lse,
                               const at::Tensor& logits, const at::Tensor& target, const at::Tensor& status,
                               const at::Tensor& lse_in, int64_t ignore_index, Reduction reduction, double eps,
                               double w, const at::Tensor& grad) {
  const bool has_glse = grad_lse.has_value() && grad_lse->defined();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  RowIndex rows;
  const at::Tensor lg = row_view(logits, rows);
  const bool in_place = grad.is_same(logits);
  const at::Tensor g = in_place ? lg : grad;
  RowIndex grad_rows;
  TORCH_INTERNAL_ASSERT(make_row_index(g, grad_rows) && g.stride(-1) == 1);
  const at::Tensor lse = lse_in.contiguous();
  const at::Tensor gl = grad_loss.contiguous();
  const at::Tensor glse = has_glse ? grad_lse->contiguous() : at::Tensor();
  const int64_t V = lg.size(-1), N = target.numel();
  const ull* count = reinterpret_cast<const ull*>(status.data_ptr<int64_t>());
  if (N == 0) return cudaSuccess;
  cudaError_t err = cudaSuccess;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, lg.scalar_type(), "arwrap_cross_entropy_backward_cuda", [&] {
    using A = acc_t<scalar_t>;
    ce_backward_kernel<scalar_t><<<row_blocks(N), row_threads(V, Pack<scalar_t>::n), 0, stream>>>(
        lg.data_ptr<scalar_t>(), rows, g.data_ptr<scalar_t>(), grad_rows, target.data_ptr<int64_t>(), N, V,
        ignore_index, static_cast<int64_t>(reduction), count, gl.data_ptr<A>(), has_glse ? glse.data_ptr<A>() : nullptr,
        lse.data_ptr<A>(), eps, w);
    err = cudaGetLastError();
  });
  if (err == cudaSuccess && in_place && !lg.is_same(logits)) logits.copy_(lg);
  return err;
}

}  // namespace arwrap::ops::cuda

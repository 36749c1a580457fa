// Pair scores for the swap local search: one thread per (leaving, entering) pair.
#include "chita/cuda/swap.hpp"
#include "device_utils.cuh"

namespace chita::cuda {

namespace {

constexpr int kSwapX = 32, kSwapY = 8;

// Thread (a, b): threadIdx.x runs over the entering columns so the row-major writes coalesce.
__global__ void __launch_bounds__(kSwapX* kSwapY)
    swap_scores_kernel(const double* __restrict__ G, std::int64_t ldg,
                       const double* __restrict__ q, double s0, const double* __restrict__ wv,
                       const std::int64_t* __restrict__ jn, std::int64_t n_jn,
                       const std::int64_t* __restrict__ io, std::int64_t n_io, double lam,
                       double* __restrict__ out) {
  const std::int64_t b = std::int64_t(blockIdx.x) * kSwapX + threadIdx.x;
  const std::int64_t a = std::int64_t(blockIdx.y) * kSwapY + threadIdx.y;
  if (a >= n_io || b >= n_jn) return;
  const std::int64_t J = jn[b], I = io[a];
  const double qj = q[J], qi = q[I];
  const double gjj = G[J * ldg + J], gii = G[I * ldg + I], gij = G[I * ldg + J];
  const double dj = -wv[J], di = wv[I];
  const double ckc = s0 + 2.0 * (dj * qj + di * qi) + dj * dj * gjj + di * di * gii +
                     2.0 * dj * di * gij;
  const double m1 = qj + gjj * dj + gij * di;
  const double m2 = qi + gij * dj + gii * di;
  const double a11 = 1.0 + gjj, a22 = gii - 1.0, a12 = gij;
  const double det = a11 * a22 - a12 * a12;  // < 0: a_i^T K^{-1} a_i < 1 on the support
  const double quad = (a22 * m1 * m1 - 2.0 * a12 * m1 * m2 + a11 * m2 * m2) / det;
  out[a * n_jn + b] = 0.5 * lam * (ckc - quad - s0 + wv[I] * wv[I] - wv[J] * wv[J]);
}

}  // namespace

void launch_swap_scores(const double* G, std::int64_t ldg, const double* q, double s0,
                        const double* wv, const std::int64_t* jn, std::int64_t n_jn,
                        const std::int64_t* io, std::int64_t n_io, double lam, double* out,
                        cudaStream_t stream) {
  if (n_jn == 0 || n_io == 0) return;
  const dim3 grid(grid_for(n_jn, kSwapX, 1LL << 31), grid_for(n_io, kSwapY, 65535));
  if (std::int64_t(grid.y) * kSwapY < n_io)
    throw std::invalid_argument("chita_core CUDA: `n_io` is too large for swap_scores");
  swap_scores_kernel<<<grid, dim3(kSwapX, kSwapY), 0, stream>>>(G, ldg, q, s0, wv, jn, n_jn, io,
                                                                n_io, lam, out);
  CHITA_CUDA_LAUNCHED("swap_scores_kernel");
}

}  // namespace chita::cuda

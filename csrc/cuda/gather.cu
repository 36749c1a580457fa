// Gathering support columns of A to float64: the panels the dense algebra of backsolve, the
// support Gram matrix and the swap search works on (CuPy / cuBLAS / cuSOLVER on the Python side).
#include "chita/cuda/gather.hpp"

#include <algorithm>

#include "device_utils.cuh"

namespace chita::cuda {

namespace {

constexpr int kTile = 32;
constexpr int kTileRows = 8;

// X[t, i] (column-major, ld = n: column t contiguous) = A[i, idx[s0 + t]] for t < cb, float64.
// F order copies columns (coalesced on both sides); C order goes through a shared-memory tile so
// the row reads and the column writes are both coalesced.
template <class T>
__global__ void __launch_bounds__(kTile* kTileRows)
    gather_panel_kernel(const T* __restrict__ A, std::int64_t n, std::int64_t p, bool col_major,
                        const std::int64_t* __restrict__ idx, std::int64_t cb,
                        double* __restrict__ X) {
  __shared__ double tile[kTile][kTile + 1];
  const std::int64_t i0 = std::int64_t(blockIdx.x) * kTile, t0 = std::int64_t(blockIdx.y) * kTile;
  if (col_major) {
    const std::int64_t i = i0 + threadIdx.x;
    if (i >= n) return;
    for (int r = threadIdx.y; r < kTile; r += kTileRows) {
      const std::int64_t t = t0 + r;
      if (t < cb) X[t * n + i] = to_f64(A[idx[t] * n + i]);
    }
    return;
  }
  for (int r = threadIdx.y; r < kTile; r += kTileRows) {
    const std::int64_t i = i0 + r, t = t0 + threadIdx.x;
    if (i < n && t < cb) tile[r][threadIdx.x] = to_f64(A[i * p + idx[t]]);
  }
  __syncthreads();
  for (int r = threadIdx.y; r < kTile; r += kTileRows) {
    const std::int64_t t = t0 + r, i = i0 + threadIdx.x;
    if (i < n && t < cb) X[t * n + i] = tile[threadIdx.x][r];
  }
}

}  // namespace

void gather_columns(const DeviceMatrix& A, const std::int64_t* idx, std::int64_t m, double* X,
                    cudaStream_t stream) {
  // gridDim.y is at most 65535: launch in slices of that many column tiles.
  constexpr std::int64_t kSlice = 65535LL * kTile;
  const dim3 block(kTile, kTileRows);
  for (std::int64_t s0 = 0; s0 < m; s0 += kSlice) {
    const std::int64_t cb = std::min(kSlice, m - s0);
    const dim3 grid(grid_for(A.n, kTile, 1LL << 31), grid_for(cb, kTile, 65535));
    dispatch_dtype(A.dtype, [&](auto tag) {
      using T = typename decltype(tag)::type;
      gather_panel_kernel<T><<<grid, block, 0, stream>>>(
          static_cast<const T*>(A.data), A.n, A.p, A.col_major, idx + s0, cb, X + s0 * A.n);
    });
    CHITA_CUDA_LAUNCHED("gather_panel_kernel");
  }
}

}  // namespace chita::cuda

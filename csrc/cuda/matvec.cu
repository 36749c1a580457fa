// Support mat-vec A[:, idx] @ x, its transpose, and the index gather for active sets.
#include "chita/cuda/gradient.hpp"
#include "chita/cuda/matvec.hpp"
#include "device_utils.cuh"

namespace chita::cuda {

namespace {

constexpr int kRowTile = 128;  // F order: rows per block, one per thread
constexpr int kColGroup = 8;   // F order: columns whose loads are in flight together

// F order: block (tile, chunk) sums x[s] * A[rows of tile, idx[s]] over the chunk's columns.
// Each column read is kRowTile consecutive elements (coalesced); idx[s] and x[s] are the same
// for the whole block (broadcast loads).
template <class T>
__global__ void __launch_bounds__(kRowTile)
    matvec_f_kernel(const T* __restrict__ A, std::int64_t n, const std::int64_t* __restrict__ idx,
                    std::int64_t m, const double* __restrict__ x, std::int64_t cols_per_chunk,
                    double* __restrict__ dst) {
  const std::int64_t i = std::int64_t(blockIdx.x) * kRowTile + threadIdx.x;
  const std::int64_t s_begin = std::int64_t(blockIdx.y) * cols_per_chunk;
  const std::int64_t s_end = min(m, s_begin + cols_per_chunk);
  if (i >= n) return;
  Acc<T> acc = 0;
  std::int64_t s = s_begin;
  for (; s + kColGroup <= s_end; s += kColGroup) {
    T a[kColGroup];
#pragma unroll
    for (int q = 0; q < kColGroup; ++q) a[q] = ldg(A + __ldg(idx + s + q) * n + i);
#pragma unroll
    for (int q = 0; q < kColGroup; ++q)
      acc += to_acc(a[q]) * static_cast<Acc<T>>(__ldg(x + s + q));
  }
  for (; s < s_end; ++s)
    acc += to_acc(ldg(A + __ldg(idx + s) * n + i)) * static_cast<Acc<T>>(__ldg(x + s));
  dst[std::int64_t(blockIdx.y) * n + i] = double(acc);
}

// C order: block (row, split) sums A[row, idx[s]] * x[s] over the split's support range, threads
// strided over it, then a fixed-order block reduction.
template <class T>
__global__ void __launch_bounds__(kBlock)
    matvec_c_kernel(const T* __restrict__ A, std::int64_t n, std::int64_t p,
                    const std::int64_t* __restrict__ idx, std::int64_t m,
                    const double* __restrict__ x, std::int64_t cols_per_split,
                    double* __restrict__ dst) {
  const std::int64_t i = blockIdx.x;
  const T* row = A + i * p;
  const std::int64_t s_begin = std::int64_t(blockIdx.y) * cols_per_split;
  const std::int64_t s_end = min(m, s_begin + cols_per_split);
  Acc<T> acc = 0;
#pragma unroll 4
  for (std::int64_t s = s_begin + threadIdx.x; s < s_end; s += kBlock)
    acc += to_acc(ldg(row + __ldg(idx + s))) * static_cast<Acc<T>>(__ldg(x + s));
  const double total = block_reduce<SumOp, kBlock>(double(acc));
  if (threadIdx.x == 0) dst[std::int64_t(blockIdx.y) * n + i] = total;
}

// out[i] = sum over chunks c (in order) of partial[c, i].
__global__ void sum_rows_kernel(const double* __restrict__ partial, int chunks, std::int64_t n,
                                double* __restrict__ out) {
  const std::int64_t i = std::int64_t(blockIdx.x) * kBlock + threadIdx.x;
  if (i >= n) return;
  double acc = 0.0;
  for (int c = 0; c < chunks; ++c) acc += partial[std::int64_t(c) * n + i];
  out[i] = acc;
}

__global__ void gather_index_kernel(const std::int64_t* __restrict__ map,
                                    const std::int64_t* __restrict__ idx, std::int64_t m,
                                    std::int64_t* __restrict__ out) {
  const std::int64_t s = std::int64_t(blockIdx.x) * kBlock + threadIdx.x;
  if (s < m) out[s] = map[idx[s]];
}

template <class T>
void support_matvec(const DeviceMatrix& A, const std::int64_t* idx, std::int64_t m,
                    const double* x, double* out, cudaStream_t stream) {
  const T* data = static_cast<const T*>(A.data);
  const std::int64_t n = A.n;
  const std::int64_t sms = sm_count();
  std::int64_t chunks, per_chunk;
  if (A.col_major) {
    // About 16 blocks of kRowTile threads per SM; at least 2 column groups per chunk.
    const std::int64_t tiles = (n + kRowTile - 1) / kRowTile;
    chunks = (sms * 16 + tiles - 1) / tiles;
    chunks = std::min<std::int64_t>({chunks, (m + 2 * kColGroup - 1) / (2 * kColGroup), 65535});
  } else {
    // About 8 blocks per SM; at least 8 loads per thread per split.
    chunks = (sms * 8 + n - 1) / n;
    chunks = std::min<std::int64_t>({chunks, (m + 8 * kBlock - 1) / (8 * kBlock), 65535});
  }
  if (chunks < 1) chunks = 1;
  per_chunk = (m + chunks - 1) / chunks;
  chunks = (m + per_chunk - 1) / per_chunk;
  Buffer<double> partial(chunks > 1 ? std::size_t(chunks) * n : 0, stream);
  double* dst = chunks > 1 ? partial.get() : out;
  if (A.col_major) {
    const dim3 grid(grid_for(n, kRowTile, 1LL << 31), unsigned(chunks));
    matvec_f_kernel<T><<<grid, kRowTile, 0, stream>>>(data, n, idx, m, x, per_chunk, dst);
    CHITA_CUDA_LAUNCHED("matvec_f_kernel");
  } else {
    const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(chunks));
    matvec_c_kernel<T><<<grid, kBlock, 0, stream>>>(data, n, A.p, idx, m, x, per_chunk, dst);
    CHITA_CUDA_LAUNCHED("matvec_c_kernel");
  }
  if (chunks > 1) {
    sum_rows_kernel<<<grid_for(n, kBlock, 1LL << 31), kBlock, 0, stream>>>(partial.get(),
                                                                           int(chunks), n, out);
    CHITA_CUDA_LAUNCHED("sum_rows_kernel");
  }
}

}  // namespace

void launch_support_matvec(const DeviceMatrix& A, const std::int64_t* idx, std::int64_t m,
                           const double* x, double* out, cudaStream_t stream) {
  if (A.n == 0) return;
  if (m == 0) {
    CHITA_CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(double) * A.n, stream));
    return;
  }
  dispatch_dtype(A.dtype, [&](auto tag) {
    support_matvec<typename decltype(tag)::type>(A, idx, m, x, out, stream);
  });
}

void launch_support_rmatvec(const DeviceMatrix& A, const std::int64_t* idx, std::int64_t m,
                            const double* y, double* out, cudaStream_t stream) {
  launch_column_dots(A, idx, m, y, nullptr, nullptr, 0.0, out, stream);
}

void launch_gather_index(const std::int64_t* map, const std::int64_t* idx, std::int64_t m,
                         std::int64_t* out, cudaStream_t stream) {
  if (m == 0) return;
  gather_index_kernel<<<grid_for(m, kBlock, 1LL << 31), kBlock, 0, stream>>>(map, idx, m, out);
  CHITA_CUDA_LAUNCHED("gather_index_kernel");
}

}  // namespace chita::cuda

// Row top-k and N:M masks of the layer-wise mode (chita/cuda/rows.hpp).
#include <math_constants.h>

#include <cub/block/block_scan.cuh>

#include "chita/cuda/rows.hpp"
#include "device_utils.cuh"

namespace chita::cuda {

namespace {

constexpr int kRowThreads = 256;
constexpr int kDigitBits = 8;
constexpr int kBins = 1 << kDigitBits;
constexpr int kPasses = 64 / kDigitBits;

// A key whose unsigned order is the order of the scores: NaN as -inf, -0.0 as +0.0, negative
// numbers bit-inverted, non-negative ones with the sign bit set.
__device__ __forceinline__ unsigned long long order_key(double x) {
  if (isnan(x)) x = -CUDART_INF;
  if (x == 0.0) x = 0.0;
  const unsigned long long bits = static_cast<unsigned long long>(__double_as_longlong(x));
  return (bits >> 63) ? ~bits : (bits | (1ull << 63));
}

// The CPU kernel's order: larger score first, then the lower index.
__device__ __forceinline__ bool before(unsigned long long ka, std::int64_t a,
                                       unsigned long long kb, std::int64_t b) {
  return ka > kb || (ka == kb && a < b);
}

__global__ void __launch_bounds__(kRowThreads)
    row_top_kernel(const double* __restrict__ s, std::int64_t d, std::int64_t k,
                   std::uint8_t* __restrict__ mask) {
  using Scan = cub::BlockScan<int, kRowThreads>;
  __shared__ unsigned int hist[kBins];
  __shared__ unsigned long long prefix_s;
  __shared__ long long need_s;
  __shared__ typename Scan::TempStorage scan_storage;
  const double* row = s + std::int64_t(blockIdx.x) * d;
  std::uint8_t* out = mask + std::int64_t(blockIdx.x) * d;

  if (threadIdx.x == 0) {
    prefix_s = 0ull;
    need_s = k;
  }
  for (int pass = 0; pass < kPasses; ++pass) {
    const int shift = 64 - kDigitBits * (pass + 1);
    const unsigned long long high = pass == 0 ? 0ull : (~0ull << (shift + kDigitBits));
    for (int b = threadIdx.x; b < kBins; b += kRowThreads) hist[b] = 0;
    __syncthreads();  // also publishes prefix_s / need_s of the previous pass
    const unsigned long long prefix = prefix_s;
    for (std::int64_t j = threadIdx.x; j < d; j += kRowThreads) {
      const unsigned long long key = order_key(row[j]);
      if (((key ^ prefix) & high) == 0) atomicAdd(&hist[(key >> shift) & (kBins - 1)], 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {  // the digit holding the need-th largest key, from the top
      long long need = need_s, above = 0;
      int digit = 0;
      for (int b = kBins - 1; b >= 0; --b) {
        if (above + hist[b] >= need) {
          digit = b;
          break;
        }
        above += hist[b];
      }
      need_s = need - above;
      prefix_s = prefix | (static_cast<unsigned long long>(digit) << shift);
    }
    __syncthreads();
  }

  // prefix_s is now the k-th largest key T: keep every key > T and the first need_s keys == T
  // in index order, ranked chunk by chunk with a block scan.
  const unsigned long long T = prefix_s;
  const long long need = need_s;
  long long ties_before = 0;  // ties at T in earlier chunks (the same in every thread)
  for (std::int64_t base = 0; base < d; base += kRowThreads) {
    const std::int64_t j = base + threadIdx.x;
    const unsigned long long key = j < d ? order_key(row[j]) : 0ull;
    const int tie = (j < d && key == T) ? 1 : 0;
    int rank = 0, total = 0;
    Scan(scan_storage).ExclusiveSum(tie, rank, total);
    if (j < d) out[j] = std::uint8_t(key > T || (tie && ties_before + rank < need));
    ties_before += total;
    __syncthreads();  // scan_storage is reused by the next chunk
  }
}

__global__ void __launch_bounds__(kBlock)
    group_top_kernel(const double* __restrict__ s, std::int64_t groups, std::int64_t n,
                     std::int64_t m, std::uint8_t* __restrict__ mask) {
  const std::int64_t g = std::int64_t(blockIdx.x) * kBlock + threadIdx.x;
  if (g >= groups) return;
  const double* v = s + g * m;
  std::uint8_t* out = mask + g * m;
  for (std::int64_t e = 0; e < m; ++e) {
    const unsigned long long ke = order_key(v[e]);
    std::int64_t rank = 0;
    for (std::int64_t f = 0; f < m; ++f) rank += before(order_key(v[f]), f, ke, e);
    out[e] = std::uint8_t(rank < n);
  }
}

__global__ void fill_kernel(std::uint8_t* out, std::int64_t count, std::uint8_t value) {
  const std::int64_t i = std::int64_t(blockIdx.x) * kBlock + threadIdx.x;
  if (i < count) out[i] = value;
}

}  // namespace

void launch_row_top_mask(const double* s, std::int64_t rows, std::int64_t d, std::int64_t k,
                         std::uint8_t* mask, cudaStream_t stream) {
  if (rows == 0 || d == 0) return;
  if (k <= 0 || k >= d) {  // nothing or everything kept: no selection
    fill_kernel<<<grid_for(rows * d, kBlock, 1LL << 31), kBlock, 0, stream>>>(
        mask, rows * d, std::uint8_t(k > 0));
    CHITA_CUDA_LAUNCHED("fill_kernel");
    return;
  }
  if (rows > std::int64_t(0x7fffffff)) throw std::invalid_argument("`rows` is too large");
  row_top_kernel<<<unsigned(rows), kRowThreads, 0, stream>>>(s, d, k, mask);
  CHITA_CUDA_LAUNCHED("row_top_kernel");
}

void launch_group_top_mask(const double* s, std::int64_t rows, std::int64_t d, std::int64_t n,
                           std::int64_t m, std::uint8_t* mask, cudaStream_t stream) {
  const std::int64_t groups = rows * (d / m);
  if (groups == 0) return;
  group_top_kernel<<<grid_for(groups, kBlock, 1LL << 31), kBlock, 0, stream>>>(s, groups, n, m,
                                                                              mask);
  CHITA_CUDA_LAUNCHED("group_top_kernel");
}

}  // namespace chita::cuda

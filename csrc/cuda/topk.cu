// Radix select of the k largest magnitudes.
#include <cub/device/device_scan.cuh>
#include <cub/device/device_select.cuh>
#include <thrust/iterator/counting_iterator.h>

#include "chita/cuda/topk.hpp"
#include "device_utils.cuh"

namespace chita::cuda {

namespace {

constexpr int kDigitBits = 8;
constexpr int kBins = 1 << kDigitBits;
constexpr int kPasses = 64 / kDigitBits;

// Selection state, kept on the device between passes.
struct SelectState {
  unsigned long long prefix;  // digits found so far (the high bits of the threshold key)
  long long need;             // rank of the wanted key among keys that match the prefix
};

__device__ __forceinline__ unsigned long long magnitude_key(double x) {
  return static_cast<unsigned long long>(__double_as_longlong(fabs(x)));
}

// Histogram of digit `pass` over the keys whose higher digits equal the prefix. Shared-memory
// counts per block, then one integer atomic per bin and block (integer sums: deterministic).
__global__ void __launch_bounds__(kBlock)
    histogram_kernel(const double* __restrict__ v, std::int64_t p, int pass,
                     const SelectState* __restrict__ state, unsigned long long* __restrict__ hist) {
  __shared__ unsigned int local[kBins];
  for (int b = threadIdx.x; b < kBins; b += kBlock) local[b] = 0;
  __syncthreads();
  const int shift = 64 - kDigitBits * (pass + 1);
  // Bits above this digit must match; none in the first pass.
  const unsigned long long high = pass == 0 ? 0ull : (~0ull << (shift + kDigitBits));
  const unsigned long long prefix = state->prefix;
  // Magnitudes cluster in a few exponent bins (the top digits), so lanes of a warp that hit the
  // same bin are combined first (one shared atomic per distinct bin and warp). The loop runs
  // warp-uniformly so that every lane takes part in the match.
  const int lane = threadIdx.x % kWarp;
  for (std::int64_t base = std::int64_t(blockIdx.x) * kBlock + (threadIdx.x - lane); base < p;
       base += std::int64_t(gridDim.x) * kBlock) {
    const std::int64_t i = base + lane;
    int bin = kBins;  // no bin: out of range or another prefix
    if (i < p) {
      const unsigned long long key = magnitude_key(__ldg(v + i));
      if (((key ^ prefix) & high) == 0) bin = int((key >> shift) & (kBins - 1));
    }
    const unsigned peers = __match_any_sync(0xffffffffu, bin);
    if (bin < kBins && lane == __ffs(peers) - 1) atomicAdd(&local[bin], unsigned(__popc(peers)));
  }
  __syncthreads();
  for (int b = threadIdx.x; b < kBins; b += kBlock)
    if (local[b] != 0) atomicAdd(hist + b, static_cast<unsigned long long>(local[b]));
}

// One thread walks the bins from the top: the digit holding the need-th largest key, as the CPU
// pick_digit does.
__global__ void pick_digit_kernel(const unsigned long long* __restrict__ hist, int pass,
                                  SelectState* state) {
  if (threadIdx.x != 0) return;
  const int shift = 64 - kDigitBits * (pass + 1);
  long long need = state->need, above = 0;
  int digit = 0;
  for (int d = kBins - 1; d >= 0; --d) {
    const long long h = static_cast<long long>(hist[d]);
    if (above + h >= need) {
      digit = d;
      break;
    }
    above += h;
  }
  state->need = need - above;
  state->prefix |= static_cast<unsigned long long>(digit) << shift;
}

// eq[i] = (key_i == T)
__global__ void equal_flags_kernel(const double* __restrict__ v, std::int64_t p,
                                   const SelectState* __restrict__ state,
                                   std::int64_t* __restrict__ eq) {
  const std::int64_t i = std::int64_t(blockIdx.x) * kBlock + threadIdx.x;
  if (i < p) eq[i] = magnitude_key(v[i]) == state->prefix;
}

// keep[i] = key_i > T, or key_i == T among the first `need` such keys (eq_rank: exclusive scan).
__global__ void keep_flags_kernel(const double* __restrict__ v, std::int64_t p,
                                  const SelectState* __restrict__ state,
                                  const std::int64_t* __restrict__ eq_rank,
                                  unsigned char* __restrict__ keep) {
  const std::int64_t i = std::int64_t(blockIdx.x) * kBlock + threadIdx.x;
  if (i >= p) return;
  const unsigned long long key = magnitude_key(v[i]), t = state->prefix;
  keep[i] = key > t || (key == t && eq_rank[i] < state->need);
}

__global__ void init_select_kernel(SelectState* state, std::int64_t k, unsigned long long* hist) {
  for (int b = threadIdx.x; b < kBins * kPasses; b += blockDim.x) hist[b] = 0;
  if (threadIdx.x == 0) *state = SelectState{0ull, static_cast<long long>(k)};
}

__global__ void iota_kernel(std::int64_t* out, std::int64_t k) {
  const std::int64_t i = std::int64_t(blockIdx.x) * kBlock + threadIdx.x;
  if (i < k) out[i] = i;
}

}  // namespace

void launch_topk(const double* v, std::int64_t p, std::int64_t k, std::int64_t* out,
                 cudaStream_t stream) {
  if (k >= p) {  // everything is selected (the CPU kernel returns 0..p-1 too)
    iota_kernel<<<grid_for(p, kBlock, 1LL << 31), kBlock, 0, stream>>>(out, p);
    CHITA_CUDA_LAUNCHED("iota_kernel");
    return;
  }
  // Device state and the 8 histograms, initialised by a kernel (no host copy, no sync).
  Buffer<SelectState> state(1, stream);
  Buffer<unsigned long long> hist(std::size_t(kBins) * kPasses, stream);
  init_select_kernel<<<1, kBlock, 0, stream>>>(state.get(), k, hist.get());
  CHITA_CUDA_LAUNCHED("init_select_kernel");
  const unsigned hist_blocks = grid_for(p, kBlock * 8, std::int64_t(sm_count()) * 8);
  for (int pass = 0; pass < kPasses; ++pass) {
    unsigned long long* h = hist.get() + std::size_t(pass) * kBins;
    histogram_kernel<<<hist_blocks, kBlock, 0, stream>>>(v, p, pass, state.get(), h);
    CHITA_CUDA_LAUNCHED("histogram_kernel");
    pick_digit_kernel<<<1, kWarp, 0, stream>>>(h, pass, state.get());
    CHITA_CUDA_LAUNCHED("pick_digit_kernel");
  }

  // Emission: rank the ties in index order, then compact the kept indices stably.
  Buffer<std::int64_t> eq(p, stream);
  Buffer<unsigned char> keep(p, stream);
  Buffer<std::int64_t> n_selected(1, stream);
  const unsigned blocks = grid_for(p, kBlock, 1LL << 31);
  equal_flags_kernel<<<blocks, kBlock, 0, stream>>>(v, p, state.get(), eq.get());
  CHITA_CUDA_LAUNCHED("equal_flags_kernel");
  const thrust::counting_iterator<std::int64_t> index(0);
  std::size_t scan_bytes = 0, select_bytes = 0;
  CHITA_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, eq.get(), eq.get(), p,
                                                 stream));
  CHITA_CUDA_CHECK(cub::DeviceSelect::Flagged(nullptr, select_bytes, index, keep.get(), out,
                                              n_selected.get(), p, stream));
  Scratch temp(std::max(scan_bytes, select_bytes), stream);
  CHITA_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(temp.as<void>(), scan_bytes, eq.get(), eq.get(),
                                                 p, stream));
  keep_flags_kernel<<<blocks, kBlock, 0, stream>>>(v, p, state.get(), eq.get(), keep.get());
  CHITA_CUDA_LAUNCHED("keep_flags_kernel");
  CHITA_CUDA_CHECK(cub::DeviceSelect::Flagged(temp.as<void>(), select_bytes, index, keep.get(),
                                              out, n_selected.get(), p, stream));
}

}  // namespace chita::cuda

// Device helpers shared by every .cu file: storage-type dispatch, load-and-convert for the four
// storage types, 16-byte vector loads, deterministic warp/block reductions and a two-stage
// reduction to a device scalar. Internal to csrc/cuda (device code; not for the host compiler).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>

#include "chita/cuda/common.hpp"

namespace chita::cuda {

constexpr int kWarp = 32;
constexpr int kBlock = 256;  // default block size

template <class T>
struct Tag {
  using type = T;
};

// Calls f(Tag<T>{}) with T the storage type of A: one switch, shared by every launcher.
template <class F>
void dispatch_dtype(Dtype d, F&& f) {
  switch (d) {
    case Dtype::f32: f(Tag<float>{}); break;
    case Dtype::f64: f(Tag<double>{}); break;
    case Dtype::f16: f(Tag<__half>{}); break;
    case Dtype::bf16: f(Tag<__nv_bfloat16>{}); break;
    default: throw std::invalid_argument("chita_core CUDA: unsupported dtype of `A`");
  }
}

// Per-thread accumulator: float64 for float32/float64 storage; float32 for the 16-bit types
// (their products are exact in float32 and the per-thread sums are short). Every sum across
// threads is float64.
template <class T> struct AccOf { using type = double; };
template <> struct AccOf<__half> { using type = float; };
template <> struct AccOf<__nv_bfloat16> { using type = float; };
template <class T> using Acc = typename AccOf<T>::type;

__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ double to_acc(float x) { return double(x); }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }
template <class T>
__device__ __forceinline__ double to_f64(T x) { return double(to_acc(x)); }

template <class T>
__device__ __forceinline__ T ldg(const T* p) { return __ldg(p); }

// 16 bytes of T, read with one vector load (the address must be 16-byte aligned).
template <class T>
struct Vec16 {
  static constexpr int kN = 16 / sizeof(T);
  T v[kN];
};
template <class T>
__device__ __forceinline__ Vec16<T> load16(const T* p) {
  const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
  Vec16<T> out;
  static_assert(sizeof(out) == sizeof(raw), "Vec16 must be 16 bytes");
  memcpy(&out, &raw, sizeof raw);
  return out;
}

inline bool aligned16(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0; }

// ---------------------------------------------------------------- reductions (fixed order)

struct SumOp {
  __device__ __forceinline__ static double apply(double a, double b) { return a + b; }
  __host__ __device__ static constexpr double identity() { return 0.0; }
};
struct MaxOp {
  __device__ __forceinline__ static double apply(double a, double b) { return a > b ? a : b; }
  __host__ __device__ static constexpr double identity() {
    return -std::numeric_limits<double>::infinity();
  }
};
struct MinOp {
  __device__ __forceinline__ static double apply(double a, double b) { return a < b ? a : b; }
  __host__ __device__ static constexpr double identity() {
    return std::numeric_limits<double>::infinity();
  }
};

template <class Op>
__device__ __forceinline__ double warp_reduce(double x) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) x = Op::apply(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

// Result valid in thread 0. Every thread of the block must call it; order fixed by thread id.
template <class Op, int kThreads>
__device__ __forceinline__ double block_reduce(double x) {
  static_assert(kThreads % kWarp == 0 && kThreads <= 1024, "block size");
  __shared__ double partial[kThreads / kWarp];
  x = warp_reduce<Op>(x);
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  if (lane == 0) partial[warp] = x;
  __syncthreads();
  if (warp == 0) {
    x = lane < kThreads / kWarp ? partial[lane] : Op::identity();
    x = warp_reduce<Op>(x);
  }
  __syncthreads();  // `partial` may be reused by a following call
  return x;
}

constexpr int kReduceBlocks = 512;  // partials of the first stage; the second stage is 1 block

// Stage 1: block b reduces f(i) over a grid-stride range into partials[b].
template <class Op, class F>
__global__ void __launch_bounds__(kBlock) reduce_stage1_kernel(std::int64_t count, F f,
                                                               double* partials) {
  double acc = Op::identity();
  for (std::int64_t i = blockIdx.x * std::int64_t(kBlock) + threadIdx.x; i < count;
       i += std::int64_t(gridDim.x) * kBlock)
    acc = Op::apply(acc, f(i));
  acc = block_reduce<Op, kBlock>(acc);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

// Stage 2: one block reduces the partials (in block order) into *dst, scaled by `scale`.
template <class Op>
__global__ void __launch_bounds__(kBlock) reduce_stage2_kernel(const double* partials, int count,
                                                               double* dst) {
  double acc = Op::identity();
  for (int i = threadIdx.x; i < count; i += kBlock) acc = Op::apply(acc, partials[i]);
  acc = block_reduce<Op, kBlock>(acc);
  if (threadIdx.x == 0) *dst = acc;
}

// *dst = Op over i in [0, count) of f(i), on the stream, deterministic for a given device.
// `partials` holds kReduceBlocks doubles of scratch.
template <class Op, class F>
void reduce_to(double* dst, std::int64_t count, F f, double* partials, cudaStream_t stream) {
  std::int64_t blocks = (count + kBlock - 1) / kBlock;
  if (blocks > kReduceBlocks) blocks = kReduceBlocks;
  if (blocks < 1) blocks = 1;
  reduce_stage1_kernel<Op><<<int(blocks), kBlock, 0, stream>>>(count, f, partials);
  CHITA_CUDA_LAUNCHED("reduce_stage1_kernel");
  reduce_stage2_kernel<Op><<<1, kBlock, 0, stream>>>(partials, int(blocks), dst);
  CHITA_CUDA_LAUNCHED("reduce_stage2_kernel");
}

inline unsigned grid_for(std::int64_t count, int per_block, std::int64_t max_blocks) {
  std::int64_t b = (count + per_block - 1) / per_block;
  if (b > max_blocks) b = max_blocks;
  return unsigned(b < 1 ? 1 : b);
}

}  // namespace chita::cuda

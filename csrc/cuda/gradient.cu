// Column dot products: A^T r (+ ridge term), column squared norms, and A[:, idx]^T y.
#include "chita/cuda/gradient.hpp"
#include "device_utils.cuh"

namespace chita::cuda {

namespace {

// Contribution of one element: a * y_i, or a^2 for the squared norms (y null).
template <class T, bool kSquare>
__device__ __forceinline__ Acc<T> term(T a, const double* y, std::int64_t i) {
  const Acc<T> x = to_acc(a);
  if constexpr (kSquare) {
    return x * x;
  } else {
    return x * static_cast<Acc<T>>(__ldg(y + i));
  }
}

__device__ __forceinline__ double ridge_term(const double* w, const double* w_bar, double ridge,
                                             std::int64_t j) {
  return w != nullptr ? ridge * (w[j] - w_bar[j]) : 0.0;
}

// F order: a warp per column (grid-stride over columns). The column is read as a scalar head up
// to the first 16-byte boundary, 16-byte vectors, and a scalar tail, so every column gets wide
// loads whatever n is; four vectors per lane are in flight per iteration.
template <class T, bool kSquare>
__global__ void __launch_bounds__(kBlock)
    column_dots_f_kernel(const T* __restrict__ A, std::int64_t n, const std::int64_t* idx,
                         std::int64_t count, const double* __restrict__ y, const double* w,
                         const double* w_bar, double ridge, double* __restrict__ out) {
  constexpr int V = Vec16<T>::kN;
  const int lane = threadIdx.x % kWarp;
  const std::int64_t warps = std::int64_t(gridDim.x) * (kBlock / kWarp);
  for (std::int64_t s = (std::int64_t(blockIdx.x) * kBlock + threadIdx.x) / kWarp; s < count;
       s += warps) {
    const std::int64_t j = idx != nullptr ? idx[s] : s;
    const T* col = A + j * n;
    const std::uintptr_t addr = reinterpret_cast<std::uintptr_t>(col);
    std::int64_t head = std::int64_t(((16 - (addr & 15)) & 15) / sizeof(T));
    if (head > n) head = n;
    Acc<T> acc = 0;
    if (lane < head) acc += term<T, kSquare>(col[lane], y, lane);
    const std::int64_t nvec = (n - head) / V;
    const T* body = col + head;
#pragma unroll 4
    for (std::int64_t v = lane; v < nvec; v += kWarp) {
      const Vec16<T> x = load16(body + v * V);
#pragma unroll
      for (int u = 0; u < V; ++u) acc += term<T, kSquare>(x.v[u], y, head + v * V + u);
    }
    for (std::int64_t i = head + nvec * V + lane; i < n; i += kWarp)
      acc += term<T, kSquare>(col[i], y, i);
    const double total = warp_reduce<SumOp>(double(acc));
    if (lane == 0) out[s] = total + ridge_term(w, w_bar, ridge, j);
  }
}

// C order: thread t owns W consecutive columns (W = 16 bytes of T when rows are 16-byte aligned
// and all columns are wanted, else one column, gathered through idx), and loops over the rows
// of its chunk (blockIdx.y) with four rows of loads in flight. A warp reads 512 contiguous
// bytes of a row per load. With one chunk the result goes straight to `out` with the ridge
// term; otherwise to partial[chunk, count].
template <class T, bool kSquare, bool kVec>
__global__ void __launch_bounds__(kBlock)
    column_dots_c_kernel(const T* __restrict__ A, std::int64_t n, std::int64_t p,
                         const std::int64_t* idx, std::int64_t count, const double* __restrict__ y,
                         std::int64_t rows_per_chunk, const double* w, const double* w_bar,
                         double ridge, double* __restrict__ dst) {
  constexpr int W = kVec ? Vec16<T>::kN : 1;
  const std::int64_t t = std::int64_t(blockIdx.x) * kBlock + threadIdx.x;
  const std::int64_t s0 = t * W;  // first output of this thread
  if (s0 >= count) return;
  const std::int64_t j0 = kVec ? s0 : (idx != nullptr ? idx[s0] : s0);
  const std::int64_t i_begin = std::int64_t(blockIdx.y) * rows_per_chunk;
  const std::int64_t i_end = min(n, i_begin + rows_per_chunk);

  Acc<T> acc[W];
#pragma unroll
  for (int u = 0; u < W; ++u) acc[u] = 0;

  auto load = [&](std::int64_t i) {
    if constexpr (kVec) {
      return load16(A + i * p + j0);
    } else {
      Vec16<T> x;  // only x.v[0] is used
      x.v[0] = ldg(A + i * p + j0);
      return x;
    }
  };
  std::int64_t i = i_begin;
  for (; i + 4 <= i_end; i += 4) {
    const Vec16<T> x0 = load(i), x1 = load(i + 1), x2 = load(i + 2), x3 = load(i + 3);
#pragma unroll
    for (int u = 0; u < W; ++u) {
      acc[u] += term<T, kSquare>(x0.v[u], y, i);
      acc[u] += term<T, kSquare>(x1.v[u], y, i + 1);
      acc[u] += term<T, kSquare>(x2.v[u], y, i + 2);
      acc[u] += term<T, kSquare>(x3.v[u], y, i + 3);
    }
  }
  for (; i < i_end; ++i) {
    const Vec16<T> x = load(i);
#pragma unroll
    for (int u = 0; u < W; ++u) acc[u] += term<T, kSquare>(x.v[u], y, i);
  }
  const bool final = gridDim.y == 1;
#pragma unroll
  for (int u = 0; u < W; ++u) {
    const std::int64_t s = s0 + u;
    if (final) {
      const std::int64_t j = kVec ? s : j0;
      dst[s] = double(acc[u]) + ridge_term(w, w_bar, ridge, j);
    } else {
      dst[std::int64_t(blockIdx.y) * count + s] = double(acc[u]);
    }
  }
}

// out[s] = sum over chunks, in chunk order, of partial[c, s], plus the ridge term.
__global__ void sum_chunks_kernel(const double* __restrict__ partial, int chunks,
                                  std::int64_t count, const std::int64_t* idx, const double* w,
                                  const double* w_bar, double ridge, double* __restrict__ out) {
  const std::int64_t s = std::int64_t(blockIdx.x) * kBlock + threadIdx.x;
  if (s >= count) return;
  double acc = 0.0;
  for (int c = 0; c < chunks; ++c) acc += partial[std::int64_t(c) * count + s];
  out[s] = acc + ridge_term(w, w_bar, ridge, idx != nullptr ? idx[s] : s);
}

template <class T, bool kSquare>
void column_dots(const DeviceMatrix& A, const std::int64_t* idx, std::int64_t count,
                 const double* y, const double* w, const double* w_bar, double ridge, double* out,
                 cudaStream_t stream) {
  const T* data = static_cast<const T*>(A.data);
  const std::int64_t n = A.n;
  const int sms = sm_count();
  if (A.col_major) {
    const unsigned blocks = grid_for(count, kBlock / kWarp, std::int64_t(sms) * 32);
    column_dots_f_kernel<T, kSquare>
        <<<blocks, kBlock, 0, stream>>>(data, n, idx, count, y, w, w_bar, ridge, out);
    CHITA_CUDA_LAUNCHED("column_dots_f_kernel");
    return;
  }
  // Wide loads need every row start 16-byte aligned and all columns (no gather).
  const bool vec = idx == nullptr && aligned16(data) && (A.p * sizeof(T)) % 16 == 0;
  const std::int64_t width = vec ? Vec16<T>::kN : 1;
  const std::int64_t threads = (count + width - 1) / width;
  // Enough row chunks to give the GPU about 2048 threads per SM, each chunk at least 32 rows.
  const std::int64_t target = std::int64_t(sms) * 2048;
  std::int64_t chunks = (target + threads - 1) / threads;
  chunks = std::min<std::int64_t>({chunks, (n + 31) / 32, 65535});
  if (chunks < 1) chunks = 1;
  const std::int64_t rows_per_chunk = (n + chunks - 1) / chunks;
  chunks = n > 0 ? (n + rows_per_chunk - 1) / rows_per_chunk : 1;
  Buffer<double> partial(chunks > 1 ? std::size_t(chunks) * count : 0, stream);
  double* dst = chunks > 1 ? partial.get() : out;
  const dim3 grid(grid_for(threads, kBlock, 1LL << 31), unsigned(chunks));
  if (vec)
    column_dots_c_kernel<T, kSquare, true><<<grid, kBlock, 0, stream>>>(
        data, n, A.p, idx, count, y, rows_per_chunk, w, w_bar, ridge, dst);
  else
    column_dots_c_kernel<T, kSquare, false><<<grid, kBlock, 0, stream>>>(
        data, n, A.p, idx, count, y, rows_per_chunk, w, w_bar, ridge, dst);
  CHITA_CUDA_LAUNCHED("column_dots_c_kernel");
  if (chunks > 1) {
    sum_chunks_kernel<<<grid_for(count, kBlock, 1LL << 31), kBlock, 0, stream>>>(
        partial.get(), int(chunks), count, idx, w, w_bar, ridge, out);
    CHITA_CUDA_LAUNCHED("sum_chunks_kernel");
  }
}

}  // namespace

void launch_column_dots(const DeviceMatrix& A, const std::int64_t* idx, std::int64_t count,
                        const double* y, const double* w, const double* w_bar, double ridge,
                        double* out, cudaStream_t stream) {
  if (count == 0) return;
  if (A.n == 0) {  // empty sums: only the ridge term (or zeros)
    if (w == nullptr) {
      CHITA_CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(double) * count, stream));
      return;
    }
  }
  dispatch_dtype(A.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (y == nullptr)
      column_dots<T, true>(A, idx, count, y, w, w_bar, ridge, out, stream);
    else
      column_dots<T, false>(A, idx, count, y, w, w_bar, ridge, out, stream);
  });
}

void launch_gradient(const DeviceMatrix& A, const double* r, const double* w, const double* w_bar,
                     double ridge, double* out, cudaStream_t stream) {
  launch_column_dots(A, nullptr, A.p, r, w, w_bar, ridge, out, stream);
}

void launch_column_sqnorms(const DeviceMatrix& A, double* out, cudaStream_t stream) {
  launch_column_dots(A, nullptr, A.p, nullptr, nullptr, nullptr, 0.0, out, stream);
}

}  // namespace chita::cuda

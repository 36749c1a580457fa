#include "chita/gradient.hpp"

#include <algorithm>
#if defined(__AVX2__) && defined(__F16C__) && !defined(__AVX512F__)
#include <immintrin.h>
#define CHITA_HALF_AVX2 1
#endif
#include <unistd.h>
#include <type_traits>
#include <vector>

namespace chita {

namespace {

// ridge (w_j - w_bar_j), or 0 for the plain transpose mat-vec (w and w_bar null).
inline double ridge_term(double ridge, const double* w, const double* w_bar, std::int64_t j) {
  return w == nullptr ? 0.0 : ridge * (w[j] - w_bar[j]);
}

// The kernels below compute, per column j, sum_i term(A_ij, r_i): A^T r (kSquare = false) or the
// squared column norms sum_i A_ij^2 (kSquare = true, r unused), with one set of loops.
template <bool kSquare>
inline double term(double a, double y) {
  return kSquare ? a * a : a * y;
}
template <bool kSquare>
inline double weight(const double* r, std::int64_t i) {
  return kSquare ? 0.0 : r[i];
}

// 16-bit storage (kHalf, chita/common.hpp): float32 partials of at most kHalfBlock / kHalfLanes
// = 16 products (F order) or 4 (C order).
constexpr int kHalfLanes = 16;

#ifdef CHITA_HALF_AVX2
// F order, 16-bit A, AVX2 without AVX-512 (8 float lanes): the generic loop below compiles to two
// FMA chains per column and is bound by their latency (about 12 GB/s of bfloat16 per core
// against 16 GB/s of float32 reads). Here four chains of 8 lanes, each element widened by one
// instruction pair (bfloat16: zero-extend and shift) or one F16C conversion (float16). Each
// block of kAvx2Block rows leaves 16 products per float32 lane partial (4 per chain lane), added
// into float64 lanes, as in the generic loop.
constexpr std::int64_t kAvx2Block = 128;

inline __m256 widen8(const bf16* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
inline __m256 widen8(const f16* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

template <bool kSquare, class T>
double column_dot_avx2(const T* c, const float* y, std::int64_t n) {
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
  const std::int64_t full = n - n % 32;
  std::int64_t i = 0;
  while (i < full) {
    const std::int64_t end = std::min(full, i + kAvx2Block);
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (; i < end; i += 32) {
      const __m256 a0 = widen8(c + i), a1 = widen8(c + i + 8), a2 = widen8(c + i + 16),
                   a3 = widen8(c + i + 24);
      if constexpr (kSquare) {
        s0 = _mm256_fmadd_ps(a0, a0, s0);
        s1 = _mm256_fmadd_ps(a1, a1, s1);
        s2 = _mm256_fmadd_ps(a2, a2, s2);
        s3 = _mm256_fmadd_ps(a3, a3, s3);
      } else {
        s0 = _mm256_fmadd_ps(a0, _mm256_loadu_ps(y + i), s0);
        s1 = _mm256_fmadd_ps(a1, _mm256_loadu_ps(y + i + 8), s1);
        s2 = _mm256_fmadd_ps(a2, _mm256_loadu_ps(y + i + 16), s2);
        s3 = _mm256_fmadd_ps(a3, _mm256_loadu_ps(y + i + 24), s3);
      }
    }
    const __m256 s = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
    lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(s)));
    hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(s, 1)));
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, _mm256_add_pd(lo, hi));
  double acc = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
  for (; i < n; ++i) {
    const double a = double(float(c[i]));
    acc += kSquare ? a * a : a * double(y[i]);
  }
  return acc;
}
#endif

// F order: one dot product of length n per column.
template <bool kSquare, class T>
void gradient_cols(const MatView<T>& A, const double* r, const double* w, const double* w_bar,
                   double ridge, double* out) {
  const std::int64_t n = A.n, p = A.p;
  if constexpr (kHalf<T>) {
    std::vector<float> rf(static_cast<std::size_t>(kSquare ? 0 : n));
    for (std::int64_t i = 0; i < static_cast<std::int64_t>(rf.size()); ++i) rf[i] = float(r[i]);
    const float* y = rf.data();
#ifdef CHITA_HALF_AVX2
#pragma omp parallel for schedule(static) if (n * p >= kParallelWork)
    for (std::int64_t j = 0; j < p; ++j)
      out[j] = column_dot_avx2<kSquare>(A.col(j), y, n) + ridge_term(ridge, w, w_bar, j);
    return;
#endif
#pragma omp parallel for schedule(static) if (n * p >= kParallelWork)
    for (std::int64_t j = 0; j < p; ++j) {
      const T* c = A.col(j);
      // kHalfLanes float32 partials (one vector register), each taking kHalfBlock / kHalfLanes
      // products before it is added into its float64 lane; one horizontal sum per column.
      double lanes[kHalfLanes] = {};
      const std::int64_t full = n - n % kHalfLanes;
      std::int64_t i = 0;
      while (i < full) {
        const std::int64_t end = std::min(full, i + kHalfBlock);
        float part[kHalfLanes] = {};
        for (; i < end; i += kHalfLanes) {
#pragma omp simd
          for (int l = 0; l < kHalfLanes; ++l) {
            const float a = float(c[i + l]);
            part[l] += kSquare ? a * a : a * y[i + l];
          }
        }
#pragma omp simd
        for (int l = 0; l < kHalfLanes; ++l) lanes[l] += double(part[l]);
      }
      double acc = 0.0;
      for (int l = 0; l < kHalfLanes; ++l) acc += lanes[l];
      for (; i < n; ++i) {
        const double a = double(float(c[i]));
        acc += kSquare ? a * a : a * double(y[i]);
      }
      out[j] = acc + ridge_term(ridge, w, w_bar, j);
    }
    return;
  }
#pragma omp parallel for schedule(static) if (n * p >= kParallelWork)
  for (std::int64_t j = 0; j < p; ++j) {
    const T* c = A.col(j);
    double acc = 0.0;
#pragma omp simd reduction(+ : acc)
    for (std::int64_t i = 0; i < n; ++i) acc += term<kSquare>(double(c[i]), weight<kSquare>(r, i));
    out[j] = acc + ridge_term(ridge, w, w_bar, j);
  }
}

// C order, column split: each thread owns a contiguous range of columns and walks it in chunks
// whose float64 accumulator stays in L1/L2; for each chunk it streams four rows at a time, so
// the accumulator is read and written once per four rows of A. Used when p is too large for
// the row split's per-thread partials to stay in cache.
constexpr std::int64_t kColChunk = 8192;

template <bool kSquare, class T>
void gradient_rows(const MatView<T>& A, const double* r, const double* w, const double* w_bar,
                   double ridge, double* out) {
  const std::int64_t n = A.n, p = A.p;
  const int want = (n * p >= kParallelWork) ? max_threads() : 1;
  constexpr std::int64_t kLine = 64 / sizeof(T);
#pragma omp parallel num_threads(want) if (want > 1)
  {
    int nth = 1;
#ifdef _OPENMP
    nth = omp_get_num_threads();
#endif
    // Split on chunk boundaries so every thread's chunks start at the same alignment.
    const std::int64_t nchunks = (p + kColChunk - 1) / kColChunk;
    std::int64_t cbeg, cend;
    split_range(nchunks, nth, thread_id(), cbeg, cend);
    alignas(64) double acc[kColChunk];
    for (std::int64_t c = cbeg; c < cend; ++c) {
      const std::int64_t j0 = c * kColChunk;
      const std::int64_t len = std::min(kColChunk, p - j0);
      for (std::int64_t t = 0; t < len; ++t) acc[t] = 0.0;
      std::int64_t i = 0;
      for (; i + 4 <= n; i += 4) {
        const T* r0 = A.row(i) + j0;
        const T* r1 = A.row(i + 1) + j0;
        const T* r2 = A.row(i + 2) + j0;
        const T* r3 = A.row(i + 3) + j0;
        const double y0 = weight<kSquare>(r, i), y1 = weight<kSquare>(r, i + 1),
                     y2 = weight<kSquare>(r, i + 2), y3 = weight<kSquare>(r, i + 3);
        // The next four rows' segments start cold on new pages: prefetch them a line at a time
        // while this block streams, so the prefetcher never waits for a new stream to ramp up.
        const bool ahead = i + 8 <= n;
        for (std::int64_t t0 = 0; t0 < len; t0 += kLine) {
          if (ahead) {
            __builtin_prefetch(r0 + 4 * p + t0, 0, 3);
            __builtin_prefetch(r1 + 4 * p + t0, 0, 3);
            __builtin_prefetch(r2 + 4 * p + t0, 0, 3);
            __builtin_prefetch(r3 + 4 * p + t0, 0, 3);
          }
          const std::int64_t t1 = std::min(len, t0 + kLine);
          if constexpr (kHalf<T>) {  // the four products and their sum in float32
            const float f0 = float(y0), f1 = float(y1), f2 = float(y2), f3 = float(y3);
#pragma omp simd aligned(acc : 64)
            for (std::int64_t t = t0; t < t1; ++t) {
              const float a0 = float(r0[t]), a1 = float(r1[t]), a2 = float(r2[t]),
                          a3 = float(r3[t]);
              const float s = kSquare ? (a0 * a0 + a1 * a1) + (a2 * a2 + a3 * a3)
                                      : (a0 * f0 + a1 * f1) + (a2 * f2 + a3 * f3);
              acc[t] += double(s);
            }
          } else {
#pragma omp simd aligned(acc : 64)
            for (std::int64_t t = t0; t < t1; ++t)
              acc[t] += (term<kSquare>(double(r0[t]), y0) + term<kSquare>(double(r1[t]), y1)) +
                        (term<kSquare>(double(r2[t]), y2) + term<kSquare>(double(r3[t]), y3));
          }
        }
      }
      for (; i < n; ++i) {
        const T* r0 = A.row(i) + j0;
        const double y0 = weight<kSquare>(r, i);
#pragma omp simd aligned(acc : 64)
        for (std::int64_t t = 0; t < len; ++t) acc[t] += term<kSquare>(double(r0[t]), y0);
      }
      for (std::int64_t t = 0; t < len; ++t)
        out[j0 + t] = acc[t] + ridge_term(ridge, w, w_bar, j0 + t);
    }
  }
}

// C order, row split: each thread streams whole rows of its own row range (long sequential
// streams, like the C-order mat-vec) into a private length-p accumulator; the partials are then
// summed in thread order.
template <bool kSquare, class T>
void gradient_rows_split(const MatView<T>& A, const double* r, const double* w,
                         const double* w_bar, double ridge, double* out) {
  const std::int64_t n = A.n, p = A.p;
  const int want = max_threads();
  std::vector<double> partial(static_cast<std::size_t>(want) * p, 0.0);
  int used = 1;
#pragma omp parallel num_threads(want)
  {
    int nth = 1;
#ifdef _OPENMP
    nth = omp_get_num_threads();
#endif
#pragma omp single
    used = nth;
    std::int64_t ib, ie;
    split_range(n, nth, thread_id(), ib, ie);
    double* acc = partial.data() + static_cast<std::size_t>(thread_id()) * p;
    std::int64_t i = ib;
    for (; i + 4 <= ie; i += 4) {
      const T* r0 = A.row(i);
      const T* r1 = A.row(i + 1);
      const T* r2 = A.row(i + 2);
      const T* r3 = A.row(i + 3);
      const double y0 = weight<kSquare>(r, i), y1 = weight<kSquare>(r, i + 1),
                     y2 = weight<kSquare>(r, i + 2), y3 = weight<kSquare>(r, i + 3);
      if constexpr (kHalf<T>) {  // as in gradient_rows
        const float f0 = float(y0), f1 = float(y1), f2 = float(y2), f3 = float(y3);
#pragma omp simd
        for (std::int64_t t = 0; t < p; ++t) {
          const float a0 = float(r0[t]), a1 = float(r1[t]), a2 = float(r2[t]), a3 = float(r3[t]);
          const float s = kSquare ? (a0 * a0 + a1 * a1) + (a2 * a2 + a3 * a3)
                                  : (a0 * f0 + a1 * f1) + (a2 * f2 + a3 * f3);
          acc[t] += double(s);
        }
      } else {
#pragma omp simd
        for (std::int64_t t = 0; t < p; ++t)
          acc[t] += (term<kSquare>(double(r0[t]), y0) + term<kSquare>(double(r1[t]), y1)) +
                    (term<kSquare>(double(r2[t]), y2) + term<kSquare>(double(r3[t]), y3));
      }
    }
    for (; i < ie; ++i) {
      const T* r0 = A.row(i);
      const double y0 = weight<kSquare>(r, i);
#pragma omp simd
      for (std::int64_t t = 0; t < p; ++t) acc[t] += term<kSquare>(double(r0[t]), y0);
    }
#pragma omp barrier
#pragma omp for schedule(static)
    for (std::int64_t j = 0; j < p; ++j) {
      double sum = 0.0;
      for (int u = 0; u < used; ++u) sum += partial[static_cast<std::size_t>(u) * p + j];
      out[j] = sum + ridge_term(ridge, w, w_bar, j);
    }
  }
}

// The row split needs threads x p float64 partials; it wins while they stay in the last-level
// cache (measured: about 13% faster at p = 268,336 on 2 cores, no gain once they spill).
bool split_rows_fits(std::int64_t p) {
  static const long l3 = [] {
    long bytes = -1;
#ifdef _SC_LEVEL3_CACHE_SIZE
    bytes = sysconf(_SC_LEVEL3_CACHE_SIZE);
#endif
    return bytes > 0 ? bytes : 8L << 20;
  }();
  const int nt = max_threads();
  return nt > 1 && double(nt) * double(p) * sizeof(double) <= 0.25 * double(l3);
}

template <bool kSquare, class T>
void column_reduce(const MatView<T>& A, const double* r, const double* w, const double* w_bar,
                   double ridge, double* out) {
  if (A.col_major)
    gradient_cols<kSquare>(A, r, w, w_bar, ridge, out);
  else if (A.n * A.p >= kParallelWork && split_rows_fits(A.p))
    gradient_rows_split<kSquare>(A, r, w, w_bar, ridge, out);
  else
    gradient_rows<kSquare>(A, r, w, w_bar, ridge, out);
}

}  // namespace

template <class T>
void gradient(const MatView<T>& A, const double* r, const double* w, const double* w_bar,
              double ridge, double* out) {
  column_reduce<false>(A, r, w, w_bar, ridge, out);
}

template <class T>
void column_sqnorms(const MatView<T>& A, double* out) {
  column_reduce<true>(A, nullptr, nullptr, nullptr, 0.0, out);
}

#define CHITA_INSTANTIATE(T)                                                              \
  template void gradient<T>(const MatView<T>&, const double*, const double*, const double*,     \
                            double, double*);                                                    \
  template void column_sqnorms<T>(const MatView<T>&, double*);
CHITA_FOR_EACH_STORAGE(CHITA_INSTANTIATE)
#undef CHITA_INSTANTIATE

}  // namespace chita

#include "chita/gradient.hpp"

#include <algorithm>

namespace chita {

namespace {

// F order: one dot product of length n per column.
template <class T>
void gradient_cols(const MatView<T>& A, const double* r, const double* w, const double* w_bar,
                   double ridge, double* out) {
  const std::int64_t n = A.n, p = A.p;
#pragma omp parallel for schedule(static) if (n * p >= kParallelWork)
  for (std::int64_t j = 0; j < p; ++j) {
    const T* c = A.col(j);
    double acc = 0.0;
#pragma omp simd reduction(+ : acc)
    for (std::int64_t i = 0; i < n; ++i) acc += double(c[i]) * r[i];
    out[j] = acc + ridge * (w[j] - w_bar[j]);
  }
}

// C order: each thread owns a contiguous range of columns and walks it in chunks whose float64
// accumulator stays in L1; for each chunk it streams four rows at a time, so the accumulator is
// read and written once per four rows of A.
constexpr std::int64_t kColChunk = 8192;

template <class T>
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
        const double y0 = r[i], y1 = r[i + 1], y2 = r[i + 2], y3 = r[i + 3];
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
#pragma omp simd aligned(acc : 64)
          for (std::int64_t t = t0; t < t1; ++t)
            acc[t] += (double(r0[t]) * y0 + double(r1[t]) * y1) +
                      (double(r2[t]) * y2 + double(r3[t]) * y3);
        }
      }
      for (; i < n; ++i) {
        const T* r0 = A.row(i) + j0;
        const double y0 = r[i];
#pragma omp simd aligned(acc : 64)
        for (std::int64_t t = 0; t < len; ++t) acc[t] += double(r0[t]) * y0;
      }
      for (std::int64_t t = 0; t < len; ++t)
        out[j0 + t] = acc[t] + ridge * (w[j0 + t] - w_bar[j0 + t]);
    }
  }
}

}  // namespace

template <class T>
void gradient(const MatView<T>& A, const double* r, const double* w, const double* w_bar,
              double ridge, double* out) {
  if (A.col_major)
    gradient_cols(A, r, w, w_bar, ridge, out);
  else
    gradient_rows(A, r, w, w_bar, ridge, out);
}

template void gradient<float>(const MatView<float>&, const double*, const double*, const double*,
                              double, double*);
template void gradient<double>(const MatView<double>&, const double*, const double*, const double*,
                               double, double*);

}  // namespace chita

#include "chita/matvec.hpp"

#include <algorithm>
#include <vector>

#include "chita/gradient.hpp"

namespace chita {

namespace {

// acc += sum over s in [begin, end) of x[s] * A[:, idx[s]], G columns per sweep.
// G = 1 keeps one sequential stream, which the hardware prefetcher follows best when the
// support is dense (columns adjacent in memory). Scattered columns each start cold; then G
// streams in flight, plus a software prefetch of the next group line by line, hide the latency.
template <int G, class T>
void accumulate_columns(const MatView<T>& A, const std::int64_t* idx, std::int64_t begin,
                        std::int64_t end, const double* x, double* acc) {
  const std::int64_t n = A.n;
  constexpr std::int64_t kLine = 64 / sizeof(T);
  std::int64_t s = begin;
  for (; s + G <= end; s += G) {
    const T* c[G];
    const T* nx[G];
    double xs[G];
    for (int q = 0; q < G; ++q) {
      c[q] = A.col(idx[s + q]);
      nx[q] = (s + G + q < end) ? A.col(idx[s + G + q]) : c[q];
      xs[q] = x[s + q];
    }
    for (std::int64_t i0 = 0; i0 < n; i0 += kLine) {
      for (int q = 0; q < G; ++q) __builtin_prefetch(nx[q] + i0, 0, 3);
      const std::int64_t i1 = std::min(n, i0 + kLine);
      if constexpr (kHalf<T>) {  // the G products and their sum in float32 (common.hpp)
        float xf[G];
        for (int q = 0; q < G; ++q) xf[q] = float(xs[q]);
#pragma omp simd
        for (std::int64_t i = i0; i < i1; ++i) {
          float t = 0.0f;
          for (int q = 0; q < G; ++q) t += float(c[q][i]) * xf[q];
          acc[i] += double(t);
        }
      } else {
#pragma omp simd
        for (std::int64_t i = i0; i < i1; ++i) {
          double t = 0.0;
          for (int q = 0; q < G; ++q) t += double(c[q][i]) * xs[q];
          acc[i] += t;
        }
      }
    }
  }
  for (; s < end; ++s) {
    const T* c0 = A.col(idx[s]);
    const double x0 = x[s];
#pragma omp simd
    for (std::int64_t i = 0; i < n; ++i) acc[i] += double(c0[i]) * x0;
  }
}

// F order: out = sum_s x[s] * A[:, idx[s]]. Each thread owns a contiguous slice of the support
// and a private length-n accumulator (in L1); the partials are summed in thread order, so the
// result is bit-identical from run to run for a given thread count.
template <class T>
void support_matvec_cols(const MatView<T>& A, const std::int64_t* idx, std::int64_t m,
                         const double* x, double* out) {
  const std::int64_t n = A.n;
  const int want = (m * n >= kParallelWork) ? std::max(1, std::min<int>(max_threads(), m)) : 1;
  const bool dense = 2 * m >= A.p;
  std::vector<double> partial(static_cast<std::size_t>(want) * n, 0.0);
#pragma omp parallel num_threads(want) if (want > 1)
  {
    int nth = 1;
#ifdef _OPENMP
    nth = omp_get_num_threads();
#endif
    std::int64_t begin, end;
    split_range(m, nth, thread_id(), begin, end);
    double* acc = partial.data() + static_cast<std::size_t>(thread_id()) * n;
    // (16-bit storage always groups: its float32 sums of G products are what make the pass
    // bandwidth-bound rather than bound by widening each element to double.)
    if (dense && !kHalf<T>)
      accumulate_columns<1>(A, idx, begin, end, x, acc);
    else
      accumulate_columns<8>(A, idx, begin, end, x, acc);
  }
  for (std::int64_t i = 0; i < n; ++i) {
    double sum = 0.0;
    for (int t = 0; t < want; ++t) sum += partial[static_cast<std::size_t>(t) * n + i];
    out[i] = sum;
  }
}

// C order, dense support, 16-bit A: as below, with x scattered in float32 and each row's sum
// formed as float32 partials over kRowBlock columns (16 products per lane of 8 floats, 8 of 16)
// added into float64 (chita/common.hpp): in float64 the widening and FMA per element bound the
// pass, not its 2 bytes (n = 1000, p = 268,336, k = p/10, bfloat16, 2 AVX2 cores: one IHT
// iteration 0.93x -> 0.46x the float32 time).
template <class T>
void support_matvec_rows_dense_half(const MatView<T>& A, const std::int64_t* idx, std::int64_t m,
                                    const double* x, double* out) {
  constexpr std::int64_t kRowBlock = 128;
  const std::int64_t n = A.n, p = A.p;
  std::vector<float> xd(static_cast<std::size_t>(p), 0.0f);
  for (std::int64_t s = 0; s < m; ++s) xd[idx[s]] = float(x[s]);
  const float* xv = xd.data();
  const std::int64_t nblocks = (n + 3) / 4;
#pragma omp parallel for schedule(static) if (n * p >= kParallelWork)
  for (std::int64_t blk = 0; blk < nblocks; ++blk) {
    const std::int64_t i = blk * 4;
    const int rows = static_cast<int>(std::min<std::int64_t>(4, n - i));
    // Short final block: its missing rows repeat the last one (read again, not stored).
    const T* r0 = A.row(i);
    const T* r1 = A.row(i + std::min(1, rows - 1));
    const T* r2 = A.row(i + std::min(2, rows - 1));
    const T* r3 = A.row(i + std::min(3, rows - 1));
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (std::int64_t j0 = 0; j0 < p; j0 += kRowBlock) {
      const std::int64_t j1 = std::min(p, j0 + kRowBlock);
      float f0 = 0.0f, f1 = 0.0f, f2 = 0.0f, f3 = 0.0f;
#pragma omp simd reduction(+ : f0, f1, f2, f3)
      for (std::int64_t j = j0; j < j1; ++j) {
        const float xj = xv[j];
        f0 += float(r0[j]) * xj;
        f1 += float(r1[j]) * xj;
        f2 += float(r2[j]) * xj;
        f3 += float(r3[j]) * xj;
      }
      s0 += double(f0);
      s1 += double(f1);
      s2 += double(f2);
      s3 += double(f3);
    }
    const double sums[4] = {s0, s1, s2, s3};
    for (int q = 0; q < rows; ++q) out[i + q] = sums[q];
  }
}

// C order, dense support: scatter x into a length-p vector and stream whole rows, four rows per
// sweep so each load of the dense vector serves four rows.
template <class T>
void support_matvec_rows_dense(const MatView<T>& A, const std::int64_t* idx, std::int64_t m,
                               const double* x, double* out) {
  const std::int64_t n = A.n, p = A.p;
  if constexpr (kHalf<T>) {
    support_matvec_rows_dense_half(A, idx, m, x, out);
    return;
  }
  std::vector<double> xd(static_cast<std::size_t>(p), 0.0);
  for (std::int64_t s = 0; s < m; ++s) xd[idx[s]] = x[s];
  const double* xv = xd.data();
  const std::int64_t nblocks = (n + 3) / 4;
#pragma omp parallel for schedule(static) if (n * p >= kParallelWork)
  for (std::int64_t blk = 0; blk < nblocks; ++blk) {
    const std::int64_t i = blk * 4;
    if (i + 4 <= n) {
      const T* r0 = A.row(i);
      const T* r1 = A.row(i + 1);
      const T* r2 = A.row(i + 2);
      const T* r3 = A.row(i + 3);
      double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
      for (std::int64_t j = 0; j < p; ++j) {
        const double xj = xv[j];
        s0 += double(r0[j]) * xj;
        s1 += double(r1[j]) * xj;
        s2 += double(r2[j]) * xj;
        s3 += double(r3[j]) * xj;
      }
      out[i] = s0;
      out[i + 1] = s1;
      out[i + 2] = s2;
      out[i + 3] = s3;
    } else {
      for (std::int64_t ii = i; ii < n; ++ii) {
        const T* r0 = A.row(ii);
        double s0 = 0;
#pragma omp simd reduction(+ : s0)
        for (std::int64_t j = 0; j < p; ++j) s0 += double(r0[j]) * xv[j];
        out[ii] = s0;
      }
    }
  }
}

// C order, sparse support: gather the support entries of each row.
template <class T>
void support_matvec_rows_gather(const MatView<T>& A, const std::int64_t* idx, std::int64_t m,
                                const double* x, double* out) {
  const std::int64_t n = A.n;
#pragma omp parallel for schedule(static) if (n * m >= kParallelWork)
  for (std::int64_t i = 0; i < n; ++i) {
    const T* row = A.row(i);
    double s = 0.0;
    for (std::int64_t t = 0; t < m; ++t) s += double(row[idx[t]]) * x[t];
    out[i] = s;
  }
}

// F order: out[s] = A[:, idx[s]] . y, kGroup columns per sweep. Scattered support columns each
// start cold; kGroup streams in flight plus a software prefetch of the next group's columns,
// chunk by chunk, hide the latency (one column at a time reached about a quarter of the
// bandwidth a full pass gets). Each column's sum is independent of the thread count.
template <class T>
void support_rmatvec_cols(const MatView<T>& A, const std::int64_t* idx, std::int64_t m,
                          const double* y, double* out) {
  constexpr int kGroup = 4;
  constexpr std::int64_t kLine = 64 / sizeof(T);
  constexpr std::int64_t kChunk = 16 * kLine;  // 1 KiB of a column per prefetch round
  const std::int64_t n = A.n;
  const std::int64_t ngroups = (m + kGroup - 1) / kGroup;
  std::vector<float> yfv(kHalf<T> ? static_cast<std::size_t>(n) : 0);
  for (std::size_t i = 0; i < yfv.size(); ++i) yfv[i] = float(y[i]);
  const float* yf = yfv.data();
#pragma omp parallel for schedule(static) if (n * m >= kParallelWork)
  for (std::int64_t gi = 0; gi < ngroups; ++gi) {
    const std::int64_t s = gi * kGroup;
    const int cnt = static_cast<int>(std::min<std::int64_t>(kGroup, m - s));
    const T* c[kGroup];
    const T* nx[kGroup];
    for (int q = 0; q < kGroup; ++q) {
      c[q] = A.col(idx[s + std::min(q, cnt - 1)]);
      const std::int64_t t = s + kGroup + q;
      nx[q] = t < m ? A.col(idx[t]) : c[q];
    }
    double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;
    for (std::int64_t i0 = 0; i0 < n; i0 += kChunk) {
      const std::int64_t i1 = std::min(n, i0 + kChunk);
      for (std::int64_t l = i0; l < i1; l += kLine)
        for (int q = 0; q < kGroup; ++q) __builtin_prefetch(nx[q] + l, 0, 3);
      if constexpr (kHalf<T>) {
        // float32 partials over blocks of kHalfBlock rows (at most 16 products per SIMD lane),
        // each added into the float64 sums (chita/common.hpp)
        for (std::int64_t b0 = i0; b0 < i1; b0 += kHalfBlock) {
          const std::int64_t b1 = std::min(i1, b0 + kHalfBlock);
          float f0 = 0.0f, f1 = 0.0f, f2 = 0.0f, f3 = 0.0f;
#pragma omp simd reduction(+ : f0, f1, f2, f3)
          for (std::int64_t i = b0; i < b1; ++i) {
            const float yi = yf[i];
            f0 += float(c[0][i]) * yi;
            f1 += float(c[1][i]) * yi;
            f2 += float(c[2][i]) * yi;
            f3 += float(c[3][i]) * yi;
          }
          a0 += double(f0);
          a1 += double(f1);
          a2 += double(f2);
          a3 += double(f3);
        }
      } else {
#pragma omp simd reduction(+ : a0, a1, a2, a3)
        for (std::int64_t i = i0; i < i1; ++i) {
          const double yi = y[i];
          a0 += double(c[0][i]) * yi;
          a1 += double(c[1][i]) * yi;
          a2 += double(c[2][i]) * yi;
          a3 += double(c[3][i]) * yi;
        }
      }
    }
    const double acc[kGroup] = {a0, a1, a2, a3};
    for (int q = 0; q < cnt; ++q) out[s + q] = acc[q];
  }
}

}  // namespace

template <class T>
void support_matvec(const MatView<T>& A, const std::int64_t* idx, std::int64_t m, const double* x,
                    double* out) {
  if (A.col_major)
    support_matvec_cols(A, idx, m, x, out);
  else if (m * 16 >= A.p)
    support_matvec_rows_dense(A, idx, m, x, out);
  else
    support_matvec_rows_gather(A, idx, m, x, out);
}

template <class T>
void support_rmatvec(const MatView<T>& A, const std::int64_t* idx, std::int64_t m, const double* y,
                     double* out) {
  const std::int64_t n = A.n;
  if (A.col_major) {
    support_rmatvec_cols(A, idx, m, y, out);
    return;
  }
  // C order, dense support: a gather would touch nearly every cache line of each row anyway, so
  // stream all of A once (the gradient kernel without the ridge term) and pick the support.
  if (m * 16 >= A.p) {
    std::vector<double> full(static_cast<std::size_t>(A.p));
    gradient(A, y, nullptr, nullptr, 0.0, full.data());
    for (std::int64_t s = 0; s < m; ++s) out[s] = full[idx[s]];
    return;
  }
  // C order, sparse support: each thread owns a slice of the support and sweeps all rows over it.
  constexpr std::int64_t kChunk = 1024;
  const std::int64_t nchunks = (m + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (n * m >= kParallelWork)
  for (std::int64_t c = 0; c < nchunks; ++c) {
    const std::int64_t s0 = c * kChunk, s1 = std::min(m, s0 + kChunk);
    double acc[kChunk] = {};
    for (std::int64_t i = 0; i < n; ++i) {
      const T* row = A.row(i);
      const double yi = y[i];
      for (std::int64_t s = s0; s < s1; ++s) acc[s - s0] += double(row[idx[s]]) * yi;
    }
    for (std::int64_t s = s0; s < s1; ++s) out[s] = acc[s - s0];
  }
}

#define CHITA_INSTANTIATE(T)                                                              \
  template void support_matvec<T>(const MatView<T>&, const std::int64_t*, std::int64_t,        \
                                  const double*, double*);                                       \
  template void support_rmatvec<T>(const MatView<T>&, const std::int64_t*, std::int64_t,       \
                                   const double*, double*);
CHITA_FOR_EACH_STORAGE(CHITA_INSTANTIATE)
#undef CHITA_INSTANTIATE

}  // namespace chita

#include "chita/backsolve.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

#include "chita/matvec.hpp"

namespace chita {

namespace {

// C[a, b] += dot(X[a, :], X[b, :]) for b <= a (lower triangle).
//   X [dim, len] row-major with leading dimension ld (dim a multiple of 4; padding rows are zero)
//   C [dim, dim] row-major
// 4 x 4 blocks of dot products share their row loads; blocks go to threads dynamically because
// the triangle makes rows uneven.
void syrk_lower(const double* X, std::int64_t dim, std::int64_t len, std::int64_t ld, double* C) {
  const std::int64_t nb = dim / 4;
#pragma omp parallel for schedule(dynamic, 1) if (dim * dim * len >= kParallelWork)
  for (std::int64_t ab = nb - 1; ab >= 0; --ab) {
    const std::int64_t a = ab * 4;
    const double* x0 = X + (a + 0) * ld;
    const double* x1 = X + (a + 1) * ld;
    const double* x2 = X + (a + 2) * ld;
    const double* x3 = X + (a + 3) * ld;
    for (std::int64_t bb = 0; bb <= ab; ++bb) {
      const std::int64_t bcol = bb * 4;
      const double* y0 = X + (bcol + 0) * ld;
      const double* y1 = X + (bcol + 1) * ld;
      const double* y2 = X + (bcol + 2) * ld;
      const double* y3 = X + (bcol + 3) * ld;
      double s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
      double s20 = 0, s21 = 0, s22 = 0, s23 = 0, s30 = 0, s31 = 0, s32 = 0, s33 = 0;
#pragma omp simd reduction(+ : s00, s01, s02, s03, s10, s11, s12, s13, s20, s21, s22, s23, s30, s31, s32, s33)
      for (std::int64_t t = 0; t < len; ++t) {
        const double u0 = x0[t], u1 = x1[t], u2 = x2[t], u3 = x3[t];
        const double v0 = y0[t], v1 = y1[t], v2 = y2[t], v3 = y3[t];
        s00 += u0 * v0; s01 += u0 * v1; s02 += u0 * v2; s03 += u0 * v3;
        s10 += u1 * v0; s11 += u1 * v1; s12 += u1 * v2; s13 += u1 * v3;
        s20 += u2 * v0; s21 += u2 * v1; s22 += u2 * v2; s23 += u2 * v3;
        s30 += u3 * v0; s31 += u3 * v1; s32 += u3 * v2; s33 += u3 * v3;
      }
      const double s[4][4] = {{s00, s01, s02, s03}, {s10, s11, s12, s13},
                              {s20, s21, s22, s23}, {s30, s31, s32, s33}};
      for (int u = 0; u < 4; ++u)
        for (int q = 0; q < 4; ++q)
          if (bcol + q <= a + u) C[(a + u) * dim + bcol + q] += s[u][q];
    }
  }
}

// In-place lower Cholesky of the leading N x N block of C (leading dimension ld), blocked
// right-looking: factor a 64 x 64 diagonal block, solve the panel below it, update the trailing
// lower triangle. Parallel regions are per block (three barriers per 64 columns), not per
// column: with one barrier per column a busy core stalls the factorisation for scheduler ticks.
// Every inner loop runs over contiguous row segments.
bool cholesky_lower(double* C, std::int64_t N, std::int64_t ld) {
  constexpr std::int64_t kBlock = 64;
  for (std::int64_t j0 = 0; j0 < N; j0 += kBlock) {
    const std::int64_t j1 = std::min(N, j0 + kBlock);
    // Diagonal block, unblocked (row-oriented).
    for (std::int64_t j = j0; j < j1; ++j) {
      double* Lj = C + j * ld;
      double s = Lj[j];
      for (std::int64_t t = j0; t < j; ++t) s -= Lj[t] * Lj[t];
      if (!(s > 0.0) || !std::isfinite(s)) return false;
      Lj[j] = std::sqrt(s);
      for (std::int64_t i = j + 1; i < j1; ++i) {
        double* Li = C + i * ld;
        double acc = Li[j];
        for (std::int64_t t = j0; t < j; ++t) acc -= Li[t] * Lj[t];
        Li[j] = acc / Lj[j];
      }
    }
    const std::int64_t rows = N - j1;
    // Panel: L[i, j0:j1] = C[i, j0:j1] L_jj^{-T} for every row below the block.
#pragma omp parallel for schedule(static) if (rows * kBlock * kBlock >= kParallelWork)
    for (std::int64_t i = j1; i < N; ++i) {
      double* Li = C + i * ld;
      for (std::int64_t j = j0; j < j1; ++j) {
        const double* Lj = C + j * ld;
        double acc = Li[j];
        for (std::int64_t t = j0; t < j; ++t) acc -= Li[t] * Lj[t];
        Li[j] = acc / Lj[j];
      }
    }
    // Trailing update of the lower triangle: C[i, l] -= L[i, j0:j1] . L[l, j0:j1], l <= i.
#pragma omp parallel for schedule(dynamic, 16) if (rows * rows * kBlock >= kParallelWork)
    for (std::int64_t i = j1; i < N; ++i) {
      double* Ci = C + i * ld;
      const double* Li = Ci + j0;
      for (std::int64_t l = j1; l <= i; ++l) {
        const double* Ll = C + l * ld + j0;
        double acc = 0.0;
#pragma omp simd reduction(+ : acc)
        for (std::int64_t t = 0; t < j1 - j0; ++t) acc += Li[t] * Ll[t];
        Ci[l] -= acc;
      }
    }
  }
  return true;
}

// Solves (L L^T) x = rhs in place.
void cholesky_solve(const double* L, std::int64_t N, std::int64_t ld, double* x) {
  for (std::int64_t i = 0; i < N; ++i) {
    double acc = x[i];
    for (std::int64_t t = 0; t < i; ++t) acc -= L[i * ld + t] * x[t];
    x[i] = acc / L[i * ld + i];
  }
  for (std::int64_t i = N - 1; i >= 0; --i) {
    double acc = x[i];
    for (std::int64_t t = i + 1; t < N; ++t) acc -= L[t * ld + i] * x[t];
    x[i] = acc / L[i * ld + i];
  }
}

// Factor gram + ridge I, retrying with a growing diagonal jitter if it is not positive definite.
// `gram` keeps the matrix without ridge; `fac` receives the factor. Returns the jitter used.
double factor_with_jitter(const std::vector<double>& gram, std::int64_t N, std::int64_t ld,
                          double ridge, std::vector<double>& fac) {
  double mean_diag = 0.0;
  for (std::int64_t i = 0; i < N; ++i) mean_diag += gram[i * ld + i];
  mean_diag = N > 0 ? mean_diag / N : 0.0;
  double jitter = 0.0;
  const double base = mean_diag > 0.0 ? 1e-12 * mean_diag : 1e-12;
  for (int attempt = 0; attempt < 8; ++attempt) {
    fac = gram;
    for (std::int64_t i = 0; i < N; ++i) fac[i * ld + i] += ridge + jitter;
    if (cholesky_lower(fac.data(), N, ld)) return jitter;
    jitter = (attempt == 0) ? base : jitter * 100.0;
  }
  throw std::runtime_error(
      "backsolve: the Gram matrix on the support is singular even with jitter; use ridge > 0");
}

inline std::int64_t round_up4(std::int64_t x) { return (x + 3) / 4 * 4; }

// X[t, i] = A[i, idx[s0 + t]] for t < cb: support columns as contiguous float64 rows.
template <class T>
void gather_columns_as_rows(const MatView<T>& A, const std::int64_t* idx, std::int64_t s0,
                            std::int64_t cb, double* X, std::int64_t ld) {
  const std::int64_t n = A.n;
  if (A.col_major) {
#pragma omp parallel for schedule(static) if (cb * n >= kParallelWork)
    for (std::int64_t t = 0; t < cb; ++t) {
      const T* c = A.col(idx[s0 + t]);
      for (std::int64_t i = 0; i < n; ++i) X[t * ld + i] = double(c[i]);
    }
  } else {
#pragma omp parallel for schedule(static) if (cb * n >= kParallelWork)
    for (std::int64_t i = 0; i < n; ++i) {
      const T* row = A.row(i);
      for (std::int64_t t = 0; t < cb; ++t) X[t * ld + i] = double(row[idx[s0 + t]]);
    }
  }
}

// X[i, t] = A[i, idx[s0 + t]] for t < cb: a panel of support columns, rows contiguous.
template <class T>
void gather_panel_rows(const MatView<T>& A, const std::int64_t* idx, std::int64_t s0,
                       std::int64_t cb, double* X, std::int64_t ld) {
  const std::int64_t n = A.n;
  if (A.col_major) {
#pragma omp parallel for schedule(static) if (cb * n >= kParallelWork)
    for (std::int64_t t = 0; t < cb; ++t) {
      const T* c = A.col(idx[s0 + t]);
      for (std::int64_t i = 0; i < n; ++i) X[i * ld + t] = double(c[i]);
    }
  } else {
#pragma omp parallel for schedule(static) if (cb * n >= kParallelWork)
    for (std::int64_t i = 0; i < n; ++i) {
      const T* row = A.row(i);
      for (std::int64_t t = 0; t < cb; ++t) X[i * ld + t] = double(row[idx[s0 + t]]);
    }
  }
}

}  // namespace

template <class T>
void support_gram(const MatView<T>& A, const std::int64_t* idx, std::int64_t m, double* out) {
  const std::int64_t n = A.n;
  const std::int64_t dim = round_up4(n);
  constexpr std::int64_t kPanel = 256;
  // Panels of support columns, rows contiguous; padding rows (n..dim) stay zero.
  std::vector<double> X(static_cast<std::size_t>(dim) * kPanel, 0.0);   // [dim, kPanel]
  std::vector<double> gram(static_cast<std::size_t>(dim) * dim, 0.0);   // [dim, dim]
  for (std::int64_t s0 = 0; s0 < m; s0 += kPanel) {
    const std::int64_t cb = std::min(kPanel, m - s0);
    gather_panel_rows(A, idx, s0, cb, X.data(), kPanel);
    syrk_lower(X.data(), dim, cb, kPanel, gram.data());
  }
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t l = 0; l <= i; ++l)
      out[i * n + l] = out[l * n + i] = gram[i * dim + l];
}

template <class T>
double backsolve(const MatView<T>& A, const double* b, const std::int64_t* idx, std::int64_t m,
                 const double* w_bar_s, double ridge, double* out) {
  const std::int64_t n = A.n;
  // c = b - A_S w_bar_s: the problem in z = x - w_bar_s is a plain ridge regression.
  std::vector<double> c(n);
  support_matvec(A, idx, m, w_bar_s, c.data());
  for (std::int64_t i = 0; i < n; ++i) c[i] = b[i] - c[i];

  double jitter;
  std::vector<double> fac;
  if (m <= n) {
    // Normal equations: (A_S^T A_S + ridge I) z = A_S^T c, m x m.
    const std::int64_t dim = round_up4(m);
    std::vector<double> X(static_cast<std::size_t>(dim) * n, 0.0);  // [dim, n], m <= n rows
    gather_columns_as_rows(A, idx, 0, m, X.data(), n);
    std::vector<double> gram(static_cast<std::size_t>(dim) * dim, 0.0);
    syrk_lower(X.data(), dim, n, n, gram.data());
    jitter = factor_with_jitter(gram, m, dim, ridge, fac);
    for (std::int64_t s = 0; s < m; ++s) {
      double acc = 0.0;
      const double* xs = X.data() + s * n;
      for (std::int64_t i = 0; i < n; ++i) acc += xs[i] * c[i];
      out[s] = acc;
    }
    cholesky_solve(fac.data(), m, dim, out);
  } else {
    // Woodbury / push-through: z = A_S^T (A_S A_S^T + ridge I)^{-1} c, n x n; the m x m matrix
    // is never formed.
    const std::int64_t dim = n;
    std::vector<double> gram(static_cast<std::size_t>(n) * n);
    support_gram(A, idx, m, gram.data());
    jitter = factor_with_jitter(gram, n, dim, ridge, fac);
    std::vector<double> y(c);
    cholesky_solve(fac.data(), n, dim, y.data());
    support_rmatvec(A, idx, m, y.data(), out);
  }
  for (std::int64_t s = 0; s < m; ++s) out[s] += w_bar_s[s];
  return jitter;
}

template void support_gram<float>(const MatView<float>&, const std::int64_t*, std::int64_t,
                                  double*);
template void support_gram<double>(const MatView<double>&, const std::int64_t*, std::int64_t,
                                   double*);
template double backsolve<float>(const MatView<float>&, const double*, const std::int64_t*,
                                 std::int64_t, const double*, double, double*);
template double backsolve<double>(const MatView<double>&, const double*, const std::int64_t*,
                                  std::int64_t, const double*, double, double*);

}  // namespace chita

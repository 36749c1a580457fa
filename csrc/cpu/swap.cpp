#include "chita/swap.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace chita {

// With U = [a_j, a_i], D = diag(1, -1) and delta = (-w_bar_j, w_bar_i): K' = K + U D U^T,
// c' = c + U delta, and c'^T K'^-1 c' = c'^T K^-1 c' - m^T (D + Q)^-1 m with Q = U^T K^-1 U and
// m = U^T K^-1 c' (Woodbury); f changes by 0.5 lam (c'^T K'^-1 c' - s0 + w_bar_i^2 - w_bar_j^2).
void swap_scores(const double* G, std::int64_t c, const double* q, double s0, const double* wv,
                 const std::int64_t* jn, std::int64_t nj, const std::int64_t* io, std::int64_t ni,
                 double lam, double* out) {
  const double inf = std::numeric_limits<double>::infinity();
  for (std::int64_t a = 0; a < ni; ++a) {
    const std::int64_t i = io[a];
    const double qi = q[i], gii = G[i * c + i], di = wv[i];
    const double* Gi = G + i * c;
    double* row = out + a * nj;
    for (std::int64_t b = 0; b < nj; ++b) {
      const std::int64_t j = jn[b];
      const double qj = q[j], gjj = G[j * c + j], gij = Gi[j], dj = -wv[j];
      const double ckc = s0 + 2.0 * (dj * qj + di * qi) + dj * dj * gjj + di * di * gii +
                         2.0 * dj * di * gij;
      const double m1 = qj + gjj * dj + gij * di;
      const double m2 = qi + gij * dj + gii * di;
      const double a11 = 1.0 + gjj, a22 = gii - 1.0, a12 = gij;
      const double det = a11 * a22 - a12 * a12;  // < 0: a_i^T K^-1 a_i < 1 on the support
      if (!(det < 0.0)) {
        row[b] = inf;
        continue;
      }
      const double quad = (a22 * m1 * m1 - 2.0 * a12 * m1 * m2 + a11 * m2 * m2) / det;
      const double delta = 0.5 * lam * (ckc - quad - s0 + di * di - dj * dj);
      row[b] = std::isfinite(delta) ? delta : inf;
    }
  }
}

void pool_eliminate(double* G, double* x, std::int64_t c, std::int64_t count,
                    std::int64_t* order) {
  const double inf = std::numeric_limits<double>::infinity();
  const double tiny = std::numeric_limits<double>::epsilon();
  std::vector<char> live(static_cast<std::size_t>(c), 1);
  std::vector<double> g(static_cast<std::size_t>(c));
  for (std::int64_t t = 0; t < count; ++t) {
    std::int64_t q = -1;
    double best = inf;
    for (std::int64_t i = 0; i < c; ++i) {
      if (!live[i]) continue;
      const double s = x[i] * x[i] / std::max(1.0 - G[i * c + i], tiny);
      if (q < 0 || s < best) {  // (NaN never compares less: it ranks as +inf)
        q = i;
        best = std::isnan(s) ? inf : s;
      }
    }
    if (q < 0) break;  // (count <= c: not reached)
    order[t] = q;
    live[q] = 0;
    const double dq = std::max(1.0 - G[q * c + q], tiny);
    const double step = x[q] / dq;
    for (std::int64_t i = 0; i < c; ++i) g[i] = G[i * c + q];
    for (std::int64_t i = 0; i < c; ++i) {
      x[i] += g[i] * step;
      const double gi = g[i] / dq;
      double* row = G + i * c;
      for (std::int64_t j = 0; j < c; ++j) row[j] += gi * g[j];
    }
  }
}

void pool_eliminate_batch(double* G, double* x, std::int64_t batch, std::int64_t c,
                          std::int64_t count, std::int64_t* order) {
#pragma omp parallel for schedule(static) if (batch * c * c * count >= (1 << 16))
  for (std::int64_t b = 0; b < batch; ++b)
    pool_eliminate(G + b * c * c, x + b * c, c, count, order + b * count);
}

}  // namespace chita

#include "chita/layer_swap.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <utility>
#include <vector>

#include "chita/lapack.hpp"

namespace chita {

namespace {

using std::int64_t;

// One row's search state (reused across the rows a thread handles).
//   K[s]    the input in slot s (s < k); pos[l] its slot, or -1 for a pruned input
//   J[q]    the pruned input in row q of C; jrow[l] that row, or -1 for a kept input
//   Kinv    H_KK^-1, full symmetric (k x k)
//   C       row q: H_{J[q],K} H_KK^-1 ((d - k) x k, row-major)
//   w       the minimiser on K (slot order); b the right-hand side on K
//   g, s    for pruned l: the gradient H_{l,K} w - b_l and the Schur complement
//           H_ll - H_{l,K} H_KK^-1 H_{K,l}
struct RowState {
  int64_t d = 0, k = 0;
  std::vector<int64_t> K, pos, J, jrow;
  std::vector<double> Kinv, C, scratch, w, b, g, s, u, a, hj;
  std::vector<std::pair<double, int64_t>> cand;

  void reserve(int64_t d_, int64_t kmax, int64_t jmax) {
    d = d_;
    K.resize(kmax);
    pos.resize(d);
    J.resize(jmax);
    jrow.resize(d);
    Kinv.resize(kmax * kmax);
    C.resize(jmax * kmax);
    scratch.resize(jmax * kmax);
    w.resize(kmax);
    b.resize(kmax);
    u.resize(kmax);
    a.resize(kmax);
    hj.resize(kmax);
    g.resize(d);
    s.resize(d);
    cand.reserve(d);
  }
};

inline double dot(const double* x, const double* y, int64_t n) {
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (int64_t t = 0; t < n; ++t) acc += x[t] * y[t];
  return acc;
}

// Factor H_KK, form its inverse, C, w, g and s from scratch. False if H_KK is not positive
// definite in floating point.
bool factor(RowState& st, const double* H, const double* Brow) {
  const auto& L = lapack::routines();
  const int64_t d = st.d, k = st.k, nj = d - k;
  const int ki = static_cast<int>(k), ji = static_cast<int>(nj);
  double* Ki = st.Kinv.data();
  for (int64_t p = 0; p < k; ++p)
    for (int64_t q = 0; q < k; ++q) Ki[p * k + q] = H[st.K[p] * d + st.K[q]];
  int info = 0;
  const char lo = 'L';
  L.dpotrf(&lo, &ki, Ki, &ki, &info);
  if (info != 0) return false;
  L.dpotri(&lo, &ki, Ki, &ki, &info);
  if (info != 0) return false;
  for (int64_t q = 0; q < k; ++q)  // column-major lower -> both triangles
    for (int64_t p = q + 1; p < k; ++p) Ki[p * k + q] = Ki[q * k + p];
  int64_t q = 0;
  for (int64_t l = 0; l < d; ++l) {
    st.jrow[l] = -1;
    if (st.pos[l] >= 0) continue;
    st.J[q] = l;
    st.jrow[l] = q;
    const double* Hl = H + l * d;
    double* hk = st.scratch.data() + q * k;
    for (int64_t p = 0; p < k; ++p) hk[p] = Hl[st.K[p]];
    ++q;
  }
  const char nn = 'N';
  const double one = 1.0, zero = 0.0;
  const int inc = 1;
  // Row-major C = H_{J,K} Kinv, i.e. column-major C^T = Kinv H_{J,K}^T.
  if (nj > 0)
    L.dgemm(&nn, &nn, &ki, &ji, &ki, &one, Ki, &ki, st.scratch.data(), &ki, &zero,
            st.C.data(), &ki);
  for (int64_t p = 0; p < k; ++p) st.b[p] = Brow[st.K[p]];
  L.dgemv(&nn, &ki, &ki, &one, Ki, &ki, st.b.data(), &inc, &zero, st.w.data(), &inc);
  for (int64_t r = 0; r < nj; ++r) {
    const int64_t l = st.J[r];
    const double* hk = st.scratch.data() + r * k;
    st.g[l] = dot(hk, st.w.data(), k) - Brow[l];
    st.s[l] = H[l * d + l] - dot(st.C.data() + r * k, hk, k);
  }
  return true;
}

// The best exchange (slot t out, input j in) and its exact change of the objective, among the
// pairs that lower it by more than `thr`; (-1, -1, 0) if none.
struct Exchange {
  int64_t t = -1, j = -1;
  double delta = 0.0;
};

Exchange best_exchange(RowState& st, const double* H, int64_t m, double thr) {
  const int64_t d = st.d, k = st.k;
  // Adding input j alone lowers the objective by c_j = g_j^2 / s_j, and removing a kept one
  // can only raise it: c_j bounds every pair with j. Visit j by decreasing c_j and stop once
  // the bound cannot beat the best pair found.
  st.cand.clear();
  for (int64_t r = 0; r < d - k; ++r) {
    const int64_t l = st.J[r];
    const double sl = st.s[l];
    if (!(sl > 1e-12 * H[l * d + l])) continue;  // (numerically in the span of K)
    const double c = st.g[l] * st.g[l] / sl;
    if (c > thr) st.cand.emplace_back(c, l);
  }
  auto order = [](const std::pair<double, int64_t>& x, const std::pair<double, int64_t>& y) {
    return x.first > y.first || (x.first == y.first && x.second < y.second);
  };
  std::sort(st.cand.begin(), st.cand.end(), order);
  Exchange best;
  best.delta = -thr;
  const double* Ki = st.Kinv.data();
  for (const auto& [c, j] : st.cand) {
    if (-c >= best.delta) break;
    const double inv_s = 1.0 / st.s[j];
    const double gam = st.g[j] * inv_s;
    const double* Cj = st.C.data() + st.jrow[j] * k;
    // Exchanging slot q for j: the optimum on K + j moves w_q to w_q + C_jq g_j / s_j and
    // [H_{K+j}^-1]_qq = Kinv_qq + C_jq^2 / s_j; removing q then costs w_q'^2 / that.
    auto consider = [&](int64_t q) {
      const double t = Cj[q];
      const double num = st.w[q] + t * gam;
      const double val = num * num / (Ki[q * k + q] + t * t * inv_s) - c;
      if (val < best.delta) {
        best.delta = val;
        best.t = q;
        best.j = j;
      }
    };
    if (m > 0) {
      const int64_t g0 = j / m * m;
      for (int64_t l = g0; l < g0 + m; ++l)
        if (st.pos[l] >= 0) consider(st.pos[l]);
    } else {
      for (int64_t q = 0; q < k; ++q) consider(q);
    }
  }
  return best;
}

// Apply the exchange: j enters slot t, i = K[t] leaves and takes j's row of C. Kinv by a
// bordering and a downdate (two rank-1 updates, slot t rewritten); each row l of C by the same
// two rank-1 terms, its Schur complement by s_l - v_l^2 / s_j + c_l^2 / a_t (v_l, c_l its
// coefficients on the added and the removed input) and its gradient from the new w.
void apply(RowState& st, const double* H, const double* Brow, int64_t t, int64_t j) {
  const auto& L = lapack::routines();
  const int64_t d = st.d, k = st.k, nj = d - k;
  const int ki = static_cast<int>(k), inc = 1;
  const int64_t i = st.K[t], qj = st.jrow[j];
  double* Ki = st.Kinv.data();
  double* u = st.u.data();
  double* a = st.a.data();
  double* hj = st.hj.data();
  std::copy_n(st.C.data() + qj * k, k, u);  // H_KK^-1 H_{K,j}
  const double* Hj = H + j * d;
  for (int64_t p = 0; p < k; ++p) hj[p] = Hj[st.K[p]];  // H_{K,j} (before the exchange)
  const double sj = st.s[j];
  const double ut = u[t];
  for (int64_t p = 0; p < k; ++p) a[p] = Ki[p * k + t] + u[p] * ut / sj;
  const double at = a[t], ae = -ut / sj;
  // Kinv += u u^T / s_j - a a^T / a_t: one fused pass (two BLAS rank-1 updates read and write
  // the k x k inverse twice), then slot t rewritten.
  const double p1 = 1.0 / sj, p2 = -1.0 / at;
  for (int64_t p = 0; p < k; ++p) {
    double* row = Ki + p * k;
    const double up = u[p] * p1, ap = a[p] * p2;
#pragma omp simd
    for (int64_t q = 0; q < k; ++q) row[q] += up * u[q] + ap * a[q];
  }
  for (int64_t p = 0; p < k; ++p) {
    const double v = -u[p] / sj - a[p] * ae / at;
    Ki[p * k + t] = v;
    Ki[t * k + p] = v;
  }
  Ki[t * k + t] = 1.0 / sj - ae * ae / at;
  // i leaves K and takes j's row of C: there it is e_t (H_{i,K} H_KK^-1), with s_i = 0.
  {
    double* Ci = st.C.data() + qj * k;
    std::fill(Ci, Ci + k, 0.0);
    Ci[t] = 1.0;
    st.s[i] = 0.0;
  }
  st.K[t] = j;
  st.pos[j] = t;
  st.pos[i] = -1;
  st.jrow[j] = -1;
  st.jrow[i] = qj;
  st.J[qj] = i;
  st.b[t] = Brow[j];
  const char nn = 'N';
  const double one = 1.0, zero = 0.0;
  L.dgemv(&nn, &ki, &ki, &one, Ki, &ki, st.b.data(), &inc, &zero, st.w.data(), &inc);
  const double* b = st.b.data();
  for (int64_t r = 0; r < nj; ++r) {
    const int64_t l = st.J[r];
    double* Cl = st.C.data() + r * k;
    const double v = dot(Cl, hj, k) - H[l * d + j];  // H_{l,K} H_KK^-1 H_{K,j} - H_lj
    const double ct = Cl[t] + v * ut / sj;
    const double pv = v / sj, qv = -ct / at;
    double gw = 0.0;
#pragma omp simd reduction(+ : gw)
    for (int64_t p = 0; p < k; ++p) {
      Cl[p] += pv * u[p] + qv * a[p];
      gw += Cl[p] * b[p];
    }
    const double clt = -v / sj - ct * ae / at;
    gw += (clt - Cl[t]) * b[t];
    Cl[t] = clt;
    st.s[l] += ct * ct / at - v * v / sj;
    st.g[l] = gw - Brow[l];
  }
}

}  // namespace

void row_swap_search(const double* H, int64_t d, const double* B, const double* c0,
                     int64_t rows, int64_t m, int64_t max_swaps, double tol, int64_t refresh,
                     std::uint8_t* mask, double* W, int64_t* swaps) {
  if (!lapack::routines().complete())
    throw std::runtime_error("row_swap_search: BLAS / LAPACK routines not registered");
  int64_t kmax = 0, kmin = d;
  for (int64_t r = 0; r < rows; ++r) {
    int64_t k = 0;
    for (int64_t l = 0; l < d; ++l) k += mask[r * d + l] != 0;
    kmax = std::max(kmax, k);
    kmin = std::min(kmin, k);
  }
#pragma omp parallel
  {
    RowState st;
    st.reserve(d, std::max<int64_t>(kmax, 1), max_swaps > 0 ? std::max<int64_t>(d - kmin, 1) : 0);
#pragma omp for schedule(dynamic, 1)
    for (int64_t r = 0; r < rows; ++r) {
      std::uint8_t* mr = mask + r * d;
      const double* Brow = B + r * d;
      double* Wr = W + r * d;
      st.k = 0;
      for (int64_t l = 0; l < d; ++l) {
        st.pos[l] = -1;
        if (mr[l]) {
          st.pos[l] = st.k;
          st.K[st.k++] = l;
        }
      }
      const int64_t k = st.k;
      std::fill(Wr, Wr + d, 0.0);
      swaps[r] = 0;
      if (k == 0) continue;
      int64_t done = 0;
      if (max_swaps > 0 && k < d) {  // (max_swaps = 0: the exact refit alone)
        if (!factor(st, H, Brow)) {
          swaps[r] = -1;
          continue;
        }
        double err = c0[r] - dot(st.b.data(), st.w.data(), k);
        int64_t since = 0;
        while (done < max_swaps) {
          const Exchange ex = best_exchange(st, H, m, tol * std::max(err, 0.0));
          if (ex.t < 0) break;
          apply(st, H, Brow, ex.t, ex.j);
          err += ex.delta;
          ++done;
          if (refresh > 0 && ++since >= refresh && done < max_swaps) {
            since = 0;
            if (!factor(st, H, Brow)) break;
            err = c0[r] - dot(st.b.data(), st.w.data(), k);
          }
        }
      }
      swaps[r] = done;
      // The exact minimiser on the final mask: a fresh factor of H_KK.
      double* Ki = st.Kinv.data();
      for (int64_t p = 0; p < k; ++p)
        for (int64_t q = 0; q < k; ++q) Ki[p * k + q] = H[st.K[p] * d + st.K[q]];
      for (int64_t q = 0; q < k; ++q) st.w[q] = Brow[st.K[q]];
      const auto& L = lapack::routines();
      const int ki = static_cast<int>(k), one = 1;
      int info = 0;
      const char lo = 'L';
      L.dpotrf(&lo, &ki, Ki, &ki, &info);
      if (info == 0) L.dpotrs(&lo, &ki, &one, Ki, &ki, st.w.data(), &ki, &info);
      if (info != 0) {
        swaps[r] = -1;
        continue;
      }
      std::fill(mr, mr + d, std::uint8_t{0});
      for (int64_t q = 0; q < k; ++q) {
        mr[st.K[q]] = 1;
        Wr[st.K[q]] = st.w[q];
      }
    }
  }
}

}  // namespace chita

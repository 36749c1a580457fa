#include "chita/step.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "chita/constants.hpp"
#include "chita/matvec.hpp"
#include "chita/step_ladder.hpp"
#include "chita/topk.hpp"

namespace chita {

double objective_from_residual(const double* r, std::int64_t n, const double* w,
                               const double* w_bar, std::int64_t p, double ridge) {
  double rr = 0.0;
  for (std::int64_t i = 0; i < n; ++i) rr += r[i] * r[i];
  double reg = 0.0;
  if (ridge != 0.0) {
#pragma omp parallel for reduction(+ : reg) schedule(static) if (p >= kParallelWork)
    for (std::int64_t j = 0; j < p; ++j) {
      const double dj = w[j] - w_bar[j];
      reg += dj * dj;
    }
  }
  return 0.5 * rr + 0.5 * ridge * reg;
}

namespace {

// max |g_j| over j not in the (sorted) support.
double max_off_support(const double* g, std::int64_t p, const std::int64_t* support,
                       std::int64_t k) {
  double m = 0.0;
  std::int64_t s = 0;
  for (std::int64_t j = 0; j < p; ++j) {
    if (s < k && support[s] == j) {
      ++s;
      continue;
    }
    const double a = std::fabs(g[j]);
    if (a > m) m = a;
  }
  return m;
}

// Largest tau for which H_k(w - tau g) keeps the support: every coordinate of S that shrinks
// towards zero, or grows more slowly than the strongest outsider, is overtaken at
// |w_i| / denom_i.
double support_preserving_bound(const double* g, const double* w, const std::int64_t* support,
                                std::int64_t k, std::int64_t p, double m) {
  double tau = std::numeric_limits<double>::infinity();
  if (k >= p) return tau;  // no outsider can enter
  for (std::int64_t s = 0; s < k; ++s) {
    const std::int64_t i = support[s];
    const double gi = g[i], wi = w[i], ag = std::fabs(gi);
    double denom;
    if (wi * gi > 0.0)
      denom = ag + m;  // moving towards zero
    else if (ag < m)
      denom = m - ag;  // moving away, but slower than the outsider grows
    else
      continue;
    if (denom > 0.0) {
      const double t = std::fabs(wi) / denom;
      if (t < tau) tau = t;
    }
  }
  return tau;
}

// The step's columns: all of A, or the subproblem A[:, cols] (CHITA's active set) whose local
// column j is column cols[j] of A. Local index sets map through cols before each mat-vec, so A
// is never copied.
template <class T>
struct Columns {
  const MatView<T>& A;
  const std::int64_t* cols;  // [p_local] sorted, or null for all columns
  std::int64_t p;            // local number of columns
  std::vector<std::int64_t> global;

  void matvec(const std::int64_t* idx, std::int64_t m, const double* x, double* out) {
    if (cols == nullptr) {
      support_matvec(A, idx, m, x, out);
      return;
    }
    global.resize(static_cast<std::size_t>(m));
    for (std::int64_t s = 0; s < m; ++s) global[s] = cols[idx[s]];
    support_matvec(A, global.data(), m, x, out);
  }
};

// Evaluates hard-thresholded candidates H_k(w - tau g) against the current state, reusing A d:
// for a candidate support C, A_C x_C - b = r - tau A d + A_in v_in - A_out v_out with
// v = w - tau g, so only the columns entering or leaving are read.
template <class T>
struct CandidateSearch {
  const MatView<T>& A;
  Columns<T>& columns;
  const double* b;
  const double* w_bar;
  double ridge;
  const double* g;
  const double* w;
  const double* r;
  const std::int64_t* support;
  std::int64_t k;
  const std::vector<double>& Ad;
  double wbar_sq;

  std::vector<double> v;                 // [p]
  std::vector<std::int64_t> cand;        // [k]
  std::vector<double> cand_r;            // [n]
  std::vector<std::int64_t> diff_idx;    // [<= 2k]
  std::vector<double> diff_val;          // [<= 2k]
  std::vector<double> delta;             // [n]
  bool changed = false;

  CandidateSearch(Columns<T>& columns_, const double* b_, const double* w_bar_, double ridge_,
                  const double* g_, const double* w_, const double* r_,
                  const std::int64_t* support_, std::int64_t k_, const std::vector<double>& Ad_)
      : A(columns_.A), columns(columns_), b(b_), w_bar(w_bar_), ridge(ridge_), g(g_), w(w_), r(r_), support(support_), k(k_),
        Ad(Ad_), wbar_sq(0.0), v(columns_.p), cand(k_), cand_r(A.n), delta(A.n) {
    if (ridge != 0.0)
      for (std::int64_t j = 0; j < columns.p; ++j) wbar_sq += w_bar[j] * w_bar[j];
  }

  // Objective of H_k(w - tau g); leaves the candidate in cand / v / cand_r.
  double evaluate(double tau) {
    const std::int64_t n = A.n, p = columns.p;
    for (std::int64_t j = 0; j < p; ++j) v[j] = w[j] - tau * g[j];
    topk(v.data(), p, k, cand.data());

    // Merge the two sorted supports into the sorted list of entering (+v) and leaving (-v)
    // coordinates.
    diff_idx.clear();
    diff_val.clear();
    std::int64_t a = 0, c = 0;
    while (a < k || c < k) {
      if (c == k || (a < k && support[a] < cand[c])) {
        diff_idx.push_back(support[a]);
        diff_val.push_back(-v[support[a]]);
        ++a;
      } else if (a == k || cand[c] < support[a]) {
        diff_idx.push_back(cand[c]);
        diff_val.push_back(v[cand[c]]);
        ++c;
      } else {
        ++a;
        ++c;
      }
    }
    changed = !diff_idx.empty();
    const std::int64_t nd = static_cast<std::int64_t>(diff_idx.size());
    if (nd == 0) {
      for (std::int64_t i = 0; i < n; ++i) cand_r[i] = r[i] - tau * Ad[i];
    } else if (nd < k) {
      columns.matvec(diff_idx.data(), nd, diff_val.data(), delta.data());
      for (std::int64_t i = 0; i < n; ++i) cand_r[i] = r[i] - tau * Ad[i] + delta[i];
    } else {  // most of the support moved: recompute the residual from scratch
      std::vector<double> x(k);
      for (std::int64_t s = 0; s < k; ++s) x[s] = v[cand[s]];
      columns.matvec(cand.data(), k, x.data(), cand_r.data());
      for (std::int64_t i = 0; i < n; ++i) cand_r[i] -= b[i];
    }
    double rr = 0.0;
    for (std::int64_t i = 0; i < n; ++i) rr += cand_r[i] * cand_r[i];
    double reg = 0.0;
    if (ridge != 0.0) {
      // ||x - w_bar||^2 over all p: w_bar^2 off the candidate support, (v - w_bar)^2 on it.
      reg = wbar_sq;
      for (std::int64_t s = 0; s < k; ++s) {
        const std::int64_t j = cand[s];
        const double dj = v[j] - w_bar[j];
        reg += dj * dj - w_bar[j] * w_bar[j];
      }
    }
    return 0.5 * rr + 0.5 * ridge * reg;
  }
};

}  // namespace

template <class T>
StepResult chita_step(const MatView<T>& A, const double* b, const double* w_bar, double ridge,
                      const double* g, double* w, double* r, std::int64_t* support,
                      std::int64_t k, double f, const std::int64_t* cols, std::int64_t p_local) {
  Columns<T> columns{A, cols, cols != nullptr ? p_local : A.p, {}};
  const std::int64_t n = A.n, p = columns.p;
  const double m = (k < p) ? max_off_support(g, p, support, k) : 0.0;
  const double tau_chg = support_preserving_bound(g, w, support, k, p, m);

  // Exact minimiser along d = g restricted to S.
  std::vector<double> d(k), Ad(n);
  double dd = 0.0;
  for (std::int64_t s = 0; s < k; ++s) {
    d[s] = g[support[s]];
    dd += d[s] * d[s];
  }
  columns.matvec(support, k, d.data(), Ad.data());
  double adad = 0.0;
  for (std::int64_t i = 0; i < n; ++i) adad += Ad[i] * Ad[i];
  const double curv = adad + ridge * dd;
  // At an exact refit the gradient on S is rounding noise; a step along it would make every
  // decision below depend on rounding. Treat S as stationary when its gradient is that small.
  double dmax = 0.0;
  for (std::int64_t s = 0; s < k; ++s) dmax = std::max(dmax, std::fabs(d[s]));
  const bool stationary = dmax <= constants::kStationary * m;
  const double tau_star = (!stationary && dd > 0.0 && curv > 0.0) ? dd / curv : 0.0;

  if (tau_star > 0.0 && tau_star < tau_chg) {
    for (std::int64_t s = 0; s < k; ++s) w[support[s]] -= tau_star * d[s];
    for (std::int64_t i = 0; i < n; ++i) r[i] -= tau_star * Ad[i];
    return {objective_from_residual(r, n, w, w_bar, p, ridge), tau_star, 0, false};
  }

  CandidateSearch<T> search(columns, b, w_bar, ridge, g, w, r, support, k, Ad);
  bool best_changed = false;
  std::vector<std::int64_t> best_support(k);
  std::vector<double> best_x(k), best_r(n);
  auto keep = [&](double, double) {
    best_changed = search.changed;
    best_support = search.cand;
    for (std::int64_t s = 0; s < k; ++s) best_x[s] = search.v[search.cand[s]];
    best_r = search.cand_r;
  };
  const LadderResult best = step_ladder(
      tau_chg, tau_star, f, [&](double tau) { return search.evaluate(tau); }, keep);
  if (!best.accepted) return {f, 0.0, best.n_candidates, false};

  for (std::int64_t s = 0; s < k; ++s) w[support[s]] = 0.0;
  for (std::int64_t s = 0; s < k; ++s) {
    support[s] = best_support[s];
    w[support[s]] = best_x[s];
  }
  for (std::int64_t i = 0; i < n; ++i) r[i] = best_r[i];
  return {best.f, best.tau, best.n_candidates, best_changed};
}

#define CHITA_INSTANTIATE(T)                                                              \
  template StepResult chita_step<T>(const MatView<T>&, const double*, const double*, double,   \
                                    const double*, double*, double*, std::int64_t*,              \
                                    std::int64_t, double, const std::int64_t*, std::int64_t);
CHITA_FOR_EACH_STORAGE(CHITA_INSTANTIATE)
#undef CHITA_INSTANTIATE

}  // namespace chita

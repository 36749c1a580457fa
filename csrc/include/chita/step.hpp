// The CHITA line-search step (docs/design.md, section 2.1, steps 2-5).
#pragma once

#include "chita/common.hpp"

namespace chita {

struct StepResult {
  double f;             // objective after the step (never above the one before)
  double tau;           // accepted step size, 0 if none
  int n_candidates;     // hard-thresholded candidates evaluated (one support mat-vec each)
  bool support_changed;
};

// One step from the state (w, r, support) along the gradient g, on all columns of A or, with
// `cols`, on the subproblem A[:, cols] (CHITA's active set; P below is then p_local, and every
// vector and index is local to it).
//   A       [n, p]
//   cols    [P]   sorted column indices of A, or null (P = p)
//   b       [n]
//   w_bar   [P]
//   g       [P]   A^T r + ridge (w - w_bar), at w
//   w       [P]   in/out, zero off the support
//   r       [n]   in/out, A w - b
//   support [k]   in/out, sorted
//   f              objective at w
// Support-preserving bound tau_chg, exact step tau_star on the support; if tau_star < tau_chg
// the support is kept and r is updated from A d (no extra pass); otherwise forward doubling over
// H_k(w - tau g) from just below tau_chg, with a backtracking fallback from tau_star.
template <class T>
StepResult chita_step(const MatView<T>& A, const double* b, const double* w_bar, double ridge,
                      const double* g, double* w, double* r, std::int64_t* support,
                      std::int64_t k, double f, const std::int64_t* cols = nullptr,
                      std::int64_t p_local = -1);

// 0.5 ||r||^2 + 0.5 ridge ||w - w_bar||^2 in float64.
double objective_from_residual(const double* r, std::int64_t n, const double* w,
                               const double* w_bar, std::int64_t p, double ridge);

}  // namespace chita

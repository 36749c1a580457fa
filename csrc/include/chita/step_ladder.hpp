// The step sizes the CHITA step tries when the exact step changes the support (docs/design.md,
// section 2, step 5), shared by the CPU and the CUDA step so that both take the same decisions.
// Its constants (shrink factor, ladder lengths, ratio) come from chita/constants.hpp, generated
// from chita_core/backends/constants.py, which the numba step reads too.
#pragma once

#include <cmath>

#include "chita/constants.hpp"

namespace chita {

struct LadderResult {
  double f;          // best objective found (the starting f when nothing improved)
  double tau;        // its step size (0 when nothing improved)
  int n_candidates;  // candidates evaluated
  bool accepted;     // some candidate lowered f
};

// Forward doubling from just below the support-changing step tau_chg (from tau_star when
// tau_chg is infinite): keep improving, stop at the first candidate that does not. If nothing
// improved (e.g. tau_chg == 0 because the support holds zeros), backtrack from tau_star and take
// the first improvement. kForwardSteps / kBacktrackSteps candidates at most on each ladder, a
// ratio of kLadderFactor between consecutive steps.
//   evaluate(tau) -> objective of H_k(w - tau g), leaving that candidate current
//   keep(tau, f)     stores the current candidate as the best one
template <class Evaluate, class Keep>
LadderResult step_ladder(double tau_chg, double tau_star, double f, Evaluate&& evaluate,
                         Keep&& keep) {
  LadderResult out{f, 0.0, 0, false};
  auto take = [&](double tau, double fc) {
    out = {fc, tau, out.n_candidates, true};
    keep(tau, fc);
  };
  const double base = std::isinf(tau_chg) ? tau_star : tau_chg / constants::kTauChgShrink;
  if (base > 0.0) {
    double tau = base;
    for (int j = 0; j < constants::kForwardSteps; ++j, tau *= constants::kLadderFactor) {
      const double fc = evaluate(tau);
      ++out.n_candidates;
      if (!(fc < out.f)) break;
      take(tau, fc);
    }
  }
  if (!out.accepted && tau_star > 0.0) {
    double tau = tau_star;
    for (int j = 0; j < constants::kBacktrackSteps; ++j, tau /= constants::kLadderFactor) {
      const double fc = evaluate(tau);
      ++out.n_candidates;
      if (fc < out.f) {
        take(tau, fc);
        break;
      }
    }
  }
  return out;
}

}  // namespace chita

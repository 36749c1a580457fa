// The CHITA line-search step on the GPU (docs/design.md, section 2.1, steps 2-5): a port of
// csrc/cpu/step.cpp with the same decisions and constants.
#pragma once

#include "chita/cuda/common.hpp"

namespace chita::cuda {

struct StepResult {
  double f;             // objective after the step (never above the one before)
  double tau;           // accepted step size, 0 if none
  int n_candidates;     // hard-thresholded candidates evaluated (one support mat-vec each)
  bool support_changed;
};

// One step from (w, r, support) along g, on all of A or, with `cols`, on A[:, cols] (CHITA's
// active set: P = p_local, and g, w, w_bar, support are local; local column j is column cols[j]
// of A, mapped on the device before every mat-vec, A never copied).
//   A       [n, p]
//   b       [n]
//   w_bar   [P]
//   g       [P]   A^T r + ridge (w - w_bar) at w
//   w       [P]   in/out, zero off the support
//   r       [n]   in/out, A w - b
//   support [k]   in/out, sorted, int64
//   cols    [P]   sorted int64 columns of A, or null (P = p)
//   f             objective at w
// The host drives small kernels and reads back scalars only (the bound tau_chg, the exact-step
// sums, the size of each candidate's support change and each candidate's objective), so it
// synchronises the stream a few times per candidate.
StepResult chita_step(const DeviceMatrix& A, const double* b, const double* w_bar, double ridge,
                      const double* g, double* w, double* r, std::int64_t* support,
                      std::int64_t k, double f, const std::int64_t* cols, std::int64_t p_local,
                      cudaStream_t stream);

}  // namespace chita::cuda

// Gradient family: the full pass over A that every IHT iteration makes.
#pragma once

#include "chita/common.hpp"

namespace chita {

// out = A^T r + ridge * (w - w_bar)
//   A     [n, p]  either layout
//   r     [n]     residual A w - b
//   w     [p]     current weights       (both null: out = A^T r, the plain transpose mat-vec)
//   w_bar [p]     reference weights (the ridge pulls towards them)
//   out   [p]     float64, written
// One pass over A, multithreaded over columns; float64 accumulation.
template <class T>
void gradient(const MatView<T>& A, const double* r, const double* w, const double* w_bar,
              double ridge, double* out);

// out[j] = sum_i A_ij^2 (the curvature of weight j, diag of A^T A)
//   A   [n, p]  either layout
//   out [p]     float64, written
// Same loops as `gradient`: one pass over A.
template <class T>
void column_sqnorms(const MatView<T>& A, double* out);

}  // namespace chita

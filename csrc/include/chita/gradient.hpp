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

}  // namespace chita

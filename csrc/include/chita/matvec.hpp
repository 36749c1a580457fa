// Mat-vec family: A restricted to a column subset (the support), and its transpose.
#pragma once

#include "chita/common.hpp"

namespace chita {

// out = A[:, idx] @ x
//   A   [n, p]   either layout
//   idx [m]      int64, unique, in [0, p)
//   x   [m]      float64 values on idx
//   out [n]      float64, written
// F order reads only the m selected columns. C order reads whole rows: a row is contiguous, so
// once m/p exceeds about 1/16 a gather would touch nearly every cache line of the row anyway;
// below that it gathers.
template <class T>
void support_matvec(const MatView<T>& A, const std::int64_t* idx, std::int64_t m, const double* x,
                    double* out);

// out = A[:, idx]^T @ y
//   A   [n, p], idx [m], y [n], out [m] (written)
template <class T>
void support_rmatvec(const MatView<T>& A, const std::int64_t* idx, std::int64_t m, const double* y,
                     double* out);

}  // namespace chita

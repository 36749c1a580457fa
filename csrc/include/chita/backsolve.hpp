// Exact minimiser of the objective on a fixed support.
#pragma once

#include "chita/common.hpp"

namespace chita {

// out = argmin over x of 0.5 ||A[:, idx] x - b||^2 + 0.5 ridge ||x - w_bar_s||^2
//   A        [n, p]
//   b        [n]
//   idx      [m]   support
//   w_bar_s  [m]   w_bar on the support
//   out      [m]   written
// With c = b - A_S w_bar_s and x = w_bar_s + z:
//   m <= n: (A_S^T A_S + ridge I) z = A_S^T c           m x m Cholesky, O(n m^2 + m^3)
//   m >  n: z = A_S^T (A_S A_S^T + ridge I)^{-1} c      Woodbury / push-through, n x n Cholesky,
//                                                       O(n^2 m + n^3), never m x m
// Gram matrices accumulate in float64. A non-positive pivot (ridge == 0 and A_S rank-deficient)
// triggers a retry with diagonal jitter 1e-12 * mean(diag), growing 100x per retry.
// Returns the jitter used (0 normally). Throws std::runtime_error if the system stays singular.
template <class T>
double backsolve(const MatView<T>& A, const double* b, const std::int64_t* idx, std::int64_t m,
                 const double* w_bar_s, double ridge, double* out);

// out = A[:, idx] A[:, idx]^T, the n x n Gram matrix of the support (row-major, full symmetric)
//   A   [n, p], idx [m], out [n, n] float64, written
// O(n^2 m): panels of support columns gathered to float64, 4 x 4 blocked dot products.
// The refinement (swap search) keeps (ridge I + this)^{-1} up to date by rank-2 updates.
template <class T>
void support_gram(const MatView<T>& A, const std::int64_t* idx, std::int64_t m, double* out);

}  // namespace chita

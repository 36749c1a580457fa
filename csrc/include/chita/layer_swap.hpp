#pragma once
// Exact swap local search of the layer-wise rows (docs/design.md, section 14.6; the NumPy
// reference is chita_core/layer/_swaps.py: swap_search_numpy).

#include <cstdint>

namespace chita {

// For every row r of a layer: from the mask mask[r, :] (1 = kept, k_r entries), repeat the best
// exchange of one kept input for one pruned one (among all pairs; with m > 0 only pairs in the
// same group of m consecutive inputs) while it lowers the row's objective
//     (w - w_bar)^T H (w - w_bar) = c0[r] - 2 b^T w + w^T H w,   b = B[r, :] = (H w_bar)_r,
// by more than tol x its current value, at most max_swaps times. Each exchange is scored
// exactly from the inverse of H on the mask and C = H_{:,K} H_KK^-1 (rank-2 updates per swap,
// refactored from scratch every `refresh` swaps when refresh > 0). On return mask[r, :] is the
// final mask, W[r, :] the exact minimiser on it (zero off it) and swaps[r] the number of
// exchanges, or -1 where H_KK was not positive definite (that row untouched). H (d x d) is
// symmetric positive definite, row-major. Rows run in parallel; needs lapack::set() first.
void row_swap_search(const double* H, std::int64_t d, const double* B, const double* c0,
                     std::int64_t rows, std::int64_t m, std::int64_t max_swaps, double tol,
                     std::int64_t refresh, std::uint8_t* mask, double* W, std::int64_t* swaps);

}  // namespace chita

// Swap local search scoring on the GPU (chita_core/_refine.py: _pair_scores and the `delta` of
// swap_search, fused).
#pragma once

#include "chita/cuda/common.hpp"

namespace chita::cuda {

// out[a, b] = change of the objective when io[a] leaves the support and jn[b] enters:
//   0.5 lam (c'^T K'^{-1} c' - s0 + wv[I]^2 - wv[J]^2), I = io[a], J = jn[b]
// by Woodbury on the rank-2 change of K (see _pair_scores).
//   G   [ldg, ldg]  float64, row-major
//   q   [ldg], wv [ldg]  float64
//   jn  [n_jn], io [n_io]  int64 indices into q / wv / G
//   out [n_io, n_jn]  float64, row-major, written
void launch_swap_scores(const double* G, std::int64_t ldg, const double* q, double s0,
                        const double* wv, const std::int64_t* jn, std::int64_t n_jn,
                        const std::int64_t* io, std::int64_t n_io, double lam, double* out,
                        cudaStream_t stream);

}  // namespace chita::cuda

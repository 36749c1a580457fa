#pragma once
// Swap scoring for swap local search (docs/design.md, section 5; the NumPy reference is
// chita_core/backends/host.py: swap_scores, the CUDA version csrc/cuda/swap.cu).

#include <cstdint>

namespace chita {

// out[a * nj + b] = change of f when column io[a] leaves the support and jn[b] enters, from
// the candidates' n-space products G = V^T K^-1 V and q = V^T K^-1 c, s0 = c^T K^-1 c:
//   G   [c, c] row-major, symmetric        q  [c]        wv [c] (w_bar on the candidates)
//   jn  [nj] indices into the candidates   io [ni]       out [ni, nj] row-major
// A pair whose 2x2 determinant is not negative (rounding on a degenerate pair) or whose score
// is not finite scores +inf: it is never chosen.
void swap_scores(const double* G, std::int64_t c, const double* q, double s0, const double* wv,
                 const std::int64_t* jn, std::int64_t nj, const std::int64_t* io, std::int64_t ni,
                 double lam, double* out);

// Greedy OBS within a pool (docs/design.md, section 4): `count` removals, one at a time, from
// the pool's n-space products G = A_C^T K^-1 A_C ([c, c] row-major, symmetric; overwritten) and
// its exact optimum x ([c]; overwritten). Each removal takes the live q of least saliency
// x_q^2 / max(1 - G_qq, eps) (ties and NaN scores: the lowest live index, NaN ranking as +inf)
// and moves the others to the new optimum: x += G[:, q] x_q / d_q, G += G[:, q] G[q, :] / d_q.
// order[t] = the pool index removed t-th. The NumPy reference is backends/host.py.
void pool_eliminate(double* G, double* x, std::int64_t c, std::int64_t count,
                    std::int64_t* order);

// The same for `batch` independent pools at once (G [batch, c, c], x [batch, c],
// order [batch, count], all row-major), in parallel over the pools: the layer-wise greedy OBS
// runs one pool per output row.
void pool_eliminate_batch(double* G, double* x, std::int64_t batch, std::int64_t c,
                          std::int64_t count, std::int64_t* order);

}  // namespace chita

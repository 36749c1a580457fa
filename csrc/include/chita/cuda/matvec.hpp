// Mat-vec family on the GPU: A restricted to a column subset (the support), and its transpose.
// Same contracts as chita/matvec.hpp; every pointer is device memory, all work is queued on
// `stream` (nothing synchronises).
#pragma once

#include "chita/cuda/common.hpp"

namespace chita::cuda {

// out = A[:, idx] @ x
//   A   [n, p]   either layout, any storage type
//   idx [m]      int64, sorted, distinct, in [0, p); m may be 0 (out = 0)
//   x   [m]      float64
//   out [n]      float64, written
// F order reads only the m selected columns, coalesced over rows, with the columns split across
// blocks (row tiles x column chunks) so that small n still fills the GPU; float64 partials
// [chunks, n] are summed in chunk order by a second kernel. C order: a block per row (times
// column splits when n is small), threads strided over the support.
void launch_support_matvec(const DeviceMatrix& A, const std::int64_t* idx, std::int64_t m,
                           const double* x, double* out, cudaStream_t stream);

// out = A[:, idx]^T @ y
//   A [n, p], idx [m], y [n] float64, out [m] float64 (written)
// F order: one warp per selected column. C order: a thread per selected column, looping over
// rows (row chunks with partials when m is small). See launch_column_dots.
void launch_support_rmatvec(const DeviceMatrix& A, const std::int64_t* idx, std::int64_t m,
                            const double* y, double* out, cudaStream_t stream);

// out[s] = map[idx[s]]: local index lists (CHITA's active set) to columns of A.
//   map [P], idx [m], out [m]; all int64
void launch_gather_index(const std::int64_t* map, const std::int64_t* idx, std::int64_t m,
                         std::int64_t* out, cudaStream_t stream);

}  // namespace chita::cuda

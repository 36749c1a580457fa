// Gradient family on the GPU: the full pass over A that every IHT iteration makes. Same
// contracts as chita/gradient.hpp; device pointers, work queued on `stream`.
#pragma once

#include "chita/cuda/common.hpp"

namespace chita::cuda {

// out = A^T r + ridge * (w - w_bar)
//   A     [n, p]  either layout, any storage type
//   r     [n]     float64
//   w     [p]     float64, or null: out = A^T r (w_bar is then ignored)
//   w_bar [p]     float64
//   out   [p]     float64, written
// Bandwidth-bound: F order gives each column to a warp with 16-byte loads (scalar head and
// tail when a column is not 16-byte aligned); C order gives each thread 16 bytes of
// consecutive columns (one column when rows are not 16-byte aligned) and loops over the rows
// with four rows of loads in flight; when p is too small to fill the GPU the rows are split into
// chunks whose float64 partials [chunks, p] are summed in chunk order.
void launch_gradient(const DeviceMatrix& A, const double* r, const double* w, const double* w_bar,
                     double ridge, double* out, cudaStream_t stream);

// out[j] = sum_i A_ij^2
//   A [n, p], out [p] float64, written. Same loops as launch_gradient.
void launch_column_sqnorms(const DeviceMatrix& A, double* out, cudaStream_t stream);

// The kernel behind both, and behind support_rmatvec:
//   out[s] = sum_i A[i, j_s] * y[i]   (or A[i, j_s]^2 when y is null)
//            + ridge * (w[j_s] - w_bar[j_s])   when w is not null
// with j_s = idx[s] (idx [count], sorted) or j_s = s when idx is null (count = p).
void launch_column_dots(const DeviceMatrix& A, const std::int64_t* idx, std::int64_t count,
                        const double* y, const double* w, const double* w_bar, double ridge,
                        double* out, cudaStream_t stream);

}  // namespace chita::cuda

// Support columns of A, gathered and converted to float64.
#pragma once

#include "chita/cuda/common.hpp"

namespace chita::cuda {

// X[t * n + i] = A[i, idx[t]] for t < m (X column-major [n, m], column t contiguous), float64
//   A [n, p] any layout and storage dtype, idx [m] (m >= 0), X [n * m] written
// F order copies columns (coalesced on both sides); C order goes through a shared-memory tile so
// that the row reads and the column writes are both coalesced. The dense algebra on these panels
// (support Gram matrix, the Cholesky factor of backsolve) runs in CuPy (cuBLAS / cuSOLVER), so
// this module links only the CUDA runtime and builds wherever nvcc is.
void gather_columns(const DeviceMatrix& A, const std::int64_t* idx, std::int64_t m, double* X,
                    cudaStream_t stream);

}  // namespace chita::cuda

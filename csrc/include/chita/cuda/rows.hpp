// Row masks of the layer-wise patterns on the GPU. Same contract as chita/rows.hpp (the NumPy
// reference is chita_core/layer/_problem.py: LayerProblem.project_numpy).
#pragma once

#include "chita/cuda/common.hpp"

namespace chita::cuda {

// mask[r * d + j] = 1 for the k largest s[r * d + j] of each row r, else 0; ties go to the lower
// index and NaN ranks below every number (-0.0 ties with +0.0, as the CPU comparison has it).
//   s    [rows, d]  float64, row-major
//   mask [rows, d]  uint8, written
// One block per row: a radix select on the order-preserving 64-bit key of each score (8 passes of
// 8 bits, shared-memory histograms, the digit picked in the block), then the kept entries in index
// order with a block-wide scan ranking the ties at the threshold. O(d) per row, never a sort.
void launch_row_top_mask(const double* s, std::int64_t rows, std::int64_t d, std::int64_t k,
                         std::uint8_t* mask, cudaStream_t stream);

// The same within every group of m consecutive entries of a row: the n largest kept (d % m == 0).
// One thread per group, each entry ranked against the group's others (m is a handful).
void launch_group_top_mask(const double* s, std::int64_t rows, std::int64_t d, std::int64_t n,
                           std::int64_t m, std::uint8_t* mask, cudaStream_t stream);

}  // namespace chita::cuda

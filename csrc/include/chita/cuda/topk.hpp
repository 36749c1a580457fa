// Top-k selection by magnitude on the GPU. Same contract as chita/topk.hpp.
#pragma once

#include "chita/cuda/common.hpp"

namespace chita::cuda {

// out = indices of the k largest |v|, ties to the lower index, ascending.
//   v   [p]  float64, finite (callers validate)
//   out [k]  int64, written; 1 <= k <= p
// O(p) radix select on the bit pattern of |v| (monotone for non-negative doubles): 8 passes of
// 8 bits, each a histogram over the keys that match the prefix found so far, and a one-block
// kernel that picks the digit on the device (no host round trip per pass). The threshold key T
// then selects every key > T and the first `remaining` keys == T in index order (exclusive
// scan of the equality flags), compacted stably so the output is sorted. Never a full sort;
// nothing is read back to the host.
void launch_topk(const double* v, std::int64_t p, std::int64_t k, std::int64_t* out,
                 cudaStream_t stream);

}  // namespace chita::cuda

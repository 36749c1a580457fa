// Top-k selection by magnitude.
#pragma once

#include <cstdint>

namespace chita {

// out = sorted indices of the k largest |v|, ties to the lower index.
//   v   [p]  float64 (no NaN: callers validate)
//   out [k]  int64, written, ascending; 1 <= k <= p
// O(p): radix select on the bit pattern of |v| (monotone for non-negative doubles) finds the
// threshold key, then one in-order pass writes the winners, so the output is sorted by index and
// equal keys are taken lowest index first. No sort of p elements.
void topk(const double* v, std::int64_t p, std::int64_t k, std::int64_t* out);

}  // namespace chita

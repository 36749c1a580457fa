#pragma once
// Row masks of the layer-wise patterns (docs/design.md, section 14.1; the NumPy reference is
// chita_core/layer/_problem.py: Pattern.project).

#include <cstdint>

namespace chita {

// mask[r * d + j] = 1 for the k largest s[r * d + j] of each row r, else 0; ties go to the lower
// index and NaN ranks below every number. O(d) per row (a selection), rows in parallel.
void row_top_mask(const double* s, std::int64_t rows, std::int64_t d, std::int64_t k,
                  std::uint8_t* mask);

// The same within every group of m consecutive entries of a row: the n largest kept (d % m == 0).
void group_top_mask(const double* s, std::int64_t rows, std::int64_t d, std::int64_t n,
                    std::int64_t m, std::uint8_t* mask);

}  // namespace chita

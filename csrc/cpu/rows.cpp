#include "chita/rows.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

namespace chita {

namespace {

// Larger key first, then the lower index: a strict weak order (NaN mapped to -inf first).
struct Before {
  const double* key;
  bool operator()(std::int64_t a, std::int64_t b) const {
    return key[a] > key[b] || (key[a] == key[b] && a < b);
  }
};

void keys_of(const double* s, std::int64_t len, std::vector<double>& key) {
  key.resize(static_cast<std::size_t>(len));
  for (std::int64_t j = 0; j < len; ++j)
    key[j] = std::isnan(s[j]) ? -std::numeric_limits<double>::infinity() : s[j];
}

}  // namespace

void row_top_mask(const double* s, std::int64_t rows, std::int64_t d, std::int64_t k,
                  std::uint8_t* mask) {
#pragma omp parallel
  {
    std::vector<double> key;
    std::vector<std::int64_t> idx(static_cast<std::size_t>(d));
#pragma omp for schedule(static)
    for (std::int64_t r = 0; r < rows; ++r) {
      keys_of(s + r * d, d, key);
      std::uint8_t* out = mask + r * d;
      std::fill(out, out + d, std::uint8_t{0});
      if (k <= 0) continue;
      std::iota(idx.begin(), idx.end(), std::int64_t{0});
      if (k < d)
        std::nth_element(idx.begin(), idx.begin() + (k - 1), idx.end(), Before{key.data()});
      for (std::int64_t t = 0; t < std::min(k, d); ++t) out[idx[t]] = 1;
    }
  }
}

void group_top_mask(const double* s, std::int64_t rows, std::int64_t d, std::int64_t n,
                    std::int64_t m, std::uint8_t* mask) {
#pragma omp parallel
  {
    std::vector<double> key;
    std::vector<std::int64_t> idx(static_cast<std::size_t>(m));
#pragma omp for schedule(static)
    for (std::int64_t r = 0; r < rows; ++r) {
      for (std::int64_t g = 0; g < d / m; ++g) {
        const std::int64_t off = r * d + g * m;
        keys_of(s + off, m, key);
        std::iota(idx.begin(), idx.end(), std::int64_t{0});
        std::sort(idx.begin(), idx.end(), Before{key.data()});  // m is a handful
        std::fill(mask + off, mask + off + m, std::uint8_t{0});
        for (std::int64_t t = 0; t < std::min(n, m); ++t) mask[off + idx[t]] = 1;
      }
    }
  }
}

}  // namespace chita

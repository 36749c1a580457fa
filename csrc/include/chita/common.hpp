// Shared types for the CPU kernels: a non-owning view of the gradient matrix A and small helpers.
// Headers here include no Python; the pybind11 module (csrc/bind_core.cpp) builds the views.
#pragma once

#include <cstdint>
#include <stdexcept>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace chita {

// A is n x p, stored either with rows contiguous (C order, one gradient per row) or with
// columns contiguous (F order). Kernels never copy A; they pick the loop order per layout.
template <class T>
struct MatView {
  const T* data;      // [n * p]
  std::int64_t n;     // rows (samples)
  std::int64_t p;     // columns (weights)
  bool col_major;     // true: F order, column j at data + j * n; false: row i at data + i * p

  const T* col(std::int64_t j) const { return data + j * n; }  // F order only
  const T* row(std::int64_t i) const { return data + i * p; }  // C order only
};

inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Parallel regions only pay off above a few tens of thousands of multiply-adds.
constexpr std::int64_t kParallelWork = 1 << 15;

// Contiguous static split of [0, total) into `parts` ranges: range `part` is [begin, end).
inline void split_range(std::int64_t total, int parts, int part, std::int64_t& begin,
                        std::int64_t& end) {
  const std::int64_t base = total / parts, extra = total % parts;
  begin = part * base + (part < extra ? part : extra);
  end = begin + base + (part < extra ? 1 : 0);
}

}  // namespace chita

// Shared types for the CPU kernels: a non-owning view of the gradient matrix A and small helpers.
// Headers here include no Python; the pybind11 module (csrc/bind_core.cpp) builds the views.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <type_traits>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace chita {

// Half-precision storage of A (docs/design.md, section 8.2). Kernels convert each element to
// double as they read it (`double(a)`), so every sum is float64 whatever A's storage: half the
// bytes of float32 per pass, the same arithmetic. Both conversions are branch-free integer and
// float operations that the compiler vectorises inside the kernels' simd loops (the compiler's
// _Float16 was a scalar library call per element here, 25x slower than float32; with F16C it
// vectorised in isolation but ran the gradient 1.6x slower than these operations).
//   bf16: bfloat16, the high half of a float32: a 16-bit shift.
//   f16:  IEEE binary16: exponent rebiased, subnormals scaled from their integer mantissa,
//         Inf/NaN given the all-ones exponent; exact for every input.
struct bf16 {
  std::uint16_t bits;
  operator float() const {
    const std::uint32_t u = std::uint32_t(bits) << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
  }
};
struct f16 {
  std::uint16_t bits;
  operator float() const {
    const std::uint32_t sign = std::uint32_t(bits & 0x8000u) << 16;
    const std::uint32_t em = bits & 0x7fffu;  // exponent and mantissa
    const std::uint32_t normal = (em << 13) + (std::uint32_t(127 - 15) << 23);
    const std::uint32_t special = (em << 13) | 0x7f800000u;  // Inf, NaN (payload kept)
    const float sub = float(std::int32_t(em)) * 5.9604644775390625e-08f;  // em x 2^-24
    std::uint32_t sub_bits;
    std::memcpy(&sub_bits, &sub, sizeof sub_bits);
    // Selections by masks rather than ?: (which the vectoriser read as control flow).
    const std::uint32_t is_special = 0u - std::uint32_t(em >= 0x7c00u);
    const std::uint32_t is_normal = (0u - std::uint32_t(em >= 0x0400u)) & ~is_special;
    const std::uint32_t is_sub = ~(is_special | is_normal);
    const std::uint32_t u =
        sign | (special & is_special) | (normal & is_normal) | (sub_bits & is_sub);
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
  }
};
static_assert(sizeof(f16) == 2 && sizeof(bf16) == 2, "16-bit storage types");

// The 16-bit storage types. Their full passes are compute-bound in float64 (widening each
// element to double and a double FMA per element cost more than reading its 2 bytes), so the
// kernels form products and short partial sums in float32 (16 lanes per AVX-512 op, not 8) and
// add each partial into a float64 sum. A partial takes a few to a few tens of products: its
// rounding is a few float32 ulps of its terms, far below the 2^-8 (bfloat16) / 2^-11 (float16)
// rounding of A itself.
template <class T>
inline constexpr bool kHalf = std::is_same_v<T, f16> || std::is_same_v<T, bf16>;
// Products per float32 partial of a 16-bit transposed pass, over all SIMD lanes (16 per lane
// with 16 float lanes): gradient.cpp and matvec.cpp.
constexpr std::int64_t kHalfBlock = 256;

// X(T) for every storage type of A: explicit instantiations of the templated kernels.
#define CHITA_FOR_EACH_STORAGE(X) X(float) X(double) X(::chita::f16) X(::chita::bf16)

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

#include "chita/topk.hpp"

#include <cmath>
#include <cstring>
#include <vector>

#include "chita/common.hpp"

namespace chita {

namespace {

// For non-negative doubles (|v|, including +0, subnormals and +inf) the IEEE bit pattern read as
// an unsigned integer is monotone in the value, so selecting on keys selects on magnitudes.
inline std::uint64_t magnitude_key(double v) {
  const double a = std::fabs(v);
  std::uint64_t u;
  std::memcpy(&u, &a, sizeof u);
  return u;
}

constexpr int kDigitBits = 16;
constexpr std::int64_t kTopkParallel = std::int64_t(1) << 22;
constexpr std::size_t kBins = std::size_t(1) << kDigitBits;

// Within a histogram, find the digit holding the `need`-th largest key. On return `need` is the
// rank of the wanted key among the keys with that digit.
int pick_digit(const std::vector<std::int64_t>& hist, std::int64_t& need) {
  std::int64_t above = 0;
  for (int d = int(kBins) - 1; d >= 0; --d) {
    if (above + hist[d] >= need) {
      need -= above;
      return d;
    }
    above += hist[d];
  }
  return 0;  // unreachable when need <= total count
}

}  // namespace

void topk(const double* v, std::int64_t p, std::int64_t k, std::int64_t* out) {
  if (k >= p) {
    for (std::int64_t i = 0; i < p; ++i) out[i] = i;
    return;
  }
  // One thread selects from 3e5 keys in about a millisecond; below a few million keys a
  // parallel region costs more than it saves, and on a loaded machine its barriers can stall
  // for whole scheduler ticks.
  const bool par = p >= kTopkParallel;
  const int nt = par ? max_threads() : 1;

  // Pass 1: histogram of the top digit over all p keys (per-thread histograms, merged in order).
  std::vector<std::int64_t> hist(kBins, 0);
  {
    std::vector<std::vector<std::int64_t>> local(nt);
#pragma omp parallel num_threads(nt) if (par)
    {
      auto& h = local[thread_id()];
      h.assign(kBins, 0);
#pragma omp for schedule(static)
      for (std::int64_t i = 0; i < p; ++i) ++h[magnitude_key(v[i]) >> (64 - kDigitBits)];
    }
    for (auto& h : local)
      if (!h.empty())
        for (std::size_t d = 0; d < kBins; ++d) hist[d] += h[d];
  }
  std::int64_t need = k;
  int shift = 64 - kDigitBits;
  std::uint64_t prefix = std::uint64_t(pick_digit(hist, need)) << shift;
  std::uint64_t mask = ~std::uint64_t(0) << shift;

  // Keep only the keys that share the prefix found so far; refine one digit at a time.
  std::vector<std::uint64_t> cand;
  {
    std::vector<std::vector<std::uint64_t>> local(nt);
#pragma omp parallel num_threads(nt) if (par)
    {
      auto& c = local[thread_id()];
#pragma omp for schedule(static)
      for (std::int64_t i = 0; i < p; ++i) {
        const std::uint64_t key = magnitude_key(v[i]);
        if ((key & mask) == prefix) c.push_back(key);
      }
    }
    for (auto& c : local) cand.insert(cand.end(), c.begin(), c.end());
  }
  while (shift > 0) {
    shift -= kDigitBits;
    std::fill(hist.begin(), hist.end(), 0);
    for (std::uint64_t key : cand) ++hist[(key >> shift) & (kBins - 1)];
    prefix |= std::uint64_t(pick_digit(hist, need)) << shift;
    mask = ~std::uint64_t(0) << shift;
    std::size_t kept = 0;
    for (std::uint64_t key : cand)
      if ((key & mask) == prefix) cand[kept++] = key;
    cand.resize(kept);
  }
  // prefix is now the threshold key T: every key > T is in, and the `need` lowest-index keys
  // equal to T complete the k.
  const std::uint64_t thresh = prefix;

  // Emission: count per thread range, give the ties to the lowest ranges first, then write.
  std::vector<std::int64_t> n_gt(nt, 0), n_eq(nt, 0), take_eq(nt, 0), offset(nt, 0);
#pragma omp parallel num_threads(nt) if (par)
  {
    const int t = thread_id();
    int nth = 1;
#ifdef _OPENMP
    nth = omp_get_num_threads();
#endif
    std::int64_t begin, end;
    split_range(p, nth, t, begin, end);
    std::int64_t gt = 0, eq = 0;
    for (std::int64_t i = begin; i < end; ++i) {
      const std::uint64_t key = magnitude_key(v[i]);
      gt += key > thresh;
      eq += key == thresh;
    }
    n_gt[t] = gt;
    n_eq[t] = eq;
#pragma omp barrier
#pragma omp single
    {
      std::int64_t eq_before = 0, off = 0;
      for (int u = 0; u < nth; ++u) {
        const std::int64_t left = need - eq_before;
        take_eq[u] = left <= 0 ? 0 : (left < n_eq[u] ? left : n_eq[u]);
        eq_before += n_eq[u];
        offset[u] = off;
        off += n_gt[u] + take_eq[u];
      }
    }
    std::int64_t pos = offset[t], eq_left = take_eq[t];
    for (std::int64_t i = begin; i < end; ++i) {
      const std::uint64_t key = magnitude_key(v[i]);
      if (key > thresh) {
        out[pos++] = i;
      } else if (key == thresh && eq_left > 0) {
        out[pos++] = i;
        --eq_left;
      }
    }
  }
}

}  // namespace chita

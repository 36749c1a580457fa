// CHITA line-search step: host orchestration of device kernels, scalars read back.
#include <cub/device/device_select.cuh>
#include <thrust/iterator/counting_iterator.h>

#include <math_constants.h>

#include <cmath>
#include <limits>
#include <utility>

#include "chita/constants.hpp"
#include "chita/cuda/matvec.hpp"
#include "chita/cuda/step.hpp"
#include "chita/cuda/topk.hpp"
#include "chita/step_ladder.hpp"
#include "device_utils.cuh"

namespace chita::cuda {

namespace {

inline unsigned blocks_for(std::int64_t len) { return grid_for(len, kBlock, 1LL << 31); }

// out = a + alpha * b (+ c when not null)
__global__ void lincomb_kernel(double* out, const double* a, double alpha, const double* b,
                               const double* c, std::int64_t len) {
  const std::int64_t i = std::int64_t(blockIdx.x) * kBlock + threadIdx.x;
  if (i < len) out[i] = a[i] + alpha * b[i] + (c != nullptr ? c[i] : 0.0);
}

__global__ void set_flags_kernel(const std::int64_t* __restrict__ idx, std::int64_t m,
                                 unsigned char* __restrict__ mask) {
  const std::int64_t s = std::int64_t(blockIdx.x) * kBlock + threadIdx.x;
  if (s < m) mask[idx[s]] = 1;
}

// dst[s] = src[idx[s]]
__global__ void gather_kernel(const double* __restrict__ src, const std::int64_t* __restrict__ idx,
                              std::int64_t m, double* __restrict__ dst) {
  const std::int64_t s = std::int64_t(blockIdx.x) * kBlock + threadIdx.x;
  if (s < m) dst[s] = src[idx[s]];
}

// w[idx[s]] = keep * w[idx[s]] + alpha * x[s]  (x null: alpha ignored)
__global__ void scatter_kernel(double* __restrict__ w, const std::int64_t* __restrict__ idx,
                               std::int64_t m, double keep, double alpha,
                               const double* __restrict__ x) {
  const std::int64_t s = std::int64_t(blockIdx.x) * kBlock + threadIdx.x;
  if (s >= m) return;
  const std::int64_t j = idx[s];
  const double kept = keep != 0.0 ? keep * w[j] : 0.0;  // exact zero whatever w[j] held
  w[j] = kept + (x != nullptr ? alpha * x[s] : 0.0);
}

__global__ void diff_flags_kernel(const unsigned char* __restrict__ old_mask,
                                  const unsigned char* __restrict__ new_mask, std::int64_t len,
                                  unsigned char* __restrict__ flags) {
  const std::int64_t j = std::int64_t(blockIdx.x) * kBlock + threadIdx.x;
  if (j < len) flags[j] = old_mask[j] != new_mask[j];
}

// Entering coordinates carry +v, leaving ones -v (the CPU merge's diff_val).
__global__ void diff_values_kernel(const std::int64_t* __restrict__ diff_idx, std::int64_t nd,
                                   const unsigned char* __restrict__ new_mask,
                                   const double* __restrict__ v, double* __restrict__ out) {
  const std::int64_t s = std::int64_t(blockIdx.x) * kBlock + threadIdx.x;
  if (s >= nd) return;
  const std::int64_t j = diff_idx[s];
  out[s] = new_mask[j] ? v[j] : -v[j];
}

// ---------------------------------------------------------------- reduction terms

struct Square {
  const double* x;
  __device__ double operator()(std::int64_t i) const { return x[i] * x[i]; }
};
struct Abs {
  const double* x;
  __device__ double operator()(std::int64_t i) const { return fabs(x[i]); }
};
struct SquaredDiff {  // (x - y)^2
  const double* x;
  const double* y;
  __device__ double operator()(std::int64_t i) const {
    const double d = x[i] - y[i];
    return d * d;
  }
};
struct AbsOffSupport {  // |g_j| off the support, 0 on it
  const double* g;
  const unsigned char* mask;
  __device__ double operator()(std::int64_t j) const { return mask[j] ? 0.0 : fabs(g[j]); }
};
// The CPU support_preserving_bound, term by term: the step at which support coordinate i is
// overtaken by the strongest outsider (m), or +inf.
struct OvertakeStep {
  const double* g;
  const double* w;
  const std::int64_t* support;
  const double* max_off;  // the device slot holding m (no read-back in between)
  __device__ double operator()(std::int64_t s) const {
    const double m = fmax(*max_off, 0.0);
    const std::int64_t i = support[s];
    const double gi = g[i], wi = w[i], ag = fabs(gi);
    double denom;
    if (wi * gi > 0.0)
      denom = ag + m;
    else if (ag < m)
      denom = m - ag;
    else
      return CUDART_INF;
    return denom > 0.0 ? fabs(wi) / denom : CUDART_INF;
  }
};
// Ridge term of a candidate relative to ||w_bar||^2: (v_j - w_bar_j)^2 - w_bar_j^2 on its support.
struct CandidateRidge {
  const double* v;
  const double* w_bar;
  const std::int64_t* cand;
  __device__ double operator()(std::int64_t s) const {
    const std::int64_t j = cand[s];
    const double d = v[j] - w_bar[j];
    return d * d - w_bar[j] * w_bar[j];
  }
};

// Scalars reduced on the device, read back together.
enum Slot { kMaxOff, kTauChg, kDD, kDMax, kADAD, kRR, kReg, kSlots };

struct StepContext {
  const DeviceMatrix& A;
  const std::int64_t* cols;  // null: all columns
  std::int64_t n, P, k;
  cudaStream_t stream;
  Buffer<double> scal;       // [kSlots + kReduceBlocks]: slots, then reduction partials
  Buffer<std::int64_t> gidx; // [2k]: local index lists mapped to columns of A

  StepContext(const DeviceMatrix& A_, const std::int64_t* cols_, std::int64_t P_, std::int64_t k_,
              cudaStream_t s)
      : A(A_), cols(cols_), n(A_.n), P(P_), k(k_), stream(s),
        scal(kSlots + kReduceBlocks, s), gidx(cols_ != nullptr ? std::size_t(2 * k_) : 0, s) {}

  double* slot(Slot i) const { return scal.get() + i; }
  double* partials() const { return scal.get() + kSlots; }

  template <class Op, class F>
  void reduce(Slot i, std::int64_t count, F f) {
    reduce_to<Op>(slot(i), count, f, partials(), stream);
  }
  // Slots [first, first + count) to the host; waits for the stream.
  void read(Slot first, int count, double* host) const {
    read_back(host, slot(first), sizeof(double) * count, stream);
  }

  // out = A[:, idx] x for a local index list.
  void matvec(const std::int64_t* idx, std::int64_t m, const double* x, double* out) {
    if (cols != nullptr) {
      launch_gather_index(cols, idx, m, gidx.get(), stream);
      idx = gidx.get();
    }
    launch_support_matvec(A, idx, m, x, out, stream);
  }

  void lincomb(double* out, const double* a, double alpha, const double* b, const double* c,
               std::int64_t len) {
    lincomb_kernel<<<blocks_for(len), kBlock, 0, stream>>>(out, a, alpha, b, c, len);
    CHITA_CUDA_LAUNCHED("lincomb_kernel");
  }
  void gather(const double* src, const std::int64_t* idx, std::int64_t m, double* dst) {
    gather_kernel<<<blocks_for(m), kBlock, 0, stream>>>(src, idx, m, dst);
    CHITA_CUDA_LAUNCHED("gather_kernel");
  }
  void scatter(double* w, const std::int64_t* idx, std::int64_t m, double keep, double alpha,
               const double* x) {
    scatter_kernel<<<blocks_for(m), kBlock, 0, stream>>>(w, idx, m, keep, alpha, x);
    CHITA_CUDA_LAUNCHED("scatter_kernel");
  }
  void mask_of(const std::int64_t* idx, std::int64_t m, unsigned char* mask) {
    CHITA_CUDA_CHECK(cudaMemsetAsync(mask, 0, std::size_t(P), stream));
    set_flags_kernel<<<blocks_for(m), kBlock, 0, stream>>>(idx, m, mask);
    CHITA_CUDA_LAUNCHED("set_flags_kernel");
  }
};

// Hard-thresholded candidates H_k(w - tau g), evaluated against the current state by reusing
// A d: for a candidate support C, A_C x_C - b = r - tau A d + A_in v_in - A_out v_out with
// v = w - tau g, so only the columns entering or leaving are read (CPU CandidateSearch).
struct CandidateSearch {
  StepContext& ctx;
  const double* b;
  const double* w_bar;
  double ridge;
  const double* g;
  const double* w;
  const double* r;
  const unsigned char* old_mask;  // [P] support of w
  const double* Ad;               // [n]
  double wbar_sq = 0.0;

  Buffer<double> v;                        // [P]
  Buffer<unsigned char> new_mask, flags;   // [P]
  Buffer<std::int64_t> cand_a, cand_b;     // [k] current / best candidate support
  Buffer<double> r_a, r_b;                 // [n] current / best candidate residual
  Buffer<double> best_x;                   // [k]
  Buffer<std::int64_t> diff_idx;           // [min(P, 2k)]
  Buffer<double> diff_val;                 // [min(P, 2k)], then x on the candidate ([k])
  Buffer<double> delta;                    // [n]
  Buffer<std::int64_t> n_diff;             // [1]
  Scratch select_temp;
  std::size_t select_bytes = 0;
  std::int64_t* cand;                      // points into cand_a / cand_b
  std::int64_t* best_cand;
  double* cand_r;
  double* best_r;
  bool changed = false;

  CandidateSearch(StepContext& c, const double* b_, const double* w_bar_, double ridge_,
                  const double* g_, const double* w_, const double* r_,
                  const unsigned char* old_mask_, const double* Ad_)
      : ctx(c), b(b_), w_bar(w_bar_), ridge(ridge_), g(g_), w(w_), r(r_), old_mask(old_mask_),
        Ad(Ad_), v(std::size_t(c.P), c.stream), new_mask(std::size_t(c.P), c.stream),
        flags(std::size_t(c.P), c.stream), cand_a(std::size_t(c.k), c.stream),
        cand_b(std::size_t(c.k), c.stream), r_a(std::size_t(c.n), c.stream),
        r_b(std::size_t(c.n), c.stream), best_x(std::size_t(c.k), c.stream),
        diff_idx(std::size_t(std::min(c.P, 2 * c.k)), c.stream),
        diff_val(std::size_t(std::max(std::min(c.P, 2 * c.k), c.k)), c.stream),
        delta(std::size_t(c.n), c.stream), n_diff(1, c.stream) {
    cand = cand_a.get();
    best_cand = cand_b.get();
    cand_r = r_a.get();
    best_r = r_b.get();
    const thrust::counting_iterator<std::int64_t> index(0);
    CHITA_CUDA_CHECK(cub::DeviceSelect::Flagged(nullptr, select_bytes, index, flags.get(),
                                                diff_idx.get(), n_diff.get(), ctx.P, ctx.stream));
    select_temp = Scratch(select_bytes, ctx.stream);
    if (ridge != 0.0) {
      ctx.reduce<SumOp>(kReg, ctx.P, Square{w_bar});
      ctx.read(kReg, 1, &wbar_sq);
    }
  }

  // Objective of H_k(w - tau g); leaves the candidate in cand / v / cand_r.
  double evaluate(double tau) {
    const std::int64_t n = ctx.n, P = ctx.P, k = ctx.k;
    cudaStream_t stream = ctx.stream;
    ctx.lincomb(v.get(), w, -tau, g, nullptr, P);
    launch_topk(v.get(), P, k, cand, stream);

    // Entering and leaving coordinates, in index order (the CPU merge of the sorted supports).
    ctx.mask_of(cand, k, new_mask.get());
    diff_flags_kernel<<<blocks_for(P), kBlock, 0, stream>>>(old_mask, new_mask.get(), P,
                                                            flags.get());
    CHITA_CUDA_LAUNCHED("diff_flags_kernel");
    const thrust::counting_iterator<std::int64_t> index(0);
    CHITA_CUDA_CHECK(cub::DeviceSelect::Flagged(select_temp.as<void>(), select_bytes, index,
                                                flags.get(), diff_idx.get(), n_diff.get(), P,
                                                stream));
    std::int64_t nd = 0;
    read_back(&nd, n_diff.get(), sizeof nd, stream);
    changed = nd != 0;

    if (nd == 0) {
      ctx.lincomb(cand_r, r, -tau, Ad, nullptr, n);
    } else if (nd < k) {
      diff_values_kernel<<<blocks_for(nd), kBlock, 0, stream>>>(diff_idx.get(), nd,
                                                                new_mask.get(), v.get(),
                                                                diff_val.get());
      CHITA_CUDA_LAUNCHED("diff_values_kernel");
      ctx.matvec(diff_idx.get(), nd, diff_val.get(), delta.get());
      ctx.lincomb(cand_r, r, -tau, Ad, delta.get(), n);
    } else {  // most of the support moved: recompute the residual from scratch
      ctx.gather(v.get(), cand, k, diff_val.get());
      ctx.matvec(cand, k, diff_val.get(), cand_r);
      ctx.lincomb(cand_r, cand_r, -1.0, b, nullptr, n);
    }
    double sums[2] = {0.0, 0.0};  // rr, ridge term relative to ||w_bar||^2
    ctx.reduce<SumOp>(kRR, n, Square{cand_r});
    if (ridge != 0.0) {
      ctx.reduce<SumOp>(kReg, k, CandidateRidge{v.get(), w_bar, cand});
      ctx.read(kRR, 2, sums);
    } else {
      ctx.read(kRR, 1, sums);
    }
    const double reg = ridge != 0.0 ? wbar_sq + sums[1] : 0.0;
    return 0.5 * sums[0] + 0.5 * ridge * reg;
  }

  // The candidate just evaluated becomes the best: swap buffers, keep its values.
  void keep() {
    std::swap(cand, best_cand);
    std::swap(cand_r, best_r);
    ctx.gather(v.get(), best_cand, ctx.k, best_x.get());
  }
};

}  // namespace

StepResult chita_step(const DeviceMatrix& A, const double* b, const double* w_bar, double ridge,
                      const double* g, double* w, double* r, std::int64_t* support,
                      std::int64_t k, double f, const std::int64_t* cols, std::int64_t p_local,
                      cudaStream_t stream) {
  const std::int64_t P = cols != nullptr ? p_local : A.p, n = A.n;
  StepContext ctx(A, cols, P, k, stream);

  // Bound tau_chg (steps 2) and the exact step on the support (step 3), one read-back.
  Buffer<unsigned char> old_mask(std::size_t(P), stream);
  ctx.mask_of(support, k, old_mask.get());
  Buffer<double> d(std::size_t(k), stream), Ad(std::size_t(n), stream);
  ctx.gather(g, support, k, d.get());
  ctx.matvec(support, k, d.get(), Ad.get());
  ctx.reduce<SumOp>(kDD, k, Square{d.get()});
  ctx.reduce<MaxOp>(kDMax, k, Abs{d.get()});
  ctx.reduce<SumOp>(kADAD, n, Square{Ad.get()});
  double tau_chg = std::numeric_limits<double>::infinity();
  if (k < P) {  // no outsider can enter when k >= P: tau_chg stays +inf, m stays 0
    ctx.reduce<MaxOp>(kMaxOff, P, AbsOffSupport{g, old_mask.get()});
    ctx.reduce<MinOp>(kTauChg, k, OvertakeStep{g, w, support, ctx.slot(kMaxOff)});
  }
  double s[kSlots];
  ctx.read(kMaxOff, kADAD - kMaxOff + 1, s);
  const double m = k < P ? std::max(s[kMaxOff], 0.0) : 0.0;
  if (k < P) tau_chg = s[kTauChg];
  const double dd = s[kDD], dmax = s[kDMax], adad = s[kADAD];
  const double curv = adad + ridge * dd;
  // At an exact refit the gradient on S is rounding noise; a step along it would make every
  // decision below depend on rounding. Treat S as stationary when its gradient is that small.
  const bool stationary = dmax <= constants::kStationary * m;  // as the CPU step
  const double tau_star = (!stationary && dd > 0.0 && curv > 0.0) ? dd / curv : 0.0;

  if (tau_star > 0.0 && tau_star < tau_chg) {  // step 4: the support is kept
    ctx.scatter(w, support, k, 1.0, -tau_star, d.get());
    ctx.lincomb(r, r, -tau_star, Ad.get(), nullptr, n);
    double sums[2] = {0.0, 0.0};
    ctx.reduce<SumOp>(kRR, n, Square{r});
    if (ridge != 0.0) ctx.reduce<SumOp>(kReg, P, SquaredDiff{w, w_bar});
    ctx.read(kRR, 2, sums);
    const double reg = ridge != 0.0 ? sums[1] : 0.0;
    return {0.5 * sums[0] + 0.5 * ridge * reg, tau_star, 0, false};
  }

  // Step 5: candidates H_k(w - tau g).
  CandidateSearch search(ctx, b, w_bar, ridge, g, w, r, old_mask.get(), Ad.get());
  bool best_changed = false;
  auto keep = [&](double, double) {
    best_changed = search.changed;
    search.keep();
  };
  const LadderResult best = step_ladder(
      tau_chg, tau_star, f, [&](double tau) { return search.evaluate(tau); }, keep);
  if (!best.accepted) return {f, 0.0, best.n_candidates, false};

  ctx.scatter(w, support, k, 0.0, 0.0, nullptr);
  CHITA_CUDA_CHECK(cudaMemcpyAsync(support, search.best_cand, sizeof(std::int64_t) * k,
                                   cudaMemcpyDeviceToDevice, stream));
  ctx.scatter(w, support, k, 0.0, 1.0, search.best_x.get());
  CHITA_CUDA_CHECK(
      cudaMemcpyAsync(r, search.best_r, sizeof(double) * n, cudaMemcpyDeviceToDevice, stream));
  return {best.f, best.tau, best.n_candidates, best_changed};
}

}  // namespace chita::cuda

// The _core extension module: CPU kernels. Every binding takes strict NumPy arrays (exact dtype,
// contiguous, no silent conversion), re-checks shapes as a second line of defence behind the
// Python validation, and releases the GIL while the kernel runs.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <atomic>
#include <mutex>
#include <string>

#if defined(_OPENMP) && !defined(_WIN32)
#include <omp.h>
#include <pthread.h>
#define CHITA_OMP_FORK_HANDLER 1
#endif

#include "chita/constants.hpp"
#include "chita/gradient.hpp"
#include "chita/lapack.hpp"
#include "chita/layer_swap.hpp"
#include "chita/matvec.hpp"
#include "chita/rows.hpp"
#include "chita/swap.hpp"
#include "chita/step.hpp"
#include "chita/topk.hpp"

#ifdef CHITA_HAVE_BUILD_INFO
#include "chita_build_info.hpp"
#endif

namespace py = pybind11;
using chita::MatView;
using std::int64_t;

namespace {

// ---- fork safety ------------------------------------------------------------------------------
// GNU libgomp's thread pool does not survive fork(): in a child, the first parallel region of the
// forking thread waits forever for pool threads that were not copied. As PyTorch does, a child
// handler limits the forking thread to one OpenMP thread, so its parallel regions run inline and
// never touch the stale pool; threads the child creates later start with a fresh pool and the
// default thread count. The handler is registered once, when the module is first imported.
std::atomic<bool> g_forked_child{false};
bool g_fork_handler = false;

#ifdef CHITA_OMP_FORK_HANDLER
extern "C" void chita_omp_after_fork_in_child() {
  g_forked_child.store(true, std::memory_order_relaxed);
  omp_set_num_threads(1);
}
#endif

void register_fork_handler() {
#ifdef CHITA_OMP_FORK_HANDLER
  static std::once_flag once;
  std::call_once(once, [] {
    g_fork_handler = pthread_atfork(nullptr, nullptr, &chita_omp_after_fork_in_child) == 0;
  });
#endif
}

enum class Storage { f32, f64, f16, bf16 };

struct Matrix {
  const void* data;
  int64_t n, p;
  bool col_major;
  Storage dtype;
};

// Whether a's dtype is T in native byte order. An equivalence test, not identity: unpickled and
// copied arrays carry their own dtype instances (a pickled float32 array is float32).
template <class T>
bool has_dtype(const py::array& a) {
  return py::isinstance<py::array_t<T>>(a) && a.dtype().itemsize() == sizeof(T) &&
         a.dtype().kind() == py::dtype::of<T>().kind();
}

Matrix as_matrix(const py::array& a, const char* name) {
  if (a.ndim() != 2)
    throw py::value_error(std::string("`") + name + "` must be 2-D, got " +
                          std::to_string(a.ndim()) + "-D");
  // float16 is NumPy's own; bfloat16 is ml_dtypes' (the NumPy dtype JAX and chita_core's torch
  // views use), recognised by its name and size.
  const std::string dname = py::str(a.dtype());
  Storage dtype;
  if (has_dtype<float>(a))
    dtype = Storage::f32;
  else if (has_dtype<double>(a))
    dtype = Storage::f64;
  else if (a.dtype().kind() == 'f' && a.dtype().itemsize() == 2 && a.dtype().byteorder() != '>')
    dtype = Storage::f16;
  else if (dname == "bfloat16" && a.dtype().itemsize() == 2)
    dtype = Storage::bf16;
  else
    throw py::type_error(std::string("`") + name +
                         "` must be float32, float64, float16 or bfloat16, got " + dname);
  const bool c = a.flags() & py::array::c_style;
  const bool f = a.flags() & py::array::f_style;
  if (!c && !f)
    throw py::value_error(std::string("`") + name + "` must be C- or F-contiguous");
  // A matrix with one row or column is both; treat it as F order when it has one row (columns
  // of length 1 are contiguous) and C order otherwise.
  const bool col_major = f && !(c && a.shape(0) != 1);
  return {a.data(), a.shape(0), a.shape(1), col_major, dtype};
}

template <class T>
MatView<T> view(const Matrix& m) {
  return {static_cast<const T*>(m.data), m.n, m.p, m.col_major};
}

// Checks dtype, shape and contiguity of a 1-D argument; returns its data pointer.
template <class T>
const void* vec_data(const py::array& a, const char* name, int64_t len) {
  if (!has_dtype<T>(a))
    throw py::type_error(std::string("`") + name + "` must have dtype " +
                         std::string(py::str(py::dtype::of<T>())) + ", got " +
                         std::string(py::str(a.dtype())));
  if (a.ndim() != 1 || (len >= 0 && a.shape(0) != len)) {
    std::string shape = "(";
    for (py::ssize_t d = 0; d < a.ndim(); ++d)
      shape += std::to_string(a.shape(d)) + (a.ndim() == 1 ? "," : d + 1 < a.ndim() ? ", " : "");
    throw py::value_error(std::string("`") + name + "` must be 1-D of length " +
                          std::to_string(len) + ", got shape " + shape + ")");
  }
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string("`") + name + "` must be contiguous");
  return a.data();
}

// An input vector: never written, so read-only arrays (np.load(mmap_mode="r"),
// flags.writeable = False) are accepted.
template <class T>
const T* in_vec(const py::array& a, const char* name, int64_t len) {
  return static_cast<const T*>(vec_data<T>(a, name, len));
}

// An output (or in/out) vector: written in place, so it must be writable.
template <class T>
T* out_vec(py::array& a, const char* name, int64_t len) {
  vec_data<T>(a, name, len);
  if (!a.writeable())
    throw py::value_error(std::string("`") + name +
                          "` is written in place and must be writable, got a read-only array");
  return static_cast<T*>(a.mutable_data());
}

// Index arrays must be strictly increasing and inside [0, p): the kernels index A with them.
void check_indices(const int64_t* idx, int64_t m, int64_t p, const char* name) {
  for (int64_t s = 0; s < m; ++s) {
    if (idx[s] < 0 || idx[s] >= p)
      throw py::value_error(std::string("`") + name + "` has index " + std::to_string(idx[s]) +
                            " outside [0, " + std::to_string(p) + ")");
    if (s > 0 && idx[s] <= idx[s - 1])
      throw py::value_error(std::string("`") + name + "` must be sorted and distinct");
  }
}

// Runs f(MatView<T>) for A's storage type T without the GIL.
template <class F>
auto dispatch(const Matrix& m, F&& f) {
  py::gil_scoped_release release;
  switch (m.dtype) {
    case Storage::f32: return f(view<float>(m));
    case Storage::f16: return f(view<chita::f16>(m));
    case Storage::bf16: return f(view<chita::bf16>(m));
    default: return f(view<double>(m));
  }
}

}  // namespace

PYBIND11_MODULE(_core, mod) {
  mod.doc() = "chita_core CPU kernels (C++17, OpenMP). See chita_core/_core.pyi for the contract.";

  mod.def(
      "support_matvec",
      [](py::array A, py::array idx, py::array x, py::array out) {
        const Matrix M = as_matrix(A, "A");
        const int64_t m = idx.ndim() == 1 ? idx.shape(0) : -1;
        const int64_t* ip = in_vec<int64_t>(idx, "idx", m);
        check_indices(ip, m, M.p, "idx");
        const double* xp = in_vec<double>(x, "x", m);
        double* op = out_vec<double>(out, "out", M.n);
        dispatch(M, [&](auto Av) { chita::support_matvec(Av, ip, m, xp, op); });
      },
      py::arg("A"), py::arg("idx"), py::arg("x"), py::arg("out"));

  mod.def(
      "swap_scores",
      [](py::array G, py::array q, double s0, py::array wv, py::array jn, py::array io,
         double lam, py::array out) {
        if (G.ndim() != 2 || G.shape(0) != G.shape(1) || !has_dtype<double>(G) ||
            !(G.flags() & py::array::c_style))
          throw py::value_error("`G` must be a square C-contiguous float64 matrix");
        const int64_t c = G.shape(0);
        const double* qp = in_vec<double>(q, "q", c);
        const double* wp = in_vec<double>(wv, "wv", c);
        const int64_t nj = jn.ndim() == 1 ? jn.shape(0) : -1;
        const int64_t ni = io.ndim() == 1 ? io.shape(0) : -1;
        const int64_t* jp = in_vec<int64_t>(jn, "jn", nj);
        const int64_t* ip = in_vec<int64_t>(io, "io", ni);
        for (int64_t t = 0; t < nj; ++t)
          if (jp[t] < 0 || jp[t] >= c) throw py::value_error("`jn` has an index outside [0, c)");
        for (int64_t t = 0; t < ni; ++t)
          if (ip[t] < 0 || ip[t] >= c) throw py::value_error("`io` has an index outside [0, c)");
        double* op = out_vec<double>(out, "out", ni * nj);
        const double* Gp = static_cast<const double*>(G.data());
        py::gil_scoped_release release;
        chita::swap_scores(Gp, c, qp, s0, wp, jp, nj, ip, ni, lam, op);
      },
      py::arg("G"), py::arg("q"), py::arg("s0"), py::arg("wv"), py::arg("jn"), py::arg("io"),
      py::arg("lam"), py::arg("out"));

  mod.def(
      "pool_eliminate",
      [](py::array G, py::array x, int64_t count, py::array order) {
        // G [c, c] or a stack [batch, c, c]; x [c] / [batch, c]; order [count] / [batch, count]
        const bool stacked = G.ndim() == 3;
        if ((G.ndim() != 2 && !stacked) || G.shape(G.ndim() - 1) != G.shape(G.ndim() - 2) ||
            !has_dtype<double>(G) || !(G.flags() & py::array::c_style) || !G.writeable())
          throw py::value_error(
              "`G` must be a square (or a stack of square) writeable C-contiguous float64 "
              "matrix");
        const int64_t c = G.shape(G.ndim() - 1);
        const int64_t batch = stacked ? G.shape(0) : 1;
        if (x.ndim() != G.ndim() - 1 || (stacked && x.shape(0) != batch) ||
            order.ndim() != G.ndim() - 1 || (stacked && order.shape(0) != batch))
          throw py::value_error("`x` and `order` must have one dimension less than `G`");
        if (count < 0 || count > c) throw py::value_error("`count` must lie in [0, c]");
        if (!has_dtype<double>(x) || !(x.flags() & py::array::c_style) || !x.writeable() ||
            x.shape(x.ndim() - 1) != c)
          throw py::value_error("`x` must be writeable C-contiguous float64 with c entries");
        if (!has_dtype<int64_t>(order) || !(order.flags() & py::array::c_style) ||
            !order.writeable() || order.shape(order.ndim() - 1) != count)
          throw py::value_error("`order` must be writeable C-contiguous int64 with count entries");
        double* Gp = static_cast<double*>(G.mutable_data());
        double* xp = static_cast<double*>(x.mutable_data());
        int64_t* op = static_cast<int64_t*>(order.mutable_data());
        py::gil_scoped_release release;
        chita::pool_eliminate_batch(Gp, xp, batch, c, count, op);
      },
      py::arg("G"), py::arg("x"), py::arg("count"), py::arg("order"));

  mod.def(
      "set_lapack",
      [](py::dict blas, py::dict lapack) {
        // SciPy's scipy.linalg.cython_blas / cython_lapack __pyx_capi__ dicts (capsules).
        auto get = [](py::dict d, const char* name) -> void* {
          if (!d.contains(name)) throw py::value_error(std::string("missing routine ") + name);
          py::object cap = d[name];
          PyObject* o = cap.ptr();
          if (!PyCapsule_CheckExact(o)) throw py::type_error(std::string(name) + " is not a capsule");
          void* f = PyCapsule_GetPointer(o, PyCapsule_GetName(o));
          if (f == nullptr) throw py::error_already_set();
          return f;
        };
        chita::lapack::Routines r;
        r.dgemm = reinterpret_cast<chita::lapack::dgemm_t>(get(blas, "dgemm"));
        r.dgemv = reinterpret_cast<chita::lapack::dgemv_t>(get(blas, "dgemv"));
        r.dger = reinterpret_cast<chita::lapack::dger_t>(get(blas, "dger"));
        r.dpotrf = reinterpret_cast<chita::lapack::dpotrf_t>(get(lapack, "dpotrf"));
        r.dpotri = reinterpret_cast<chita::lapack::dpotri_t>(get(lapack, "dpotri"));
        r.dpotrs = reinterpret_cast<chita::lapack::dpotrs_t>(get(lapack, "dpotrs"));
        chita::lapack::set(r);
      },
      py::arg("blas"), py::arg("lapack"));

  mod.def(
      "row_swaps",
      [](py::array H, py::array B, py::array c0, int64_t m, int64_t max_swaps, double tol,
         int64_t refresh, py::array mask, py::array W, py::array swaps) {
        // Exact swap local search of every row (csrc/cpu/layer_swap.cpp).
        if (H.ndim() != 2 || H.shape(0) != H.shape(1) || !has_dtype<double>(H) ||
            !(H.flags() & py::array::c_style))
          throw py::value_error("`H` must be a square C-contiguous float64 matrix");
        const int64_t d = H.shape(0);
        if (d > (int64_t{1} << 20)) throw py::value_error("`H` is too large");
        if (B.ndim() != 2 || B.shape(1) != d || !has_dtype<double>(B) ||
            !(B.flags() & py::array::c_style))
          throw py::value_error("`B` must be a (rows, d) C-contiguous float64 array");
        const int64_t rows = B.shape(0);
        const double* c0p = in_vec<double>(c0, "c0", rows);
        if (mask.ndim() != 2 || mask.shape(0) != rows || mask.shape(1) != d ||
            mask.itemsize() != 1 || !(mask.flags() & py::array::c_style) || !mask.writeable())
          throw py::value_error("`mask` must be a writeable C-contiguous bool array like `B`");
        if (W.ndim() != 2 || W.shape(0) != rows || W.shape(1) != d || !has_dtype<double>(W) ||
            !(W.flags() & py::array::c_style) || !W.writeable())
          throw py::value_error("`W` must be a writeable C-contiguous float64 array like `B`");
        int64_t* sp = out_vec<int64_t>(swaps, "swaps", rows);
        if (m < 0 || (m > 0 && d % m != 0))
          throw py::value_error("`m` must be 0 or divide the row length");
        if (max_swaps < 0 || refresh < 0 || !(tol >= 0.0))
          throw py::value_error("`max_swaps`, `refresh` and `tol` must be >= 0");
        if (!chita::lapack::routines().complete())
          throw py::value_error("call set_lapack first");
        const double* Hp = static_cast<const double*>(H.data());
        const double* Bp = static_cast<const double*>(B.data());
        auto* mp = static_cast<std::uint8_t*>(mask.mutable_data());
        double* Wp = static_cast<double*>(W.mutable_data());
        py::gil_scoped_release release;
        chita::row_swap_search(Hp, d, Bp, c0p, rows, m, max_swaps, tol, refresh, mp, Wp, sp);
      },
      py::arg("H"), py::arg("B"), py::arg("c0"), py::arg("m"), py::arg("max_swaps"),
      py::arg("tol"), py::arg("refresh"), py::arg("mask"), py::arg("W"), py::arg("swaps"));

  mod.def(
      "row_top_mask",
      [](py::array s, int64_t k, int64_t n, int64_t m, py::array mask) {
        // k >= 0: each row's k largest; else (n, m): each group of m keeps its n largest
        if (s.ndim() != 2 || !has_dtype<double>(s) || !(s.flags() & py::array::c_style))
          throw py::value_error("`s` must be a 2-D C-contiguous float64 array");
        const int64_t rows = s.shape(0), d = s.shape(1);
        if (mask.ndim() != 2 || mask.shape(0) != rows || mask.shape(1) != d ||
            mask.itemsize() != 1 || !(mask.flags() & py::array::c_style) || !mask.writeable())
          throw py::value_error("`mask` must be a writeable C-contiguous bool array like `s`");
        if (k < 0 && (m <= 0 || n < 0 || n > m || d % m != 0))
          throw py::value_error("N:M needs 0 <= n <= m and m dividing the row length");
        if (k > d) throw py::value_error("`k` must not exceed the row length");
        const double* sp = static_cast<const double*>(s.data());
        auto* mp = static_cast<std::uint8_t*>(mask.mutable_data());
        py::gil_scoped_release release;
        if (k >= 0)
          chita::row_top_mask(sp, rows, d, k, mp);
        else
          chita::group_top_mask(sp, rows, d, n, m, mp);
      },
      py::arg("s"), py::arg("k"), py::arg("n"), py::arg("m"), py::arg("mask"));

  mod.def(
      "support_rmatvec",
      [](py::array A, py::array idx, py::array y, py::array out) {
        const Matrix M = as_matrix(A, "A");
        const int64_t m = idx.ndim() == 1 ? idx.shape(0) : -1;
        const int64_t* ip = in_vec<int64_t>(idx, "idx", m);
        check_indices(ip, m, M.p, "idx");
        const double* yp = in_vec<double>(y, "y", M.n);
        double* op = out_vec<double>(out, "out", m);
        dispatch(M, [&](auto Av) { chita::support_rmatvec(Av, ip, m, yp, op); });
      },
      py::arg("A"), py::arg("idx"), py::arg("y"), py::arg("out"));

  mod.def(
      "gradient",
      [](py::array A, py::array r, py::array w, py::array w_bar, double ridge, py::array out) {
        const Matrix M = as_matrix(A, "A");
        const double* rp = in_vec<double>(r, "r", M.n);
        const double* wp = in_vec<double>(w, "w", M.p);
        const double* bp = in_vec<double>(w_bar, "w_bar", M.p);
        double* op = out_vec<double>(out, "out", M.p);
        dispatch(M, [&](auto Av) { chita::gradient(Av, rp, wp, bp, ridge, op); });
      },
      py::arg("A"), py::arg("r"), py::arg("w"), py::arg("w_bar"), py::arg("ridge"),
      py::arg("out"));

  mod.def(
      "topk",
      [](py::array v, int64_t k, py::array out) {
        const int64_t p = v.ndim() == 1 ? v.shape(0) : -1;
        const double* vp = in_vec<double>(v, "v", p);
        if (k < 1 || k > p)
          throw py::value_error("`k` must be in [1, " + std::to_string(p) + "], got " +
                                std::to_string(k));
        int64_t* op = out_vec<int64_t>(out, "out", k);
        py::gil_scoped_release release;
        chita::topk(vp, p, k, op);
      },
      py::arg("v"), py::arg("k"), py::arg("out"));

  mod.def(
      "chita_step",
      [](py::array A, py::array b, py::array w_bar, double ridge, py::array g, py::array w,
         py::array r, py::array support, double f, py::object cols) {
        const Matrix M = as_matrix(A, "A");
        const int64_t* cp = nullptr;
        int64_t p = M.p;
        py::array cols_arr;
        if (!cols.is_none()) {
          cols_arr = py::array(cols);
          p = cols_arr.ndim() == 1 ? cols_arr.shape(0) : -1;
          cp = in_vec<int64_t>(cols_arr, "cols", p);
          check_indices(cp, p, M.p, "cols");
        }
        const double* bp = in_vec<double>(b, "b", M.n);
        const double* wbp = in_vec<double>(w_bar, "w_bar", p);
        const double* gp = in_vec<double>(g, "g", p);
        double* wp = out_vec<double>(w, "w", p);
        double* rp = out_vec<double>(r, "r", M.n);
        const int64_t k = support.ndim() == 1 ? support.shape(0) : -1;
        int64_t* sp = out_vec<int64_t>(support, "support", k);
        if (k < 1 || k > p) throw py::value_error("`support` must have length in [1, p]");
        check_indices(sp, k, p, "support");
        const chita::StepResult res = dispatch(M, [&](auto Av) {
          return chita::chita_step(Av, bp, wbp, ridge, gp, wp, rp, sp, k, f, cp, p);
        });
        return py::make_tuple(res.f, res.tau, res.n_candidates, res.support_changed);
      },
      py::arg("A"), py::arg("b"), py::arg("w_bar"), py::arg("ridge"), py::arg("g"), py::arg("w"),
      py::arg("r"), py::arg("support"), py::arg("f"), py::arg("cols") = py::none());

  mod.def(
      "column_sqnorms",
      [](py::array A, py::array out) {
        const Matrix M = as_matrix(A, "A");
        double* op = out_vec<double>(out, "out", M.p);
        dispatch(M, [&](auto Av) { chita::column_sqnorms(Av, op); });
      },
      py::arg("A"), py::arg("out"));

  // The step's shared constants as compiled (chita/constants.hpp, generated from
  // chita_core/backends/constants.py): tests compare them with the Python values.
  py::dict step_constants;
#define CHITA_EXPORT_CONSTANT(name, cxx) step_constants[#name] = chita::constants::cxx;
  CHITA_STEP_CONSTANTS(CHITA_EXPORT_CONSTANT)
#undef CHITA_EXPORT_CONSTANT
  mod.attr("STEP_CONSTANTS") = step_constants;

  mod.def("num_threads", &chita::max_threads,
          "Threads the kernels use on the calling thread (OpenMP max threads).");

  register_fork_handler();
  mod.def(
      "forked_child", [] { return g_forked_child.load(std::memory_order_relaxed); },
      "True in a process forked after this module was imported: there the forking thread runs "
      "the kernels on one OpenMP thread (GNU OpenMP's pool does not survive fork); threads "
      "started in the child use the default thread count.");
  mod.attr("fork_handler") = g_fork_handler;

#ifdef _OPENMP
  mod.attr("openmp") = true;
#else
  mod.attr("openmp") = false;
#endif
#ifdef CHITA_HAVE_BUILD_INFO
  mod.attr("build_info") = CHITA_BUILD_INFO;
#else
  mod.attr("build_info") = "";
#endif
}

// The _cuda extension module: GPU kernels behind device pointers. Every array is a raw device
// pointer passed as a Python int (0 = null) with its sizes; the matrix A is any object with
// `ptr`, `n`, `p`, `col_major` and `dtype` attributes; `stream` is a cudaStream_t as an int
// (0 = the legacy default stream) on which all the work is queued. Python validates everything
// first (chita_core/_cuda_backend); the checks here are a second line of defence. The GIL is
// released while the work is queued or runs.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "chita/constants.hpp"
#include "chita/cuda/common.hpp"
#include "chita/cuda/gather.hpp"
#include "chita/cuda/gradient.hpp"
#include "chita/cuda/matvec.hpp"
#include "chita/cuda/rows.hpp"
#include "chita/cuda/step.hpp"
#include "chita/cuda/swap.hpp"
#include "chita/cuda/topk.hpp"

#ifdef CHITA_HAVE_BUILD_INFO
#include "chita_build_info.hpp"
#endif
#ifndef CHITA_BUILD_INFO
#define CHITA_BUILD_INFO ""
#endif
#ifndef CHITA_CUDA_ARCHS
#define CHITA_CUDA_ARCHS "?"
#endif

namespace py = pybind11;
using chita::cuda::DeviceMatrix;
using chita::cuda::Dtype;
using std::int64_t;

namespace {

std::string arg(const char* name) { return std::string("`") + name + "`"; }

// A device pointer from a Python int; null only where the caller allows it.
template <class T>
T* device_ptr(std::uintptr_t value, const char* name, bool nullable = false) {
  if (value == 0 && !nullable)
    throw std::invalid_argument(arg(name) + " is a null device pointer");
  return reinterpret_cast<T*>(value);
}

cudaStream_t as_stream(std::uintptr_t value) { return reinterpret_cast<cudaStream_t>(value); }

void check_nonneg(int64_t v, const char* name) {
  if (v < 0) throw std::invalid_argument(arg(name) + " must be >= 0, got " + std::to_string(v));
}

DeviceMatrix as_matrix(const py::object& A) {
  for (const char* attr : {"ptr", "n", "p", "col_major", "dtype"})
    if (!py::hasattr(A, attr))
      throw py::type_error("`A` must have attributes ptr, n, p, col_major and dtype; `" +
                           std::string(attr) + "` is missing");
  DeviceMatrix M{};
  M.data = device_ptr<const void>(A.attr("ptr").cast<std::uintptr_t>(), "A.ptr");
  M.n = A.attr("n").cast<int64_t>();
  M.p = A.attr("p").cast<int64_t>();
  M.col_major = A.attr("col_major").cast<bool>();
  const std::string dt = py::str(A.attr("dtype"));
  if (dt == "float32")
    M.dtype = Dtype::f32;
  else if (dt == "float64")
    M.dtype = Dtype::f64;
  else if (dt == "float16")
    M.dtype = Dtype::f16;
  else if (dt == "bfloat16")
    M.dtype = Dtype::bf16;
  else
    throw py::type_error("`A.dtype` must be float32, float64, float16 or bfloat16, got " + dt);
  check_nonneg(M.n, "A.n");
  if (M.p < 1) throw std::invalid_argument("`A.p` must be >= 1, got " + std::to_string(M.p));
  if (reinterpret_cast<std::uintptr_t>(M.data) % chita::cuda::dtype_size(M.dtype) != 0)
    throw std::invalid_argument("`A.ptr` is not aligned to its element size");
  return M;
}

// m in [0, p] with idx non-null when m > 0.
const int64_t* index_list(std::uintptr_t idx, int64_t m, int64_t p, const char* name,
                          const char* count_name) {
  if (m < 0 || m > p)
    throw std::invalid_argument(arg(count_name) + " must be in [0, " + std::to_string(p) +
                                "], got " + std::to_string(m));
  return device_ptr<const int64_t>(idx, name, m == 0);
}

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();  // no driver or no device: not an error for the caller
    return 0;
  }
  return count;
}

std::string build_info() {
  const int v = CUDART_VERSION;  // e.g. 13000
  std::string info = CHITA_BUILD_INFO;
  if (!info.empty()) info += " | ";
  return info + "_cuda compiled against CUDA " + std::to_string(v / 1000) + "." +
         std::to_string((v % 1000) / 10) + " for sm_" CHITA_CUDA_ARCHS;
}

}  // namespace

PYBIND11_MODULE(_cuda, mod) {
  mod.doc() =
      "chita_core GPU kernels (CUDA). Device pointers as ints; see chita_core/_cuda.pyi for the "
      "contract.";

  mod.def("device_count", &device_count,
          "Number of CUDA devices; 0 when there is no driver or device (never raises).");

  mod.def(
      "device_name",
      [](int ordinal) {
        cudaDeviceProp prop{};
        CHITA_CUDA_CHECK(cudaGetDeviceProperties(&prop, ordinal));
        return std::string(prop.name);
      },
      py::arg("ordinal"));

  mod.def(
      "support_matvec",
      [](py::object A, std::uintptr_t idx, int64_t m, std::uintptr_t x, std::uintptr_t out,
         std::uintptr_t stream) {
        const DeviceMatrix M = as_matrix(A);
        const int64_t* ip = index_list(idx, m, M.p, "idx", "m");
        const double* xp = device_ptr<const double>(x, "x", m == 0);
        double* op = device_ptr<double>(out, "out", M.n == 0);
        py::gil_scoped_release release;
        chita::cuda::launch_support_matvec(M, ip, m, xp, op, as_stream(stream));
      },
      py::arg("A"), py::arg("idx"), py::arg("m"), py::arg("x"), py::arg("out"),
      py::arg("stream") = 0);

  mod.def(
      "support_rmatvec",
      [](py::object A, std::uintptr_t idx, int64_t m, std::uintptr_t y, std::uintptr_t out,
         std::uintptr_t stream) {
        const DeviceMatrix M = as_matrix(A);
        const int64_t* ip = index_list(idx, m, M.p, "idx", "m");
        const double* yp = device_ptr<const double>(y, "y", M.n == 0 || m == 0);
        double* op = device_ptr<double>(out, "out", m == 0);
        py::gil_scoped_release release;
        chita::cuda::launch_support_rmatvec(M, ip, m, yp, op, as_stream(stream));
      },
      py::arg("A"), py::arg("idx"), py::arg("m"), py::arg("y"), py::arg("out"),
      py::arg("stream") = 0);

  mod.def(
      "gradient",
      [](py::object A, std::uintptr_t r, std::uintptr_t w, std::uintptr_t w_bar, double ridge,
         std::uintptr_t out, std::uintptr_t stream) {
        const DeviceMatrix M = as_matrix(A);
        const double* rp = device_ptr<const double>(r, "r", M.n == 0);
        const double* wp = device_ptr<const double>(w, "w", true);
        const double* bp = device_ptr<const double>(w_bar, "w_bar", wp == nullptr);
        double* op = device_ptr<double>(out, "out");
        py::gil_scoped_release release;
        chita::cuda::launch_gradient(M, rp, wp, bp, ridge, op, as_stream(stream));
      },
      py::arg("A"), py::arg("r"), py::arg("w"), py::arg("w_bar"), py::arg("ridge"),
      py::arg("out"), py::arg("stream") = 0);

  mod.def(
      "column_sqnorms",
      [](py::object A, std::uintptr_t out, std::uintptr_t stream) {
        const DeviceMatrix M = as_matrix(A);
        double* op = device_ptr<double>(out, "out");
        py::gil_scoped_release release;
        chita::cuda::launch_column_sqnorms(M, op, as_stream(stream));
      },
      py::arg("A"), py::arg("out"), py::arg("stream") = 0);

  mod.def(
      "topk",
      [](std::uintptr_t v, int64_t p, int64_t k, std::uintptr_t out, std::uintptr_t stream) {
        if (p < 1) throw std::invalid_argument("`p` must be >= 1, got " + std::to_string(p));
        if (k < 1 || k > p)
          throw std::invalid_argument("`k` must be in [1, " + std::to_string(p) + "], got " +
                                      std::to_string(k));
        const double* vp = device_ptr<const double>(v, "v");
        int64_t* op = device_ptr<int64_t>(out, "out");
        py::gil_scoped_release release;
        chita::cuda::launch_topk(vp, p, k, op, as_stream(stream));
      },
      py::arg("v"), py::arg("p"), py::arg("k"), py::arg("out"), py::arg("stream") = 0);

  mod.def(
      "chita_step",
      [](py::object A, std::uintptr_t b, std::uintptr_t w_bar, double ridge, std::uintptr_t g,
         std::uintptr_t w, std::uintptr_t r, std::uintptr_t support, int64_t k, double f,
         std::uintptr_t cols, int64_t p_local, std::uintptr_t stream) {
        const DeviceMatrix M = as_matrix(A);
        const int64_t* cp = device_ptr<const int64_t>(cols, "cols", true);
        const int64_t P = cp != nullptr ? p_local : M.p;
        if (cp != nullptr && (p_local < 1 || p_local > M.p))
          throw std::invalid_argument("`p_local` must be in [1, " + std::to_string(M.p) +
                                      "], got " + std::to_string(p_local));
        if (k < 1 || k > P)
          throw std::invalid_argument("`k` must be in [1, " + std::to_string(P) + "], got " +
                                      std::to_string(k));
        const double* bp = device_ptr<const double>(b, "b", M.n == 0);
        const double* wbp = device_ptr<const double>(w_bar, "w_bar");
        const double* gp = device_ptr<const double>(g, "g");
        double* wp = device_ptr<double>(w, "w");
        double* rp = device_ptr<double>(r, "r", M.n == 0);
        int64_t* sp = device_ptr<int64_t>(support, "support");
        chita::cuda::StepResult res;
        {
          py::gil_scoped_release release;
          res = chita::cuda::chita_step(M, bp, wbp, ridge, gp, wp, rp, sp, k, f, cp, P,
                                        as_stream(stream));
        }
        return py::make_tuple(res.f, res.tau, res.n_candidates, res.support_changed);
      },
      py::arg("A"), py::arg("b"), py::arg("w_bar"), py::arg("ridge"), py::arg("g"), py::arg("w"),
      py::arg("r"), py::arg("support"), py::arg("k"), py::arg("f"), py::arg("cols"),
      py::arg("p_local"), py::arg("stream") = 0);

  mod.def(
      "gather_columns",
      [](py::object A, std::uintptr_t idx, int64_t m, std::uintptr_t out, std::uintptr_t stream) {
        const DeviceMatrix M = as_matrix(A);
        const int64_t* ip = index_list(idx, m, M.p, "idx", "m");
        double* op = device_ptr<double>(out, "out", m == 0 || M.n == 0);
        py::gil_scoped_release release;
        chita::cuda::gather_columns(M, ip, m, op, as_stream(stream));
      },
      py::arg("A"), py::arg("idx"), py::arg("m"), py::arg("out"), py::arg("stream") = 0);

  mod.def(
      "swap_scores",
      [](std::uintptr_t G, int64_t ldg, std::uintptr_t q, double s0, std::uintptr_t wv,
         std::uintptr_t jn, int64_t n_jn, std::uintptr_t io, int64_t n_io, double lam,
         std::uintptr_t out, std::uintptr_t stream) {
        check_nonneg(ldg, "ldg");
        check_nonneg(n_jn, "n_jn");
        check_nonneg(n_io, "n_io");
        const bool empty = n_jn == 0 || n_io == 0;
        const double* Gp = device_ptr<const double>(G, "G", empty);
        const double* qp = device_ptr<const double>(q, "q", empty);
        const double* wvp = device_ptr<const double>(wv, "wv", empty);
        const int64_t* jp = device_ptr<const int64_t>(jn, "jn", empty);
        const int64_t* iop = device_ptr<const int64_t>(io, "io", empty);
        double* op = device_ptr<double>(out, "out", empty);
        py::gil_scoped_release release;
        chita::cuda::launch_swap_scores(Gp, ldg, qp, s0, wvp, jp, n_jn, iop, n_io, lam, op,
                                        as_stream(stream));
      },
      py::arg("G"), py::arg("ldg"), py::arg("q"), py::arg("s0"), py::arg("wv"), py::arg("jn"),
      py::arg("n_jn"), py::arg("io"), py::arg("n_io"), py::arg("lam"), py::arg("out"),
      py::arg("stream") = 0);

  mod.def(
      "row_top_mask",
      [](std::uintptr_t s, int64_t rows, int64_t d, int64_t k, int64_t n, int64_t m,
         std::uintptr_t mask, std::uintptr_t stream) {
        // k >= 0: each row's k largest; else (n, m): each group of m keeps its n largest
        check_nonneg(rows, "rows");
        check_nonneg(d, "d");
        if (k < 0 && (m <= 0 || n < 0 || n > m || d % m != 0))
          throw std::invalid_argument("N:M needs 0 <= n <= m and m dividing the row length");
        if (k > d) throw std::invalid_argument("`k` must not exceed the row length");
        const bool empty = rows == 0 || d == 0;
        const double* sp = device_ptr<const double>(s, "s", empty);
        auto* mp = device_ptr<std::uint8_t>(mask, "mask", empty);
        py::gil_scoped_release release;
        if (k >= 0)
          chita::cuda::launch_row_top_mask(sp, rows, d, k, mp, as_stream(stream));
        else
          chita::cuda::launch_group_top_mask(sp, rows, d, n, m, mp, as_stream(stream));
      },
      py::arg("s"), py::arg("rows"), py::arg("d"), py::arg("k"), py::arg("n"), py::arg("m"),
      py::arg("mask"), py::arg("stream") = 0);

  // The step's shared constants as compiled (chita/constants.hpp, generated from
  // chita_core/backends/constants.py): tests compare them with the Python values.
  py::dict step_constants;
#define CHITA_EXPORT_CONSTANT(name, cxx) step_constants[#name] = chita::constants::cxx;
  CHITA_STEP_CONSTANTS(CHITA_EXPORT_CONSTANT)
#undef CHITA_EXPORT_CONSTANT
  mod.attr("STEP_CONSTANTS") = step_constants;

  mod.attr("build_info") = build_info();
}

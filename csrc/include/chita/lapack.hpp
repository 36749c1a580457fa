#pragma once
// BLAS / LAPACK for the C++ kernels: the routines of the library SciPy links (its
// scipy.linalg.cython_blas / cython_lapack capsules, registered once from Python by
// chita_core/layer/_swaps.py through _core.set_lapack), so the kernels call the same optimised
// BLAS as the rest of the package without linking one at build time. Fortran calling convention
// (column-major, every argument by pointer, 32-bit integers).

namespace chita::lapack {

using dgemm_t = void (*)(const char*, const char*, const int*, const int*, const int*,
                         const double*, const double*, const int*, const double*, const int*,
                         const double*, double*, const int*);
using dgemv_t = void (*)(const char*, const int*, const int*, const double*, const double*,
                         const int*, const double*, const int*, const double*, double*,
                         const int*);
using dger_t = void (*)(const int*, const int*, const double*, const double*, const int*,
                        const double*, const int*, double*, const int*);
using dpotrf_t = void (*)(const char*, const int*, double*, const int*, int*);
using dpotri_t = void (*)(const char*, const int*, double*, const int*, int*);
using dpotrs_t = void (*)(const char*, const int*, const int*, const double*, const int*,
                          double*, const int*, int*);

struct Routines {
  dgemm_t dgemm = nullptr;
  dgemv_t dgemv = nullptr;
  dger_t dger = nullptr;
  dpotrf_t dpotrf = nullptr;
  dpotri_t dpotri = nullptr;
  dpotrs_t dpotrs = nullptr;
  bool complete() const { return dgemm && dgemv && dger && dpotrf && dpotri && dpotrs; }
};

// The registered routines (all null until set() is called).
const Routines& routines();
void set(const Routines& r);

}  // namespace chita::lapack

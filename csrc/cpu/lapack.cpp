#include "chita/lapack.hpp"

namespace chita::lapack {

namespace {
Routines g_routines;
}

const Routines& routines() { return g_routines; }
void set(const Routines& r) { g_routines = r; }

}  // namespace chita::lapack

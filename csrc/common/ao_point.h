// Constants and per-point AO math shared by host and device code.
//
// Plain C++ sees DIXC_HD as nothing; nvcc compiles the same functions for host and device. The
// CPU kernels (common/basis.cpp) evaluate whole blocks with vectorised loops and use only the
// constants here; the CUDA kernels evaluate one (point, shell) pair per thread with
// eval_shell_point. Both follow PySCF's conventions: cartesian functions in the order
// (lx, ly) descending, components (1, x, y, z, xx, xy, xz, yy, yz, zz), libcint's cart -> sph
// tables. The host emulation of the CUDA kernels (csrc/cuda/host_emulation.cpp) runs
// eval_shell_point on the CPU so that tests compare it with the CPU kernels.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define DIXC_HD __host__ __device__
#else
#define DIXC_HD
#endif

namespace dixc {

constexpr int kMaxL = 6;  // up to i functions
constexpr int64_t kMaxComp = 10;
// A primitive with a * r^2 above this contributes < exp(-60) ~ 1e-26 relative to its coefficient:
// skipped (for a whole block on the CPU, per point on the GPU).
constexpr double kExpCut = 60.0;
// exp(-x) for x > 700 is below 1e-304: returned as 0 to avoid denormal arithmetic.
constexpr double kExpZero = 700.0;

DIXC_HD constexpr int ncart(int l) { return (l + 1) * (l + 2) / 2; }
DIXC_HD constexpr int nsph(int l) { return 2 * l + 1; }
// Number of AO components (value, first, second derivatives) for deriv = 0, 1, 2.
DIXC_HD constexpr int64_t n_ao_components(int64_t deriv) {
  return deriv == 0 ? 1 : (deriv == 1 ? 4 : 10);
}

// Raw view of a packed basis (see common/basis.h for the layout) for per-point evaluation; the
// pointers are device pointers when the view is passed to a CUDA kernel.
struct ShellTable {
  const int64_t* bas = nullptr;   // (nshell, 4): l, nprim, prim_offset, ao_offset
  const double* coord = nullptr;  // (nshell, 3)
  const double* prim = nullptr;   // (nprim, 2): exponent, coefficient
  const double* rcut = nullptr;   // (nshell,)
  const double* c2s = nullptr;    // tables (ncart(l), nsph(l)) row-major at c2s_offset[l]
  int64_t c2s_offset[kMaxL + 1] = {};
  bool cart = false;
};

// Component c (0..ncomp-1, PySCF order) of x^lx y^ly z^lz R(r^2) at one point, given per axis the
// powers p[q] = d^q (q = 0..l) and R0 = R, R1 = sum (-2a) c e^{-a r^2}, R2 = sum 4a^2 c e^{-a r^2}
// (so d/dx R = x R1 and d/dx R1 = x R2). v receives the ncomp components.
DIXC_HD inline void cart_components(int lx, int ly, int lz, const double* px, const double* py,
                                    const double* pz, double x, double y, double z, double R0,
                                    double R1, double R2, int deriv, double* v) {
  const double X0 = px[lx], Y0 = py[ly], Z0 = pz[lz];
  const double M = X0 * Y0 * Z0;
  v[0] = M * R0;
  if (deriv == 0) return;
  // First and second derivative factors of the monomials: q d^(q-1), q (q-1) d^(q-2).
  const double X1 = lx >= 1 ? lx * px[lx - 1] : 0.0;
  const double Y1 = ly >= 1 ? ly * py[ly - 1] : 0.0;
  const double Z1 = lz >= 1 ? lz * pz[lz - 1] : 0.0;
  const double Mx = X1 * Y0 * Z0, My = X0 * Y1 * Z0, Mz = X0 * Y0 * Z1;
  const double MR1 = M * R1;
  v[1] = Mx * R0 + x * MR1;
  v[2] = My * R0 + y * MR1;
  v[3] = Mz * R0 + z * MR1;
  if (deriv == 1) return;
  const double X2 = lx >= 2 ? lx * (lx - 1) * px[lx - 2] : 0.0;
  const double Y2 = ly >= 2 ? ly * (ly - 1) * py[ly - 2] : 0.0;
  const double Z2 = lz >= 2 ? lz * (lz - 1) * pz[lz - 2] : 0.0;
  const double MR2 = M * R2;
  v[4] = X2 * Y0 * Z0 * R0 + (2.0 * x * Mx + M) * R1 + x * x * MR2;
  v[5] = X1 * Y1 * Z0 * R0 + (y * Mx + x * My) * R1 + x * y * MR2;
  v[6] = X1 * Y0 * Z1 * R0 + (z * Mx + x * Mz) * R1 + x * z * MR2;
  v[7] = X0 * Y2 * Z0 * R0 + (2.0 * y * My + M) * R1 + y * y * MR2;
  v[8] = X0 * Y1 * Z1 * R0 + (z * My + y * Mz) * R1 + y * z * MR2;
  v[9] = X0 * Y0 * Z2 * R0 + (2.0 * z * Mz + M) * R1 + z * z * MR2;
}

// Values and derivatives up to `deriv` of the functions of shell s at point (x, y, z) (Bohr).
// Function m, component c lands at out[c * cstride + m * rstride]. Points beyond the shell's
// screening radius rcut (where the shell and its derivatives are below the basis cutoff) get
// exact zeros, as do points with non-finite coordinates.
template <typename T>
DIXC_HD inline void eval_shell_point(const ShellTable& B, int64_t s, double x, double y, double z,
                                     int deriv, T* out, int64_t cstride, int64_t rstride) {
  const int64_t* b = B.bas + 4 * s;
  const int l = static_cast<int>(b[0]);
  const int64_t nprim = b[1];
  const double* pr = B.prim + 2 * b[2];
  const int ncomp = static_cast<int>(n_ao_components(deriv));
  const int nc = ncart(l);
  const int nf = B.cart || l < 2 ? nc : nsph(l);
  const double dx = x - B.coord[3 * s], dy = y - B.coord[3 * s + 1], dz = z - B.coord[3 * s + 2];
  const double r2 = dx * dx + dy * dy + dz * dz;
  const double rc = B.rcut[s];
  if (!(r2 <= rc * rc)) {  // also true for NaN
    for (int c = 0; c < ncomp; ++c)
      for (int m = 0; m < nf; ++m) out[c * cstride + m * rstride] = T(0);
    return;
  }
  double R0 = 0.0, R1 = 0.0, R2 = 0.0;
  for (int64_t p = 0; p < nprim; ++p) {
    const double a = pr[2 * p], ar = a * r2;
    if (ar > kExpCut) continue;
    const double e = pr[2 * p + 1] * exp(-ar);
    R0 += e;
    R1 += -2.0 * a * e;
    R2 += 4.0 * a * a * e;
  }
  double px[kMaxL + 1], py[kMaxL + 1], pz[kMaxL + 1];
  px[0] = py[0] = pz[0] = 1.0;
  for (int q = 1; q <= l; ++q) {
    px[q] = px[q - 1] * dx;
    py[q] = py[q - 1] * dy;
    pz[q] = pz[q - 1] * dz;
  }
  double v[kMaxComp];
  if (B.cart || l < 2) {
    int ic = 0;
    for (int lx = l; lx >= 0; --lx) {
      for (int ly = l - lx; ly >= 0; --ly, ++ic) {
        cart_components(lx, ly, l - lx - ly, px, py, pz, dx, dy, dz, R0, R1, R2, deriv, v);
        for (int c = 0; c < ncomp; ++c) out[c * cstride + ic * rstride] = static_cast<T>(v[c]);
      }
    }
    return;
  }
  // Spherical: function m = sum_i tab[i, m] cart_i, one m at a time (few live registers; the
  // cartesian components are cheap to recompute from the radial sums and powers).
  const int ns = nf;
  const double* tab = B.c2s + B.c2s_offset[l];  // (ncart, nsph)
  for (int m = 0; m < ns; ++m) {
    double acc[kMaxComp];
    for (int c = 0; c < ncomp; ++c) acc[c] = 0.0;
    int ic = 0;
    for (int lx = l; lx >= 0; --lx) {
      for (int ly = l - lx; ly >= 0; --ly, ++ic) {
        const double t = tab[ic * ns + m];
        if (t == 0.0) continue;
        cart_components(lx, ly, l - lx - ly, px, py, pz, dx, dy, dz, R0, R1, R2, deriv, v);
        for (int c = 0; c < ncomp; ++c) acc[c] += t * v[c];
      }
    }
    for (int c = 0; c < ncomp; ++c) out[c * cstride + m * rstride] = static_cast<T>(acc[c]);
  }
}

}  // namespace dixc

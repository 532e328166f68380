// Becke's partition of space at one grid point, shared by host and device code.
//
// The cell fraction of a point r owned by atom A (PySCF's gen_grid conventions):
//   f(r) = P_A(r) / sum_i P_i(r),  P_i = prod_{j != i} s(nu_ij),  s(nu) = (1 - p(nu) + 1e-200) / 2,
//   nu_ij = mu_ij + a_ij (1 - mu_ij^2),  mu_ij = (|r - R_i| - |r - R_j|) / |R_i - R_j|,
// a_ij the (antisymmetric) atomic-size adjustment and p Becke's f(f(f(nu))), f(x) = (3 - x^2) x /
// 2, or Stratmann's polynomial. Since nu_ji = -nu_ij and p is odd (both exactly, in floating
// point), s(nu_ji) = (1 + p(nu_ij) + 1e-200) / 2 exactly: the ordered pairs (i, j) and (j, i) need
// one evaluation of p. The CPU kernel (cpu/becke_cpu.cpp) evaluates each unordered pair once with
// per-point scratch arrays; the CUDA kernel evaluates ordered pairs with no per-thread arrays
// (becke_fraction_point / becke_backward_point below, which host_emulation.cpp runs on the CPU).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "common/ao_point.h"  // DIXC_HD

namespace dixc {

constexpr int kBeckeOriginal = 0;
constexpr int kBeckeStratmann = 1;
constexpr double kStratmannA = 0.64;   // Stratmann, Scuseria, Frisch (1996)
constexpr double kBeckeTiny = 1e-200;  // PySCF's guard against a zero cell product

// p(nu) and dp/dnu of the cell function's switching polynomial, branch-free (vectorisable).
//   original: p = f(f(f(nu))), dp/dnu = (27/8) (1 - nu^2) (1 - x1^2) (1 - x2^2)
//   Stratmann: p = (35 m - 35 m^3 + 21 m^5 - 5 m^7) / 16, m = nu / a, dp/dnu = 35/(16 a) (1 -
//   m^2)^3,
//              p = sign(nu), dp/dnu = 0 for |nu| >= a: exactly what m clamped to [-1, 1] gives
//              (35 - 35 + 21 - 5 = 16, 1 - m^2 = 0).
template <int Scheme>
DIXC_HD inline void becke_switch(double nu, double& p, double& dp) {
  if (Scheme == kBeckeStratmann) {
    const double m = std::min(std::max(nu / kStratmannA, -1.0), 1.0), m2 = m * m, c = 1.0 - m2;
    p = m * (35.0 + m2 * (-35.0 + m2 * (21.0 - 5.0 * m2))) / 16.0;
    dp = (35.0 / 16.0 / kStratmannA) * c * c * c;
  } else {
    const double x1 = (3.0 - nu * nu) * nu * 0.5;
    const double x2 = (3.0 - x1 * x1) * x1 * 0.5;
    p = (3.0 - x2 * x2) * x2 * 0.5;
    dp = (27.0 / 8.0) * (1.0 - nu * nu) * (1.0 - x1 * x1) * (1.0 - x2 * x2);
  }
}

DIXC_HD inline void becke_switch(double nu, int scheme, double& p, double& dp) {
  if (scheme == kBeckeStratmann)
    becke_switch<kBeckeStratmann>(nu, p, dp);
  else
    becke_switch<kBeckeOriginal>(nu, p, dp);
}

// Raw view of the atoms for the per-point functions; device pointers in a CUDA kernel.
struct BeckeAtoms {
  const double* R = nullptr;       // (natm, 3) nuclear positions
  const double* inv_r = nullptr;   // (natm, natm) 1 / |R_i - R_j|, 0 on the diagonal
  const double* adjust = nullptr;  // (natm, natm) a_ij = -a_ji (zeros: no adjustment)
  int64_t natm = 0;
  int scheme = kBeckeOriginal;
};

// |r - R_k| and the unit vector (r - R_k) / |r - R_k| (zero at the nucleus itself).
DIXC_HD inline double becke_dist(const double* r, const double* Rk, double* u) {
  const double x = r[0] - Rk[0], y = r[1] - Rk[1], z = r[2] - Rk[2];
  const double d = sqrt(x * x + y * y + z * z);
  const double inv = 1.0 / std::max(d, 1e-300);  // at the nucleus x = y = z = 0: u = 0
  u[0] = x * inv;
  u[1] = y * inv;
  u[2] = z * inv;
  return d;
}

// mu_ij and nu_ij of the ordered pair (i, j) from the two distances.
DIXC_HD inline double becke_nu(const BeckeAtoms& a, int64_t i, int64_t j, double di, double dj,
                               double& mu) {
  const int64_t ij = i * a.natm + j;
  mu = (di - dj) * a.inv_r[ij];
  return mu + a.adjust[ij] * (1.0 - mu * mu);
}

// P_i(r) over the ordered pairs (i, j), j = 0 .. natm-1.
DIXC_HD inline double becke_cell_point(const BeckeAtoms& a, const double* r, int64_t i) {
  double u[3];
  const double di = becke_dist(r, a.R + 3 * i, u);
  double P = 1.0;
  for (int64_t j = 0; j < a.natm; ++j) {
    if (j == i) continue;
    double mu, p, dp;
    becke_switch(becke_nu(a, i, j, di, becke_dist(r, a.R + 3 * j, u), mu), a.scheme, p, dp);
    P *= 0.5 * (1.0 - p + kBeckeTiny);
  }
  return P;
}

// f = P_owner / sum_i P_i at r (no scratch arrays: O(natm^2) with distances recomputed).
DIXC_HD inline double becke_fraction_point(const BeckeAtoms& a, const double* r, int64_t owner,
                                           double* z_out = nullptr) {
  double z = 0.0, pa = 0.0;
  for (int64_t i = 0; i < a.natm; ++i) {
    const double P = becke_cell_point(a, r, i);
    z += P;
    if (i == owner) pa = P;
  }
  if (z_out) *z_out = z;
  return pa / z;
}

// Adds g df/dr to gr[3] and g df/dR_k to the atoms through acc.add(k, x, y, z), with
//   df = sum_k f (delta_kA - P_k / Z) sum_{j != k} d ln s(nu_kj),
//   d ln s(nu_kj) = -p'(nu_kj) / (2 s(nu_kj)) (1 - 2 a_kj mu_kj) dmu_kj,
//   dmu_kj = [(u_k - u_j) . dr - (u_k + mu_kj e_kj) . dR_k + (u_j + mu_kj e_kj) . dR_j] / R_kj,
// u_k = (r - R_k) / |r - R_k|, e_kj = (R_k - R_j) / R_kj. Every call makes the same sequence of
// acc.add calls (a warp of CUDA threads reduces them in lockstep); g = 0 adds zeros.
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <typename Acc>
DIXC_HD inline void becke_backward_point(const BeckeAtoms& a, const double* r, int64_t owner,
                                         double g, double* gr, Acc& acc) {
  double z;
  const double f = becke_fraction_point(a, r, owner, &z);
  const double gf = g * f;
  for (int64_t k = 0; k < a.natm; ++k) {
    const double ck = gf * ((k == owner ? 1.0 : 0.0) - becke_cell_point(a, r, k) / z);
    double uk[3], uj[3];
    const double dk = becke_dist(r, a.R + 3 * k, uk);
    double gk[3] = {0.0, 0.0, 0.0};
    for (int64_t j = 0; j < a.natm; ++j) {
      if (j == k) continue;
      const double dj = becke_dist(r, a.R + 3 * j, uj);
      double mu, p, dp;
      const int64_t kj = k * a.natm + j;
      becke_switch(becke_nu(a, k, j, dk, dj, mu), a.scheme, p, dp);
      const double s = 0.5 * (1.0 - p + kBeckeTiny);
      const double coef = ck * (-0.5 * dp / s) * (1.0 - 2.0 * a.adjust[kj] * mu) * a.inv_r[kj];
      double vj[3];
      for (int x = 0; x < 3; ++x) {
        const double e = (a.R[3 * k + x] - a.R[3 * j + x]) * a.inv_r[kj];
        gr[x] += coef * (uk[x] - uj[x]);
        gk[x] -= coef * (uk[x] + mu * e);
        vj[x] = coef * (uj[x] + mu * e);
      }
      acc.add(j, vj[0], vj[1], vj[2]);
    }
    acc.add(k, gk[0], gk[1], gk[2]);
  }
}

}  // namespace dixc

// Packed Gaussian basis and the per-block AO evaluator shared by eval_ao and the fused ops.
//
// A basis is five tensors (see python/dixc/basis.py, which packs them from a PySCF Mole):
//   bas    int64   (nshell, 4)  l, nprim, prim_offset, ao_offset   (one row per contraction)
//   coord  float64 (nshell, 3)  shell centre (Bohr)
//   prim   float64 (nprim, 2)   exponent, coefficient (libcint normalisation, s/p factors folded)
//   rcut   float64 (nshell,)    radius beyond which the shell and its derivatives are < cutoff
//   c2s    float64 (sum_l ncart(l) * nsph(l),)  cart -> real-spherical tables for l = 0..lmax
// AO order equals PySCF's: shells in order, functions m within a shell (p: x, y, z).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "common/ao_point.h"  // kMaxL, kMaxComp, ncart, nsph (shared with the CUDA kernels)

namespace dixc {

struct BasisView {
  int64_t nshell = 0;
  int64_t nao = 0;
  const int64_t* bas = nullptr;
  const double* coord = nullptr;
  const double* prim = nullptr;
  const double* rcut = nullptr;
  const double* c2s = nullptr;
  int64_t c2s_offset[kMaxL + 1] = {};
  bool cart = false;

  int l(int64_t s) const { return static_cast<int>(bas[4 * s]); }
  int64_t nprim(int64_t s) const { return bas[4 * s + 1]; }
  int64_t prim_offset(int64_t s) const { return bas[4 * s + 2]; }
  int64_t ao_offset(int64_t s) const { return bas[4 * s + 3]; }
  int nfunc(int64_t s) const { return cart ? ncart(l(s)) : nsph(l(s)); }
};

// Validates the packed basis (shapes, dtypes, index ranges) and returns a raw view of it.
// The tensors must outlive the view: callers keep the contiguous copies alive.
BasisView make_basis_view(const at::Tensor& bas, const at::Tensor& coord, const at::Tensor& prim,
                          const at::Tensor& c2s, const at::Tensor& rcut, int64_t nao, bool cart,
                          const char* op);

// Shells whose screening sphere touches the bounding box of points[0..np).
void select_shells(const BasisView& B, const double* points, int64_t np,
                   std::vector<int64_t>& shells);

// Shells whose screening sphere touches the box [lo, hi] (the rule select_shells applies).
void select_shells_in_box(const BasisView& B, const double lo[3], const double hi[3],
                          std::vector<int64_t>& shells);

// Scratch space of one thread for eval_shells.
struct AOWorkspace {
  std::vector<double> buf;
};

// Values and derivatives (deriv 0, 1, 2; PySCF component order 1, x, y, z, xx, xy, xz, yy, yz,
// zz) of the AOs of `shells` at points[0..np) (row-major (np, 3), Bohr).
// Function m of shells[k] lands at out[c * cstride + (rows[k] + m) * rstride + j].
template <typename T>
void eval_shells(const BasisView& B, const double* points, int64_t np, int deriv,
                 const int64_t* shells, int64_t nshells, const int64_t* rows, T* out,
                 int64_t cstride, int64_t rstride, AOWorkspace& ws);

}  // namespace dixc

// All dixc op schemas in one place. Kernels register themselves per backend in csrc/cpu/*.cpp and
// csrc/cuda/*.cu; fake (meta) kernels and autograd live in python/dixc/ops/.
//
// Adjoint pair: for any dm and weights wv,
//   <eval_rho(ao, dm, xc), wv> = <dm, contract_vxc(ao, wv, xc)>,
// so the dm-backward of eval_rho is contract_vxc and the wv-backward of contract_vxc is eval_rho:
// derivatives of every order close over these two ops (likewise for the *_fused pair).
#include <torch/library.h>

#include <string>

#ifndef DIXC_VERSION
#define DIXC_VERSION "unknown"
#endif
#ifndef DIXC_TORCH_VERSION
#define DIXC_TORCH_VERSION "unknown"
#endif

namespace dixc {

bool has_cuda() {
#ifdef DIXC_WITH_CUDA
  return true;
#else
  return false;
#endif
}

std::string build_info() {
  std::string s = "dixc " DIXC_VERSION "; built against torch " DIXC_TORCH_VERSION "; kernels: CPU";
  if (has_cuda()) s += ", CUDA";
#ifdef _OPENMP
  s += "; OpenMP " + std::to_string(_OPENMP);
#endif
  return s;
}

}  // namespace dixc

TORCH_LIBRARY(dixc, m) {
  m.def("build_info() -> str", &dixc::build_info);
  m.def("has_cuda() -> bool", &dixc::has_cuda);
  // Basis tensors (packed by dixc.basis.pack_basis): bas int64 (nshell, 4), bas_coord (nshell, 3),
  // prim (nprim, 2), c2s (ntab,), rcut (nshell,).
  m.def(
      "eval_ao(Tensor coords, Tensor bas, Tensor bas_coord, Tensor prim, Tensor c2s, "
      "Tensor rcut, int nao, int deriv, bool cart) -> Tensor");
  m.def("eval_rho(Tensor ao, Tensor dm, str xctype) -> Tensor");
  m.def("contract_vxc(Tensor ao, Tensor wv, str xctype) -> Tensor");
  m.def(
      "eval_rho_fused(Tensor coords, Tensor bas, Tensor bas_coord, Tensor prim, Tensor c2s, "
      "Tensor rcut, Tensor dm, str xctype, int nao, bool cart) -> Tensor");
  m.def(
      "contract_vxc_fused(Tensor coords, Tensor bas, Tensor bas_coord, Tensor prim, Tensor c2s, "
      "Tensor rcut, Tensor wv, str xctype, int nao, bool cart) -> Tensor");
  // Becke's partition of space (grid weights = atom-grid volume x cell fraction): coords
  // (ngrid, 3), owner int64 (ngrid,) the atom each point belongs to, atom_coords (natm, 3),
  // adjust (natm, natm) antisymmetric size adjustment a_ij, scheme 0 (Becke) or 1 (Stratmann).
  m.def(
      "becke_partition(Tensor coords, Tensor owner, Tensor atom_coords, Tensor adjust, "
      "int scheme) -> Tensor");
  m.def(
      "becke_partition_backward(Tensor grad, Tensor coords, Tensor owner, Tensor atom_coords, "
      "Tensor adjust, int scheme) -> (Tensor, Tensor)");
}

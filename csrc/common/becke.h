// Host-side preparation of the Becke-partition ops, shared by the CPU and CUDA entry points:
// validation (each failure names the offending shapes or atoms) and the pair tables.
#pragma once

#include <ATen/ATen.h>

#include "common/becke_point.h"
#include "common/checks.h"

namespace dixc {

// The inputs as contiguous float64 tensors on the device of coords, plus the (natm, natm)
// table 1 / |R_i - R_j| (0 on the diagonal).
struct BeckeInputs {
  at::Tensor coords, owner, R, inv_r, adjust;
  int scheme = kBeckeOriginal;
  int64_t ngrid = 0, natm = 0;

  BeckeAtoms view() const {
    BeckeAtoms a;
    a.R = R.data_ptr<double>();
    a.inv_r = inv_r.data_ptr<double>();
    a.adjust = adjust.data_ptr<double>();
    a.natm = natm;
    a.scheme = scheme;
    return a;
  }
};

inline BeckeInputs becke_inputs(const at::Tensor& coords, const at::Tensor& owner,
                                const at::Tensor& atom_coords, const at::Tensor& adjust,
                                int64_t scheme, const char* op) {
  check_float(coords, op, "coords");
  check_same(coords, atom_coords, op, "coords", "atom_coords");
  check_same(coords, adjust, op, "coords", "adjust");
  TORCH_CHECK(coords.dim() == 2 && coords.size(1) == 3, op, ": coords must be (ngrid, 3), got ",
              coords.sizes());
  TORCH_CHECK(atom_coords.dim() == 2 && atom_coords.size(1) == 3 && atom_coords.size(0) > 0, op,
              ": atom_coords must be (natm, 3) with natm >= 1, got ", atom_coords.sizes());
  const int64_t natm = atom_coords.size(0), ngrid = coords.size(0);
  TORCH_CHECK(adjust.dim() == 2 && adjust.size(0) == natm && adjust.size(1) == natm, op,
              ": adjust must be (natm, natm) = (", natm, ", ", natm, "), got ", adjust.sizes());
  TORCH_CHECK(owner.scalar_type() == at::kLong && owner.dim() == 1 && owner.size(0) == ngrid, op,
              ": owner must be int64 (ngrid,) = (", ngrid, ",), got ", owner.scalar_type(), " ",
              owner.sizes());
  TORCH_CHECK(owner.device() == coords.device(), op, ": owner is on ", owner.device(),
              " but coords is on ", coords.device());
  TORCH_CHECK(scheme == kBeckeOriginal || scheme == kBeckeStratmann, op,
              ": scheme must be 0 (Becke's original) or 1 (Stratmann), got ", scheme);
  if (ngrid > 0) {
    const auto lo = owner.min().item<int64_t>(), hi = owner.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < natm, op, ": owner holds atom indices in [", lo, ", ", hi,
                "] but there are ", natm, " atoms");
  }
  BeckeInputs in;
  in.coords = coords.to(at::kDouble).contiguous();
  in.owner = owner.contiguous();
  in.R = atom_coords.to(at::kDouble).contiguous();
  in.adjust = adjust.to(at::kDouble).contiguous();
  const at::Tensor dist = (in.R.unsqueeze(1) - in.R.unsqueeze(0)).pow(2).sum(-1).sqrt();
  const at::Tensor eye = at::eye(natm, dist.options().dtype(at::kBool));
  const at::Tensor off = dist.masked_fill(eye, 1.0);
  if (natm > 1) {
    const at::Tensor flat = off.argmin();
    const int64_t k = flat.item<int64_t>();
    TORCH_CHECK(off.flatten()[k].item<double>() > 0.0, op, ": nuclei ", k / natm, " and ", k % natm,
                " coincide (Becke's cell functions need distinct nuclear positions)");
  }
  in.inv_r = off.reciprocal().masked_fill(eye, 0.0).contiguous();
  in.scheme = static_cast<int>(scheme);
  in.ngrid = ngrid;
  in.natm = natm;
  return in;
}

// The backward's incoming gradient (ngrid,), checked against the inputs, as contiguous float64.
inline at::Tensor becke_grad(const at::Tensor& grad, const at::Tensor& coords,
                             const BeckeInputs& in, const char* op) {
  check_same(grad, coords, op, "grad", "coords");
  TORCH_CHECK(grad.dim() == 1 && grad.size(0) == in.ngrid, op, ": grad must be (ngrid,) = (",
              in.ngrid, ",), got ", grad.sizes());
  return grad.to(at::kDouble).contiguous();
}

}  // namespace dixc

// eval_ao on the CPU: screened, blocked evaluation of AO values and derivatives on grid points.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/basis.h"
#include "common/checks.h"
#include "cpu/numint_blocks.h"

namespace dixc {
namespace cpu {

// ao[c, i, g] = d^c chi_i(coords[g])
//   coords (ngrid, 3) Bohr; basis tensors as in common/basis.h -> ao (ncomp, nao, ngrid),
//   ncomp = 1, 4, 10 for deriv = 0, 1, 2; dtype of coords.
at::Tensor eval_ao_cpu(const at::Tensor& coords, const at::Tensor& bas, const at::Tensor& bas_coord,
                       const at::Tensor& prim, const at::Tensor& c2s, const at::Tensor& rcut,
                       int64_t nao, int64_t deriv, bool cart) {
  check_float(coords, "dixc.eval_ao", "coords");
  TORCH_CHECK(coords.dim() == 2 && coords.size(1) == 3,
              "dixc.eval_ao: coords must be (ngrid, 3), got ", coords.sizes());
  TORCH_CHECK(deriv >= 0 && deriv <= 2, "dixc.eval_ao: deriv must be 0, 1 or 2, got ", deriv);
  const at::Tensor basc = bas.contiguous(), cc = bas_coord.contiguous(), pc = prim.contiguous();
  const at::Tensor c2c = c2s.contiguous(), rc = rcut.contiguous();
  const BasisView B = make_basis_view(basc, cc, pc, c2c, rc, nao, cart, "dixc.eval_ao");
  const at::Tensor xyz = coords.to(at::kDouble).contiguous();
  const int64_t ngrid = coords.size(0), ncomp = n_ao_components(deriv);
  at::Tensor ao = at::zeros({ncomp, nao, ngrid}, coords.options());
  if (ngrid == 0 || nao == 0) return ao;
  const int64_t nblk = (ngrid + kBlock - 1) / kBlock;
  const double* pts = xyz.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(ao.scalar_type(), "dixc_eval_ao", [&] {
    scalar_t* out = ao.data_ptr<scalar_t>();
    at::parallel_for(0, nblk, 1, [&](int64_t b0, int64_t b1) {
      AOWorkspace ws;
      std::vector<int64_t> shells, rows;
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t g0 = blk * kBlock, np = std::min(kBlock, ngrid - g0);
        select_shells(B, pts + 3 * g0, np, shells);
        rows.resize(shells.size());
        for (size_t k = 0; k < shells.size(); ++k) rows[k] = B.ao_offset(shells[k]);
        eval_shells<scalar_t>(B, pts + 3 * g0, np, static_cast<int>(deriv), shells.data(),
                              static_cast<int64_t>(shells.size()), rows.data(), out + g0,
                              nao * ngrid, ngrid, ws);
      }
    });
  });
  return ao;
}

}  // namespace cpu
}  // namespace dixc

TORCH_LIBRARY_IMPL(dixc, CPU, m) { m.impl("eval_ao", &dixc::cpu::eval_ao_cpu); }

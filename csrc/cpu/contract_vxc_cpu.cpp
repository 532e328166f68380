// contract_vxc on the CPU: V_ij from per-point weights, the adjoint of eval_rho in dm.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/basis.h"
#include "common/checks.h"
#include "cpu/numint_blocks.h"

namespace dixc {
namespace cpu {

// V[b, i, j] = sum_g w0 phi_i phi_j + w_x d_x(phi_i phi_j) + w_tau 1/2 grad phi_i . grad phi_j
//   ao (ncomp, nao, ngrid), wv ((B,) nfeat, ngrid) -> V ((B,) nao, nao), symmetric
at::Tensor contract_vxc_cpu(const at::Tensor& ao, const at::Tensor& wv, c10::string_view xctype) {
  const std::string xs(xctype);
  const XCType xc = parse_xctype(xs);
  check_float(ao, "dixc.contract_vxc", "ao");
  check_same(ao, wv, "dixc.contract_vxc", "ao", "wv");
  TORCH_CHECK(ao.dim() == 3, "dixc.contract_vxc: ao must be (ncomp, nao, ngrid), got ", ao.sizes());
  const int64_t need = xc == XCType::LDA ? 1 : 4;
  TORCH_CHECK(ao.size(0) >= need, "dixc.contract_vxc: xctype='", xs, "' needs ", need,
              " AO components (deriv >= ", ao_deriv_for(xc), "), got ao of shape ", ao.sizes());
  const int64_t nao = ao.size(1), ngrid = ao.size(2), nfeat = n_features(xc);
  const at::Tensor w3 = batched_wv(wv, nfeat, ngrid, "dixc.contract_vxc", xs).contiguous();
  const int64_t nset = w3.size(0);
  if (nset == 0 || ngrid == 0 || nao == 0) {
    return unbatch(at::zeros({nset, nao, nao}, ao.options()), wv, 2);
  }
  const at::Tensor aoc = ao.contiguous();
  const int64_t nthread = at::get_num_threads();
  at::Tensor partial = at::zeros({nthread, nset, nao, nao}, ao.options());
  const int64_t nblk = (ngrid + kBlock - 1) / kBlock;
  AT_DISPATCH_FLOATING_TYPES(ao.scalar_type(), "dixc_contract_vxc", [&] {
    const scalar_t* a = aoc.data_ptr<scalar_t>();
    const scalar_t* w = w3.data_ptr<scalar_t>();
    scalar_t* part = partial.data_ptr<scalar_t>();
    at::parallel_for(0, nblk, 1, [&](int64_t b0, int64_t b1) {
      const int64_t tid = at::get_thread_num();
      TORCH_CHECK(tid < nthread, "dixc.contract_vxc: thread id out of range");
      scalar_t* V = part + tid * nset * nao * nao;
      std::vector<scalar_t> scratch;
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t g0 = blk * kBlock;
        const AOBlock<scalar_t> A = dense_block(a, nao, ngrid, g0, xc);
        contract_vxc_block<scalar_t>(A, w + g0, nset, xc, nfeat * ngrid, ngrid, V, scratch);
      }
    });
  });
  return unbatch(symmetrize_partials(partial), wv, 2);
}

// Same contract as contract_vxc with screened AOs evaluated per block from the packed basis.
//   coords (ngrid, 3), wv ((B,) nfeat, ngrid) -> V ((B,) nao, nao)
at::Tensor contract_vxc_fused_cpu(const at::Tensor& coords, const at::Tensor& bas,
                                  const at::Tensor& bas_coord, const at::Tensor& prim,
                                  const at::Tensor& c2s, const at::Tensor& rcut,
                                  const at::Tensor& wv, c10::string_view xctype, int64_t nao,
                                  bool cart) {
  const std::string xs(xctype);
  const XCType xc = parse_xctype(xs);
  check_float(wv, "dixc.contract_vxc_fused", "wv");
  check_float(coords, "dixc.contract_vxc_fused", "coords");
  TORCH_CHECK(coords.dim() == 2 && coords.size(1) == 3,
              "dixc.contract_vxc_fused: coords must be (ngrid, 3), got ", coords.sizes());
  const at::Tensor basc = bas.contiguous(), cc = bas_coord.contiguous(), pc = prim.contiguous();
  const at::Tensor c2c = c2s.contiguous(), rc = rcut.contiguous();
  const BasisView B = make_basis_view(basc, cc, pc, c2c, rc, nao, cart, "dixc.contract_vxc_fused");
  const int64_t ngrid = coords.size(0), nfeat = n_features(xc);
  const at::Tensor w3 = batched_wv(wv, nfeat, ngrid, "dixc.contract_vxc_fused", xs).contiguous();
  const int64_t nset = w3.size(0);
  if (nset == 0 || ngrid == 0 || nao == 0) {
    return unbatch(at::zeros({nset, nao, nao}, wv.options()), wv, 2);
  }
  const at::Tensor xyz = coords.to(at::kDouble).contiguous();
  const int deriv = ao_deriv_for(xc);
  const int64_t nthread = at::get_num_threads();
  at::Tensor partial = at::zeros({nthread, nset, nao, nao}, wv.options());
  const int64_t nblk = (ngrid + kBlock - 1) / kBlock;
  const double* pts = xyz.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(wv.scalar_type(), "dixc_contract_vxc_fused", [&] {
    const scalar_t* w = w3.data_ptr<scalar_t>();
    scalar_t* part = partial.data_ptr<scalar_t>();
    at::parallel_for(0, nblk, 1, [&](int64_t b0, int64_t b1) {
      const int64_t tid = at::get_thread_num();
      TORCH_CHECK(tid < nthread, "dixc.contract_vxc_fused: thread id out of range");
      scalar_t* V = part + tid * nset * nao * nao;
      ScreenedBlock<scalar_t> sb;
      std::vector<scalar_t> vsub, scratch;
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t g0 = blk * kBlock, np = std::min(kBlock, ngrid - g0);
        const AOBlock<scalar_t> A = sb.eval(B, pts + 3 * g0, np, deriv);
        const int64_t n = A.n;
        if (n == 0) continue;
        const std::vector<int64_t>& idx = sb.idx;
        vsub.assign(static_cast<size_t>(nset * n * n), scalar_t(0));
        contract_vxc_block<scalar_t>(A, w + g0, nset, xc, nfeat * ngrid, ngrid, vsub.data(),
                                     scratch);
        for (int64_t b = 0; b < nset; ++b) {
          const scalar_t* vs_b = vsub.data() + b * n * n;
          scalar_t* vb = V + b * nao * nao;
          for (int64_t i = 0; i < n; ++i) {
            scalar_t* row = vb + idx[i] * nao;
            for (int64_t k = 0; k < n; ++k) row[idx[k]] += vs_b[i * n + k];
          }
        }
      }
    });
  });
  return unbatch(symmetrize_partials(partial), wv, 2);
}

}  // namespace cpu
}  // namespace dixc

TORCH_LIBRARY_IMPL(dixc, CPU, m) {
  m.impl("contract_vxc", &dixc::cpu::contract_vxc_cpu);
  m.impl("contract_vxc_fused", &dixc::cpu::contract_vxc_fused_cpu);
}

// eval_rho on the CPU: density features from (batched) density matrices, from a materialised AO
// array or fused with screened block-wise AO evaluation.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/basis.h"
#include "common/checks.h"
#include "cpu/numint_blocks.h"

namespace dixc {
namespace cpu {

namespace {

// (B, nao, nao) -> contiguous symmetric part 1/2 (D + D^T): eval_rho depends on nothing else.
at::Tensor symmetric_part(const at::Tensor& dm3) {
  return (0.5 * (dm3 + dm3.transpose(1, 2))).contiguous();
}

}  // namespace

// rho[b, f, g]: f = rho, d_x rho, d_y rho, d_z rho, tau (PySCF layout; tau = 1/2 sum |grad phi|^2)
//   rho[b, 0, g] = sum_ij dm[b, i, j] ao[0, i, g] ao[0, j, g]
//   ao (ncomp, nao, ngrid), dm ((B,) nao, nao) -> ((B,) nfeat, ngrid), nfeat = 1, 4, 5
at::Tensor eval_rho_cpu(const at::Tensor& ao, const at::Tensor& dm, c10::string_view xctype) {
  const XCType xc = parse_xctype(std::string(xctype));
  check_float(ao, "dixc.eval_rho", "ao");
  check_same(ao, dm, "dixc.eval_rho", "ao", "dm");
  TORCH_CHECK(ao.dim() == 3, "dixc.eval_rho: ao must be (ncomp, nao, ngrid), got ", ao.sizes());
  const int64_t need = xc == XCType::LDA ? 1 : 4;
  TORCH_CHECK(ao.size(0) >= need, "dixc.eval_rho: xctype='", std::string(xctype), "' needs ", need,
              " AO components (deriv >= ", ao_deriv_for(xc), "), got ao of shape ", ao.sizes());
  const int64_t nao = ao.size(1), ngrid = ao.size(2), nfeat = n_features(xc);
  const at::Tensor dm3 = batched_dm(dm, nao, "dixc.eval_rho");
  const int64_t nset = dm3.size(0);
  at::Tensor out = at::zeros({nset, nfeat, ngrid}, ao.options());
  if (nset == 0 || ngrid == 0 || nao == 0) return unbatch(out, dm, 2);
  const at::Tensor aoc = ao.contiguous();
  const at::Tensor ds = symmetric_part(dm3);
  const int64_t nblk = (ngrid + kBlock - 1) / kBlock;
  AT_DISPATCH_FLOATING_TYPES(ao.scalar_type(), "dixc_eval_rho", [&] {
    const scalar_t* a = aoc.data_ptr<scalar_t>();
    const scalar_t* d = ds.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, nblk, 1, [&](int64_t b0, int64_t b1) {
      std::vector<scalar_t> scratch;
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t g0 = blk * kBlock;
        const AOBlock<scalar_t> A = dense_block(a, nao, ngrid, g0, xc);
        eval_rho_block<scalar_t>(A, d, nset, xc, o + g0, nfeat * ngrid, ngrid, scratch);
      }
    });
  });
  return unbatch(out, dm, 2);
}

// Same contract as eval_rho, with the AOs evaluated per block of kBlock points from the packed
// basis and screened by shell (never materialising the (nao, ngrid) AO array).
//   coords (ngrid, 3), dm ((B,) nao, nao) -> ((B,) nfeat, ngrid)
at::Tensor eval_rho_fused_cpu(const at::Tensor& coords, const at::Tensor& bas,
                              const at::Tensor& bas_coord, const at::Tensor& prim,
                              const at::Tensor& c2s, const at::Tensor& rcut, const at::Tensor& dm,
                              c10::string_view xctype, int64_t nao, bool cart) {
  const XCType xc = parse_xctype(std::string(xctype));
  check_float(dm, "dixc.eval_rho_fused", "dm");
  check_float(coords, "dixc.eval_rho_fused", "coords");
  TORCH_CHECK(coords.dim() == 2 && coords.size(1) == 3,
              "dixc.eval_rho_fused: coords must be (ngrid, 3), got ", coords.sizes());
  const at::Tensor basc = bas.contiguous(), cc = bas_coord.contiguous(), pc = prim.contiguous();
  const at::Tensor c2c = c2s.contiguous(), rc = rcut.contiguous();
  const BasisView B = make_basis_view(basc, cc, pc, c2c, rc, nao, cart, "dixc.eval_rho_fused");
  const at::Tensor dm3 = batched_dm(dm, nao, "dixc.eval_rho_fused");
  const int64_t nset = dm3.size(0), ngrid = coords.size(0), nfeat = n_features(xc);
  at::Tensor out = at::zeros({nset, nfeat, ngrid}, dm.options());
  if (nset == 0 || ngrid == 0 || nao == 0) return unbatch(out, dm, 2);
  const at::Tensor xyz = coords.to(at::kDouble).contiguous();
  const at::Tensor ds = symmetric_part(dm3);
  const int deriv = ao_deriv_for(xc);
  const int64_t nblk = (ngrid + kBlock - 1) / kBlock;
  const double* pts = xyz.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(dm.scalar_type(), "dixc_eval_rho_fused", [&] {
    const scalar_t* d = ds.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, nblk, 1, [&](int64_t b0, int64_t b1) {
      ScreenedBlock<scalar_t> sb;
      std::vector<scalar_t> dsub, scratch;
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t g0 = blk * kBlock, np = std::min(kBlock, ngrid - g0);
        const AOBlock<scalar_t> A = sb.eval(B, pts + 3 * g0, np, deriv);
        const int64_t n = A.n;
        if (n == 0) continue;
        const std::vector<int64_t>& idx = sb.idx;
        dsub.resize(static_cast<size_t>(nset * n * n));
        for (int64_t b = 0; b < nset; ++b) {
          const scalar_t* db = d + b * nao * nao;
          scalar_t* ds_b = dsub.data() + b * n * n;
          for (int64_t i = 0; i < n; ++i) {
            const scalar_t* row = db + idx[i] * nao;
            for (int64_t k = 0; k < n; ++k) ds_b[i * n + k] = row[idx[k]];
          }
        }
        eval_rho_block<scalar_t>(A, dsub.data(), nset, xc, o + g0, nfeat * ngrid, ngrid, scratch);
      }
    });
  });
  return unbatch(out, dm, 2);
}

}  // namespace cpu
}  // namespace dixc

TORCH_LIBRARY_IMPL(dixc, CPU, m) {
  m.impl("eval_rho", &dixc::cpu::eval_rho_cpu);
  m.impl("eval_rho_fused", &dixc::cpu::eval_rho_fused_cpu);
}

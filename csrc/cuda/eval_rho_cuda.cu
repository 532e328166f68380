// eval_rho on CUDA: density features from (batched) density matrices, from a materialised AO
// array or fused with screened block-wise AO evaluation (see numint_driver.h for the blocking).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <string>

#include "cuda/numint_cuda.cuh"
#include "cuda/numint_driver.h"

namespace dixc {
namespace gpu {

// rho[b, f, g]: f = rho, d_x rho, d_y rho, d_z rho, tau (PySCF layout; tau = 1/2 sum |grad phi|^2)
//   rho[b, 0, g] = sum_ij dm[b, i, j] ao[0, i, g] ao[0, j, g]
//   ao (ncomp, nao, ngrid), dm ((B,) nao, nao), both on the same GPU -> ((B,) nfeat, ngrid)
at::Tensor eval_rho_cuda(const at::Tensor& ao, const at::Tensor& dm, c10::string_view xctype) {
  TORCH_CHECK(ao.is_cuda(), "dixc.eval_rho: ao must be a CUDA tensor here, got ", ao.device());
  const c10::cuda::CUDAGuard guard(ao.device());
  return eval_rho_impl<CudaLaunch>(ao, dm, std::string(xctype), Tuning());
}

// rho[b, 0, g] = sum_ij dm[b, i, j] chi_i(coords[g]) chi_j(coords[g])  (features as eval_rho)
// Same contract as eval_rho, with the AOs evaluated per block of grid points from the packed basis
// and screened by shell; the B density matrices share each block's AOs (one GEMM per block).
//   coords (ngrid, 3), dm ((B,) nao, nao) on the same GPU; basis tensors on the CPU or that GPU
//   -> ((B,) nfeat, ngrid) in the dtype of dm
at::Tensor eval_rho_fused_cuda(const at::Tensor& coords, const at::Tensor& bas,
                               const at::Tensor& bas_coord, const at::Tensor& prim,
                               const at::Tensor& c2s, const at::Tensor& rcut, const at::Tensor& dm,
                               c10::string_view xctype, int64_t nao, bool cart) {
  TORCH_CHECK(dm.is_cuda(), "dixc.eval_rho_fused: dm must be a CUDA tensor here, got ",
              dm.device());
  const c10::cuda::CUDAGuard guard(dm.device());
  return eval_rho_fused_impl<CudaLaunch>(coords, bas, bas_coord, prim, c2s, rcut, dm,
                                         std::string(xctype), nao, cart, Tuning());
}

}  // namespace gpu
}  // namespace dixc

TORCH_LIBRARY_IMPL(dixc, CUDA, m) {
  m.impl("eval_rho", &dixc::gpu::eval_rho_cuda);
  m.impl("eval_rho_fused", &dixc::gpu::eval_rho_fused_cuda);
}

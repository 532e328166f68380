// contract_vxc on CUDA: V_ij from per-point weights, the adjoint of eval_rho in dm, from a
// materialised AO array or fused with screened block-wise AO evaluation (see numint_driver.h).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <string>

#include "cuda/numint_cuda.cuh"
#include "cuda/numint_driver.h"

namespace dixc {
namespace gpu {

// V[b, i, j] = sum_g w0 phi_i phi_j + w_x d_x(phi_i phi_j) + w_tau 1/2 grad phi_i . grad phi_j
//   ao (ncomp, nao, ngrid), wv ((B,) nfeat, ngrid), both on the same GPU -> V ((B,) nao, nao)
at::Tensor contract_vxc_cuda(const at::Tensor& ao, const at::Tensor& wv, c10::string_view xctype) {
  TORCH_CHECK(ao.is_cuda(), "dixc.contract_vxc: ao must be a CUDA tensor here, got ", ao.device());
  const c10::cuda::CUDAGuard guard(ao.device());
  return contract_vxc_impl<CudaLaunch>(ao, wv, std::string(xctype), Tuning());
}

// V[b, i, j] = sum_g wv[b, 0, g] chi_i(coords[g]) chi_j(coords[g]) + ...  (as contract_vxc)
// Same contract as contract_vxc with screened AOs evaluated per block from the packed basis; the
// B weight sets share each block's AOs (one GEMM per block).
//   coords (ngrid, 3), wv ((B,) nfeat, ngrid) on the same GPU; basis tensors on the CPU or that
//   GPU -> V ((B,) nao, nao) in the dtype of wv
at::Tensor contract_vxc_fused_cuda(const at::Tensor& coords, const at::Tensor& bas,
                                   const at::Tensor& bas_coord, const at::Tensor& prim,
                                   const at::Tensor& c2s, const at::Tensor& rcut,
                                   const at::Tensor& wv, c10::string_view xctype, int64_t nao,
                                   bool cart) {
  TORCH_CHECK(wv.is_cuda(), "dixc.contract_vxc_fused: wv must be a CUDA tensor here, got ",
              wv.device());
  const c10::cuda::CUDAGuard guard(wv.device());
  return contract_vxc_fused_impl<CudaLaunch>(coords, bas, bas_coord, prim, c2s, rcut, wv,
                                             std::string(xctype), nao, cart, Tuning());
}

}  // namespace gpu
}  // namespace dixc

TORCH_LIBRARY_IMPL(dixc, CUDA, m) {
  m.impl("contract_vxc", &dixc::gpu::contract_vxc_cuda);
  m.impl("contract_vxc_fused", &dixc::gpu::contract_vxc_fused_cuda);
}

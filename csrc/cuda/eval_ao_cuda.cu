// eval_ao on CUDA: one thread per (grid point, shell), screened per point by the shell's rcut.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/numint_cuda.cuh"
#include "cuda/numint_driver.h"

namespace dixc {
namespace gpu {

// ao[c, i, g] = d^c chi_i(coords[g])
//   coords (ngrid, 3) Bohr, on the GPU; basis tensors as in common/basis.h, on the CPU or the same
//   GPU -> ao (ncomp, nao, ngrid) on the GPU, dtype of coords; ncomp = 1, 4, 10 for deriv 0, 1, 2.
at::Tensor eval_ao_cuda(const at::Tensor& coords, const at::Tensor& bas,
                        const at::Tensor& bas_coord, const at::Tensor& prim, const at::Tensor& c2s,
                        const at::Tensor& rcut, int64_t nao, int64_t deriv, bool cart) {
  TORCH_CHECK(coords.is_cuda(), "dixc.eval_ao: coords must be a CUDA tensor here, got ",
              coords.device());
  const c10::cuda::CUDAGuard guard(coords.device());
  return eval_ao_impl<CudaLaunch>(coords, bas, bas_coord, prim, c2s, rcut, nao, deriv, cart,
                                  coords.device());
}

}  // namespace gpu
}  // namespace dixc

TORCH_LIBRARY_IMPL(dixc, CUDA, m) { m.impl("eval_ao", &dixc::gpu::eval_ao_cuda); }

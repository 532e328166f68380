// Becke's partition of space on CUDA: one thread per grid point over ordered atom pairs
// (common/becke_point.h, no per-thread arrays); the nuclei's gradient is reduced per warp with
// shuffles, per block in shared memory, then added to global memory (float64 atomics: the
// summation order, and so the last bits, may vary between runs).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "common/becke.h"

namespace dixc {
namespace gpu {

namespace {

constexpr int kBeckeThreads = 256;
// Atoms whose gradient fits in 48 KiB of shared memory (3 float64 each); beyond, global atomics.
constexpr int64_t kBeckeSharedAtoms = 48 * 1024 / (3 * sizeof(double));

__global__ void __launch_bounds__(kBeckeThreads)
    becke_fraction_kernel(BeckeAtoms a, const double* r, const int64_t* owner, int64_t n,
                          double* f) {
  const int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (g < n) f[g] = becke_fraction_point(a, r + 3 * g, owner[g]);
}

// acc.add(k, x, y, z) from all 32 lanes of a warp at once (the loops of becke_backward_point are
// uniform): a shuffle reduction, then lane 0 adds to the block's (or the global) accumulator.
struct WarpAccumulator {
  double* acc;
  __device__ void add(int64_t k, double x, double y, double z) {
    for (int off = 16; off > 0; off >>= 1) {
      x += __shfl_down_sync(0xffffffffu, x, off);
      y += __shfl_down_sync(0xffffffffu, y, off);
      z += __shfl_down_sync(0xffffffffu, z, off);
    }
    if ((threadIdx.x & 31) == 0) {
      atomicAdd(acc + 3 * k, x);
      atomicAdd(acc + 3 * k + 1, y);
      atomicAdd(acc + 3 * k + 2, z);
    }
  }
};

// Threads past the last point run the same loops on the last point with g = 0 (adding zeros), so
// that every lane of a warp takes part in the shuffles.
__global__ void __launch_bounds__(kBeckeThreads)
    becke_backward_kernel(BeckeAtoms a, const double* r, const int64_t* owner, const double* grad,
                          int64_t n, double* gr, double* gR, bool shared) {
  extern __shared__ double block_acc[];
  const int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t gc = g < n ? g : n - 1;
  if (shared) {
    for (int64_t i = threadIdx.x; i < 3 * a.natm; i += blockDim.x) block_acc[i] = 0.0;
    __syncthreads();
  }
  WarpAccumulator acc{shared ? block_acc : gR};
  double out[3] = {0.0, 0.0, 0.0};
  becke_backward_point(a, r + 3 * gc, owner[gc], g < n ? grad[gc] : 0.0, out, acc);
  if (g < n)
    for (int x = 0; x < 3; ++x) gr[3 * g + x] = out[x];
  if (shared) {
    __syncthreads();
    for (int64_t i = threadIdx.x; i < 3 * a.natm; i += blockDim.x) atomicAdd(gR + i, block_acc[i]);
  }
}

int blocks_for(int64_t n) { return static_cast<int>((n + kBeckeThreads - 1) / kBeckeThreads); }

}  // namespace

// f[g] = P_{owner[g]}(r_g) / sum_i P_i(r_g)  (Becke cell fraction of each point)
//   coords (ngrid, 3), owner (ngrid,) int64, atom_coords (natm, 3), adjust (natm, natm) on one GPU
//   -> (ngrid,)
at::Tensor becke_partition_cuda(const at::Tensor& coords, const at::Tensor& owner,
                                const at::Tensor& atom_coords, const at::Tensor& adjust,
                                int64_t scheme) {
  TORCH_CHECK(coords.is_cuda(), "dixc.becke_partition: coords must be a CUDA tensor here, got ",
              coords.device());
  const c10::cuda::CUDAGuard guard(coords.device());
  const BeckeInputs in =
      becke_inputs(coords, owner, atom_coords, adjust, scheme, "dixc.becke_partition");
  at::Tensor out = at::empty({in.ngrid}, in.coords.options());
  if (in.ngrid > 0) {
    becke_fraction_kernel<<<blocks_for(in.ngrid), kBeckeThreads, 0,
                            c10::cuda::getCurrentCUDAStream().stream()>>>(
        in.view(), in.coords.data_ptr<double>(), in.owner.data_ptr<int64_t>(), in.ngrid,
        out.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out.to(coords.scalar_type());
}

// grad_coords[g] = grad[g] df_g/dr_g, grad_atom_coords[k] = sum_g grad[g] df_g/dR_k
//   grad (ngrid,) -> ((ngrid, 3), (natm, 3))
std::tuple<at::Tensor, at::Tensor> becke_partition_backward_cuda(
    const at::Tensor& grad, const at::Tensor& coords, const at::Tensor& owner,
    const at::Tensor& atom_coords, const at::Tensor& adjust, int64_t scheme) {
  const char* op = "dixc.becke_partition_backward";
  TORCH_CHECK(coords.is_cuda(), op, ": coords must be a CUDA tensor here, got ", coords.device());
  const c10::cuda::CUDAGuard guard(coords.device());
  const BeckeInputs in = becke_inputs(coords, owner, atom_coords, adjust, scheme, op);
  const at::Tensor gc = becke_grad(grad, coords, in, op);
  at::Tensor gr = at::zeros({in.ngrid, 3}, in.coords.options());
  at::Tensor gR = at::zeros({in.natm, 3}, in.coords.options());
  if (in.ngrid > 0) {
    const bool shared = in.natm <= kBeckeSharedAtoms;
    const size_t smem = shared ? 3 * in.natm * sizeof(double) : 0;
    becke_backward_kernel<<<blocks_for(in.ngrid), kBeckeThreads, smem,
                            c10::cuda::getCurrentCUDAStream().stream()>>>(
        in.view(), in.coords.data_ptr<double>(), in.owner.data_ptr<int64_t>(),
        gc.data_ptr<double>(), in.ngrid, gr.data_ptr<double>(), gR.data_ptr<double>(), shared);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const at::ScalarType dt = coords.scalar_type();
  return {gr.to(dt), gR.to(dt)};
}

}  // namespace gpu
}  // namespace dixc

TORCH_LIBRARY_IMPL(dixc, CUDA, m) {
  m.impl("becke_partition", &dixc::gpu::becke_partition_cuda);
  m.impl("becke_partition_backward", &dixc::gpu::becke_partition_backward_cuda);
}

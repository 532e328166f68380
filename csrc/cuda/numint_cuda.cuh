// The __global__ kernels of the CUDA ops and CudaLaunch, the launcher policy of numint_driver.h.
//
// Each kernel maps its thread to indices and calls the per-thread body in numint_kernels.h
// (which host_emulation.cpp runs on the CPU in tests). Launches go to the current stream of the
// current device (set by the entry points' CUDAGuard), as do ATen's cuBLAS calls, so kernels and
// GEMMs are ordered without explicit synchronisation. Zero-sized launches are skipped (a grid
// dimension of 0 is a launch error); __launch_bounds__ keeps every kernel's registers within what
// its block size allows (no "too many resources requested for launch").
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "cuda/numint_kernels.h"

namespace dixc {
namespace gpu {

// AO values: blocks of kAOThreads points (x) for one shell (y, looping over the shells beyond
// gridDim.y). Consecutive threads write consecutive points of the same function: coalesced.
template <typename T>
__global__ void __launch_bounds__(kAOThreads) eval_ao_kernel(AOParams<T> p) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= p.npts) return;
  for (int64_t k = blockIdx.y; k < p.nsh; k += gridDim.y) eval_ao_thread(p, j, k);
}

// Density features: blocks of kRhoLanes points x kRhoSplit AO subsets; the subsets' partial sums
// meet in shared memory and are added in a fixed order (deterministic results).
template <typename T>
__global__ void __launch_bounds__(kRhoThreads) eval_rho_kernel(RhoParams<T> p) {
  __shared__ double part[kRhoSplit][5][kRhoLanes];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kRhoLanes + tx;
  for (int64_t b = blockIdx.y; b < p.nset; b += gridDim.y) {  // uniform in the block
    double acc[5] = {0.0, 0.0, 0.0, 0.0, 0.0};
    if (j < p.np) eval_rho_partial(p, b, j, ty, kRhoSplit, acc);
    for (int f = 0; f < 5; ++f) part[ty][f][tx] = acc[f];
    __syncthreads();
    if (ty == 0 && j < p.np) {
      double tot[5];
      for (int f = 0; f < 5; ++f) {
        tot[f] = part[0][f][tx];
        for (int w = 1; w < kRhoSplit; ++w) tot[f] += part[w][f][tx];
      }
      eval_rho_store(p, b, j, tot);
    }
    __syncthreads();  // part is rewritten by the next b
  }
}

// contract_vxc weights, one thread per (set, AO, point) with a grid-stride loop.
template <typename T>
__global__ void __launch_bounds__(kThreads) contract_vxc_kernel(WeightParams<T> p, int64_t total) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += stride) {
    contract_vxc_weight_thread(p, e);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) gather_dm_kernel(GatherParams<T> p, int64_t total) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += stride) {
    gather_dm_thread(p, e);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) scatter_add_kernel(ScatterParams<T> p, int64_t total) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += stride) {
    scatter_add_thread(p, e);
  }
}

// Blocks of kThreads threads covering `total` elements, at most 2^20 blocks (grid-stride loops
// take the rest).
inline unsigned int grid_1d(int64_t total) {
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(std::min<int64_t>(blocks, int64_t(1) << 20));
}

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

struct CudaLaunch {
  template <typename T>
  static void eval_ao(const AOParams<T>& p) {
    if (p.npts == 0 || p.nsh == 0) return;
    const dim3 grid(static_cast<unsigned int>((p.npts + kAOThreads - 1) / kAOThreads),
                    static_cast<unsigned int>(std::min<int64_t>(p.nsh, kMaxGridY)));
    eval_ao_kernel<T><<<grid, kAOThreads, 0, current_stream()>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  template <typename T>
  static void eval_rho(const RhoParams<T>& p) {
    if (p.np == 0 || p.nset == 0) return;
    const dim3 grid(static_cast<unsigned int>((p.np + kRhoLanes - 1) / kRhoLanes),
                    static_cast<unsigned int>(std::min<int64_t>(p.nset, kMaxGridY)));
    const dim3 block(kRhoLanes, kRhoSplit);
    eval_rho_kernel<T><<<grid, block, 0, current_stream()>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  template <typename T>
  static void contract_vxc_weights(const WeightParams<T>& p, int64_t total) {
    if (total == 0) return;
    contract_vxc_kernel<T><<<grid_1d(total), kThreads, 0, current_stream()>>>(p, total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  template <typename T>
  static void gather_dm(const GatherParams<T>& p, int64_t total) {
    if (total == 0) return;
    gather_dm_kernel<T><<<grid_1d(total), kThreads, 0, current_stream()>>>(p, total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  template <typename T>
  static void scatter_add(const ScatterParams<T>& p, int64_t total) {
    if (total == 0) return;
    scatter_add_kernel<T><<<grid_1d(total), kThreads, 0, current_stream()>>>(p, total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace gpu
}  // namespace dixc

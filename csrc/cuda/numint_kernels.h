// Per-thread bodies of dixc's CUDA kernels, as DIXC_HD functions of explicit thread indices.
//
// The __global__ kernels in numint_cuda.cuh only map (blockIdx, threadIdx) to these indices and
// call these functions; host_emulation.cpp calls the very same functions in loops on the CPU, so
// that the arithmetic and indexing of every kernel are tested on machines without a GPU.
// Pointers are device pointers on the GPU. No function here synchronises or uses shared memory.
#pragma once

#include <cstdint>

#include "common/ao_point.h"

namespace dixc {
namespace gpu {

// xctype as an int in kernel parameters (values of dixc::XCType).
constexpr int kLDA = 0, kGGA = 1, kMGGA = 2;

// Threads per block of the 1-D kernels; eval_ao's blocks are (kAOThreads points) x 1 shell.
constexpr int kThreads = 256;
constexpr int kAOThreads = 128;
// eval_rho's reduction over AOs: blocks of kRhoLanes points x kRhoSplit AO subsets; subset w
// sums the AOs i = w, w + kRhoSplit, ... and the subsets are added in the order w = 0, 1, ...
constexpr int kRhoLanes = 32;
constexpr int kRhoSplit = 16;
constexpr int kRhoThreads = kRhoLanes * kRhoSplit;
// Largest gridDim.y used (CUDA's limit is 65535); kernels loop over the rest.
constexpr int64_t kMaxGridY = 65535;

// --- AO values ------------------------------------------------------------------------------
// Shell k of a list at point j: function m, component c of the shell goes to
//   out[c * cstride + (row(k) + m) * rstride + j].
template <typename T>
struct AOParams {
  ShellTable basis;
  const double* points = nullptr;  // (npts, 3), Bohr
  int64_t npts = 0;
  const int64_t* shells = nullptr;  // (nsh,) shell ids; nullptr: shell k is shell k
  const int64_t* rows = nullptr;    // (nsh,) first output row; nullptr: the shell's ao_offset
  int64_t nsh = 0;
  int deriv = 0;
  T* out = nullptr;
  int64_t cstride = 0;
  int64_t rstride = 0;
};

template <typename T>
DIXC_HD inline void eval_ao_thread(const AOParams<T>& p, int64_t j, int64_t k) {
  const int64_t s = p.shells != nullptr ? p.shells[k] : k;
  const int64_t row = p.rows != nullptr ? p.rows[k] : p.basis.bas[4 * s + 3];
  const double* r = p.points + 3 * j;
  eval_shell_point<T>(p.basis, s, r[0], r[1], r[2], p.deriv, p.out + row * p.rstride + j, p.cstride,
                      p.rstride);
}

// --- density matrix gather: dsub[b, i, k] = ds[b, idx[i], idx[k]] ---------------------------
template <typename T>
struct GatherParams {
  const T* ds = nullptr;         // (nset, nao, nao)
  const int64_t* idx = nullptr;  // (n,)
  int64_t nao = 0, n = 0, nset = 0;
  T* dsub = nullptr;  // (nset, n, n)
};

template <typename T>
DIXC_HD inline void gather_dm_thread(const GatherParams<T>& p, int64_t e) {
  const int64_t nn = p.n * p.n;
  const int64_t b = e / nn, r = e - b * nn;
  const int64_t i = r / p.n, k = r - i * p.n;
  p.dsub[e] = p.ds[(b * p.nao + p.idx[i]) * p.nao + p.idx[k]];
}

// --- V scatter-add: v[b, idx[k], idx[i]] += vsub[b, k, i] ------------------------------------
// The idx of one block are distinct, so the threads of one launch write distinct elements.
template <typename T>
struct ScatterParams {
  const T* vsub = nullptr;       // (nset, n, n)
  const int64_t* idx = nullptr;  // (n,)
  int64_t nao = 0, n = 0, nset = 0;
  T* v = nullptr;  // (nset, nao, nao)
};

template <typename T>
DIXC_HD inline void scatter_add_thread(const ScatterParams<T>& p, int64_t e) {
  const int64_t nn = p.n * p.n;
  const int64_t b = e / nn, r = e - b * nn;
  const int64_t k = r / p.n, i = r - k * p.n;
  p.v[(b * p.nao + p.idx[k]) * p.nao + p.idx[i]] += p.vsub[e];
}

// --- eval_rho features of a block of np points -----------------------------------------------
// ao[i * a_i + c * a_c + j]: component c of AO i at point j (the block's AOs);
// cm[b * c_b + i * c_i + c * c_c + j] = sum_k D[b, i, k] ao[k, c, j] for c = 0 (and 1..3 for MGGA);
// out[b * o_b + f * o_f + j] receives feature f: rho = sum_i ao0 C0, d_x rho = 2 sum_i ao_x C0,
// tau = 1/2 sum_i sum_x ao_x C_x (D symmetric).
template <typename T>
struct RhoParams {
  const T* ao = nullptr;
  int64_t a_i = 0, a_c = 0;
  const T* cm = nullptr;
  int64_t c_b = 0, c_i = 0, c_c = 0;
  int64_t n = 0, np = 0, nset = 0;
  int xc = kLDA;
  T* out = nullptr;
  int64_t o_b = 0, o_f = 0;
};

// Partial sums over the AOs i = i0, i0 + istep, ... of (rho, 3 x gradient, tau) at (b, j).
template <typename T>
DIXC_HD inline void eval_rho_partial(const RhoParams<T>& p, int64_t b, int64_t j, int64_t i0,
                                     int64_t istep, double acc[5]) {
  for (int f = 0; f < 5; ++f) acc[f] = 0.0;
  const T* cb = p.cm + b * p.c_b + j;
  for (int64_t i = i0; i < p.n; i += istep) {
    const T* a = p.ao + i * p.a_i + j;
    const T* c = cb + i * p.c_i;
    const double c0 = static_cast<double>(c[0]);
    acc[0] += static_cast<double>(a[0]) * c0;
    if (p.xc == kLDA) continue;
    const double ax = a[p.a_c], ay = a[2 * p.a_c], az = a[3 * p.a_c];
    acc[1] += ax * c0;
    acc[2] += ay * c0;
    acc[3] += az * c0;
    if (p.xc == kMGGA) {
      acc[4] += ax * static_cast<double>(c[p.c_c]) + ay * static_cast<double>(c[2 * p.c_c]) +
                az * static_cast<double>(c[3 * p.c_c]);
    }
  }
}

template <typename T>
DIXC_HD inline void eval_rho_store(const RhoParams<T>& p, int64_t b, int64_t j,
                                   const double tot[5]) {
  T* o = p.out + b * p.o_b + j;
  o[0] = static_cast<T>(tot[0]);
  if (p.xc == kLDA) return;
  for (int x = 1; x <= 3; ++x) o[x * p.o_f] = static_cast<T>(2.0 * tot[x]);
  if (p.xc == kMGGA) o[4 * p.o_f] = static_cast<T>(0.5 * tot[4]);
}

// --- contract_vxc weights of a block of np points --------------------------------------------
// w[((b * n + k) * ncw + c) * np + j], ncw = 4 (MGGA) or 1:
//   c = 0: 1/2 w0 ao0_k + sum_x w_x ao_x_k;   c = x (MGGA): 1/4 w_tau ao_x_k,
// so that sum_{c, j} w[b, k, c, j] ao[i, c, j] = V'[b, i, k] with V = V' + V'^T
// (see cpu/numint_blocks.h contract_vxc_block).
template <typename T>
struct WeightParams {
  const T* ao = nullptr;
  int64_t a_i = 0, a_c = 0;
  const T* wv = nullptr;  // wv[b * w_b + f * w_f + j]
  int64_t w_b = 0, w_f = 0;
  int64_t n = 0, np = 0, nset = 0;
  int xc = kLDA;
  T* w = nullptr;
};

template <typename T>
DIXC_HD inline void contract_vxc_weight_thread(const WeightParams<T>& p, int64_t e) {
  const int64_t per_b = p.n * p.np;
  const int64_t b = e / per_b, r = e - b * per_b;
  const int64_t k = r / p.np, j = r - k * p.np;
  const T* a = p.ao + k * p.a_i + j;
  const T* wb = p.wv + b * p.w_b + j;
  double v = 0.5 * static_cast<double>(wb[0]) * static_cast<double>(a[0]);
  const int ncw = p.xc == kMGGA ? 4 : 1;
  T* o = p.w + (b * p.n + k) * ncw * p.np + j;
  if (p.xc != kLDA) {
    for (int x = 1; x <= 3; ++x) {
      v += static_cast<double>(wb[x * p.w_f]) * static_cast<double>(a[x * p.a_c]);
    }
  }
  o[0] = static_cast<T>(v);
  if (p.xc == kMGGA) {
    const double t = 0.25 * static_cast<double>(wb[4 * p.w_f]);
    for (int x = 1; x <= 3; ++x)
      o[x * p.np] = static_cast<T>(t * static_cast<double>(a[x * p.a_c]));
  }
}

}  // namespace gpu
}  // namespace dixc

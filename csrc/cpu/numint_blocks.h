// Per-grid-block building blocks of eval_rho and contract_vxc on the CPU, shared by the ops that
// take a materialised AO array and by the fused ops that evaluate screened AOs block by block.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "common/basis.h"
#include "common/blas.h"
#include "common/checks.h"

namespace dixc {
namespace cpu {

// Grid points per block: a (n x n) @ (n x kBlock) GEMM per block keeps BLAS efficient while the
// block stays compact enough for shell screening.
constexpr int64_t kBlock = 128;

// AO values of one grid block: component c (0 = value, 1..3 = x, y, z derivative) of function i at
// point j is comp[c][i * ld + j]; n functions, np points.
template <typename T>
struct AOBlock {
  const T* comp[4] = {nullptr, nullptr, nullptr, nullptr};
  int64_t ld = 0;
  int64_t n = 0;
  int64_t np = 0;
};

// rho[b, :, j] of one block from the symmetric density matrices dm[b] (n x n, restricted to the
// block's functions).  out + b * bstride + f * fstride + j receives feature f of point j.
// rho = sum_ij D_ij phi_i phi_j; grad rho = 2 sum_ij D_ij grad(phi_i) phi_j;
// tau = 1/2 sum_ij D_ij grad(phi_i) . grad(phi_j).
template <typename T>
void eval_rho_block(const AOBlock<T>& A, const T* dm, int64_t nset, XCType xc, T* out,
                    int64_t bstride, int64_t fstride, std::vector<T>& scratch) {
  const int64_t n = A.n, np = A.np;
  scratch.resize(static_cast<size_t>(nset * n * np));
  T* C = scratch.data();
  // C[b, i, j] = sum_k D[b, i, k] phi_k(j)
  gemm_rm<T>(nset * n, np, n, T(1), dm, n, false, A.comp[0], A.ld, false, T(0), C, np);
  for (int64_t b = 0; b < nset; ++b) {
    const T* Cb = C + b * n * np;
    T* rho = out + b * bstride;
    for (int64_t i = 0; i < n; ++i) {
      const T* a0 = A.comp[0] + i * A.ld;
      const T* c = Cb + i * np;
      for (int64_t j = 0; j < np; ++j) rho[j] += a0[j] * c[j];
    }
    if (xc != XCType::LDA) {
      for (int x = 1; x <= 3; ++x) {
        T* g = rho + x * fstride;
        for (int64_t i = 0; i < n; ++i) {
          const T* ax = A.comp[x] + i * A.ld;
          const T* c = Cb + i * np;
          for (int64_t j = 0; j < np; ++j) g[j] += T(2) * ax[j] * c[j];
        }
      }
    }
  }
  if (xc == XCType::MGGA) {
    for (int x = 1; x <= 3; ++x) {
      // C[b, i, j] = sum_k D[b, i, k] d_x phi_k(j)
      gemm_rm<T>(nset * n, np, n, T(1), dm, n, false, A.comp[x], A.ld, false, T(0), C, np);
      for (int64_t b = 0; b < nset; ++b) {
        T* tau = out + b * bstride + 4 * fstride;
        const T* Cb = C + b * n * np;
        for (int64_t i = 0; i < n; ++i) {
          const T* ax = A.comp[x] + i * A.ld;
          const T* c = Cb + i * np;
          for (int64_t j = 0; j < np; ++j) tau[j] += T(0.5) * ax[j] * c[j];
        }
      }
    }
  }
}

// Accumulates the lower-triangle-agnostic half V'[b] (n x n) of one block, such that the full
// contribution is V' + V'^T:
//   V'_ij += sum_j phi_i (1/2 w0 phi_j + w_x d_x phi_j) + 1/4 w_tau grad(phi_i) . grad(phi_j).
// wv + b * bstride + f * fstride + j is weight f of point j; vhalf + b * n * n receives V'[b].
template <typename T>
void contract_vxc_block(const AOBlock<T>& A, const T* wv, int64_t nset, XCType xc, int64_t bstride,
                        int64_t fstride, T* vhalf, std::vector<T>& scratch) {
  const int64_t n = A.n, np = A.np;
  scratch.resize(static_cast<size_t>(n * np));
  T* W = scratch.data();
  for (int64_t b = 0; b < nset; ++b) {
    const T* w = wv + b * bstride;
    for (int64_t i = 0; i < n; ++i) {
      const T* a0 = A.comp[0] + i * A.ld;
      T* wi = W + i * np;
      for (int64_t j = 0; j < np; ++j) wi[j] = T(0.5) * w[j] * a0[j];
      if (xc != XCType::LDA) {
        for (int x = 1; x <= 3; ++x) {
          const T* ax = A.comp[x] + i * A.ld;
          const T* wx = w + x * fstride;
          for (int64_t j = 0; j < np; ++j) wi[j] += wx[j] * ax[j];
        }
      }
    }
    T* V = vhalf + b * n * n;
    // V[i, k] += sum_j phi_i(j) W[k, j]
    gemm_rm<T>(n, n, np, T(1), A.comp[0], A.ld, false, W, np, true, T(1), V, n);
    if (xc == XCType::MGGA) {
      const T* wt = w + 4 * fstride;
      for (int x = 1; x <= 3; ++x) {
        for (int64_t i = 0; i < n; ++i) {
          const T* ax = A.comp[x] + i * A.ld;
          T* wi = W + i * np;
          for (int64_t j = 0; j < np; ++j) wi[j] = T(0.25) * wt[j] * ax[j];
        }
        // V[i, k] += sum_j d_x phi_i(j) W[k, j]
        gemm_rm<T>(n, n, np, T(1), A.comp[x], A.ld, false, W, np, true, T(1), V, n);
      }
    }
  }
}

// Block [g0, g0 + kBlock) of a materialised AO array ao (ncomp, nao, ngrid).
template <typename T>
inline AOBlock<T> dense_block(const T* ao, int64_t nao, int64_t ngrid, int64_t g0, XCType xc) {
  AOBlock<T> A;
  for (int c = 0; c < (xc == XCType::LDA ? 1 : 4); ++c) A.comp[c] = ao + c * nao * ngrid + g0;
  A.ld = ngrid;
  A.n = nao;
  A.np = std::min(kBlock, ngrid - g0);
  return A;
}

// Screened AOs of one block of np points for the fused ops: the shells whose screening sphere
// touches the block are evaluated into `buf` with layout (n, ncomp, np) (function i, component c
// at (i * ncomp + c) * np); idx[i] is the global AO index of block function i.
template <typename T>
struct ScreenedBlock {
  AOWorkspace ws;
  std::vector<int64_t> shells, rows, idx;
  std::vector<T> buf;

  AOBlock<T> eval(const BasisView& B, const double* points, int64_t np, int deriv) {
    select_shells(B, points, np, shells);
    rows.resize(shells.size());
    idx.clear();
    for (size_t k = 0; k < shells.size(); ++k) {
      rows[k] = static_cast<int64_t>(idx.size());
      for (int m = 0; m < B.nfunc(shells[k]); ++m) idx.push_back(B.ao_offset(shells[k]) + m);
    }
    const int64_t n = static_cast<int64_t>(idx.size()), ncomp = n_ao_components(deriv);
    AOBlock<T> A;
    A.n = n;
    A.np = np;
    A.ld = ncomp * np;
    if (n == 0) return A;
    buf.resize(static_cast<size_t>(n * ncomp * np));
    eval_shells<T>(B, points, np, deriv, shells.data(), static_cast<int64_t>(shells.size()),
                   rows.data(), buf.data(), np, ncomp * np, ws);
    for (int64_t c = 0; c < ncomp && c < 4; ++c) A.comp[c] = buf.data() + c * np;
    return A;
  }
};

// V[b] = V'[b] + V'[b]^T summed over per-thread partial results (nthread, nset, nao, nao).
inline at::Tensor symmetrize_partials(const at::Tensor& partial) {
  at::Tensor v = partial.sum(0);
  return v + v.transpose(-1, -2);
}

}  // namespace cpu
}  // namespace dixc

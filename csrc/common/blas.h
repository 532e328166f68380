// Row-major GEMM on raw pointers through ATen (which calls the BLAS torch was built with).
// Called from inside at::parallel_for: the BLAS runs single-threaded there.
#pragma once

#include <ATen/ATen.h>

namespace dixc {

template <typename T>
inline at::Tensor wrap(const T* p, int64_t rows, int64_t cols, int64_t ld) {
  return at::from_blob(const_cast<T*>(p), {rows, cols}, {ld, 1},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
}

// C[M, N] = beta * C + alpha * op(A) @ op(B); op(A) is (M, K), op(B) is (K, N).
// A is stored row-major as (M, K) with leading dimension lda, or as (K, M) when trans_a.
template <typename T>
inline void gemm_rm(int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda, bool trans_a,
                    const T* B, int64_t ldb, bool trans_b, T beta, T* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  at::Tensor c = wrap(C, M, N, ldc);
  if (K == 0) {
    c.mul_(beta);
    return;
  }
  at::Tensor a = trans_a ? wrap(A, K, M, lda).t() : wrap(A, M, K, lda);
  at::Tensor b = trans_b ? wrap(B, N, K, ldb).t() : wrap(B, K, N, ldb);
  if (beta == T(0)) {
    at::mm_out(c, a, b);
    if (alpha != T(1)) c.mul_(alpha);
  } else {
    c.addmm_(a, b, beta, alpha);
  }
}

}  // namespace dixc

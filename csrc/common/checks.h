// Input validation shared by every dixc kernel: each failure names the offending shapes.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "common/ao_point.h"  // n_ao_components

namespace dixc {

// XC types in PySCF's vocabulary. The feature rows are (rho, d_x rho, d_y rho, d_z rho, tau).
enum class XCType { LDA = 0, GGA = 1, MGGA = 2 };

inline XCType parse_xctype(const std::string& s) {
  if (s == "LDA") return XCType::LDA;
  if (s == "GGA") return XCType::GGA;
  if (s == "MGGA") return XCType::MGGA;
  TORCH_CHECK(false, "dixc: xctype must be 'LDA', 'GGA' or 'MGGA', got '", s, "'");
}

// Number of feature rows eval_rho returns (and contract_vxc takes) for an xctype.
inline int64_t n_features(XCType t) { return t == XCType::LDA ? 1 : (t == XCType::GGA ? 4 : 5); }

// AO derivative order an xctype needs.
inline int ao_deriv_for(XCType t) { return t == XCType::LDA ? 0 : 1; }

inline void check_float(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kDouble || t.scalar_type() == at::kFloat, op, ": ", name,
              " must be float64 or float32, got ", t.scalar_type());
}

inline void check_same(const at::Tensor& a, const at::Tensor& b, const char* op, const char* na,
                       const char* nb) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), op, ": ", na, " (", a.scalar_type(), ") and ", nb,
              " (", b.scalar_type(), ") must have the same dtype");
  TORCH_CHECK(a.device() == b.device(), op, ": ", na, " is on ", a.device(), " but ", nb, " is on ",
              b.device());
}

// dm: (nao, nao) or (B, nao, nao). Returns it as (B, nao, nao).
inline at::Tensor batched_dm(const at::Tensor& dm, int64_t nao, const char* op) {
  TORCH_CHECK(dm.dim() == 2 || dm.dim() == 3, op, ": dm must be (nao, nao) or (B, nao, nao), got ",
              dm.sizes());
  auto d = dm.dim() == 2 ? dm.unsqueeze(0) : dm;
  TORCH_CHECK(d.size(1) == nao && d.size(2) == nao, op, ": dm has shape ", dm.sizes(),
              " but the AO basis has nao = ", nao, " (dm must be square, nao x nao)");
  return d;
}

// wv: (nfeat, ngrid) or (B, nfeat, ngrid). Returns it as (B, nfeat, ngrid).
inline at::Tensor batched_wv(const at::Tensor& wv, int64_t nfeat, int64_t ngrid, const char* op,
                             const std::string& xctype) {
  TORCH_CHECK(wv.dim() == 2 || wv.dim() == 3, op,
              ": wv must be (nfeat, ngrid) or (B, nfeat, ngrid), got ", wv.sizes());
  auto w = wv.dim() == 2 ? wv.unsqueeze(0) : wv;
  TORCH_CHECK(w.size(1) == nfeat && w.size(2) == ngrid, op, ": wv has shape ", wv.sizes(),
              " but xctype='", xctype, "' needs ", nfeat, " rows on ", ngrid, " grid points");
  return w;
}

// Drops the leading batch axis a kernel added when its input `like` had none.
inline at::Tensor unbatch(const at::Tensor& out, const at::Tensor& like, int64_t unbatched_dim) {
  return like.dim() == unbatched_dim ? out.squeeze(0) : out;
}

}  // namespace dixc

// Host side of the CUDA ops: validation, screening plan, block loop and cuBLAS GEMMs (through
// ATen), with every hand-written kernel launched through a launcher policy K:
//   K = CudaLaunch (numint_cuda.cuh): the __global__ kernels on the current CUDA stream;
//   K = HostLaunch (host_emulation.cpp): the same per-thread bodies in loops on the CPU.
// Everything here is plain ATen on tensors of the compute device, so the host emulation runs this
// exact code on CPU tensors and the tests compare it with the CPU kernels.
//
// Fused ops: the grid is cut into blocks of consecutive points (PySCF's grids are spatially
// sorted); the shells whose screening sphere touches a block's bounding box are selected on the
// host (one device -> host copy of the boxes per call), the block's AOs (n, ncomp, np) are
// evaluated into scratch, and the B density matrices / weight sets go through one GEMM per block:
//   eval_rho:     C (B n, ncc np) = D_sub (B n, n) @ AO (n, ncc np),  then features from AO and C;
//   contract_vxc: V'^T (B n, n)   = W (B n, ncw np) @ AO (n, ncw np)^T, scattered into V.
// ncc = ncw = 4 for MGGA (tau needs D @ grad AO), else 1.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <string>
#include <vector>

#include "common/basis.h"
#include "common/checks.h"
#include "cuda/numint_kernels.h"

namespace dixc {
namespace gpu {

// Block sizes. Every block costs a fixed ~10 launches and ATen calls on the host, so blocks are
// large: on PySCF's spatially sorted grids screening hardly weakens with size (C33H68 def2-SVP,
// level 3: on average 186 of 802 AOs survive in 1024-point blocks, 211 in 16384-point blocks).
struct Tuning {
  int64_t block = 16384;        // grid points per block of the fused ops (screening granularity)
  int64_t dense_block = 16384;  // grid points per chunk of the dense ops
  int64_t scratch_elems = int64_t(1) << 27;  // cap on a block's largest scratch array (elements)
};

// Points per block: `requested`, lowered (to a multiple of 128, at least 128) so that the largest
// scratch array of a block, per_point elements per grid point, stays within `cap` elements.
inline int64_t block_points(int64_t requested, int64_t per_point, int64_t cap) {
  const int64_t per = std::max<int64_t>(1, per_point);
  int64_t p = std::max<int64_t>(1, requested);
  if (per * p > cap) p = std::min(p, std::max<int64_t>(128, cap / per / 128 * 128));
  return p;
}

// Elements per grid point of a block's largest scratch array: its AOs (n, ncomp, np) or a GEMM
// operand / result (nset, n, ncol, np), with n <= nao.
inline int64_t scratch_per_point(int64_t nao, int64_t ncomp, int64_t nset, int64_t ncol) {
  return nao * std::max(ncomp, nset * ncol);
}

inline int xc_code(XCType xc) {
  return xc == XCType::LDA ? kLDA : (xc == XCType::GGA ? kGGA : kMGGA);
}

// Inputs must be on the compute device `dev`.
inline void check_device(const at::Tensor& t, const at::Device& dev, const char* op,
                         const char* name, const char* ref) {
  TORCH_CHECK(t.device() == dev, op, ": ", name, " is on ", t.device(), " but ", ref, " is on ",
              dev);
}

// The packed basis, validated on the host (make_basis_view; host copies also serve the
// screening) and on the compute device for the kernels. Basis tensors may live on the CPU or on
// the compute device.
struct PackedBasis {
  at::Tensor bas, coord, prim, c2s, rcut;       // host, contiguous
  at::Tensor dbas, dcoord, dprim, dc2s, drcut;  // compute device, contiguous
  BasisView view;                               // host pointers
  ShellTable table;                             // device pointers

  PackedBasis(const at::Tensor& bas_, const at::Tensor& coord_, const at::Tensor& prim_,
              const at::Tensor& c2s_, const at::Tensor& rcut_, int64_t nao, bool cart,
              const char* op, const at::Device& dev) {
    const at::Tensor* ts[5] = {&bas_, &coord_, &prim_, &c2s_, &rcut_};
    const char* names[5] = {"bas", "bas_coord", "prim", "c2s", "rcut"};
    for (int k = 0; k < 5; ++k) {
      TORCH_CHECK(ts[k]->device().is_cpu() || ts[k]->device() == dev, op, ": basis tensor '",
                  names[k], "' is on ", ts[k]->device(), " but the inputs are on ", dev);
    }
    bas = bas_.to(at::kCPU).contiguous();
    coord = coord_.to(at::kCPU).contiguous();
    prim = prim_.to(at::kCPU).contiguous();
    c2s = c2s_.to(at::kCPU).contiguous();
    rcut = rcut_.to(at::kCPU).contiguous();
    view = make_basis_view(bas, coord, prim, c2s, rcut, nao, cart, op);
    dbas = bas_.to(dev).contiguous();
    dcoord = coord_.to(dev).contiguous();
    dprim = prim_.to(dev).contiguous();
    dc2s = c2s_.to(dev).contiguous();
    drcut = rcut_.to(dev).contiguous();
    table.bas = dbas.data_ptr<int64_t>();
    table.coord = dcoord.data_ptr<double>();
    table.prim = dprim.data_ptr<double>();
    table.c2s = dc2s.data_ptr<double>();
    table.rcut = drcut.data_ptr<double>();
    for (int l = 0; l <= kMaxL; ++l) table.c2s_offset[l] = view.c2s_offset[l];
    table.cart = cart;
  }
};

// Screening plan of the fused ops: blocks of P consecutive points; block b selects the shells
// shells[sh_off[b] .. sh_off[b+1]) whose functions occupy rows rows[k] .. of the block's AO
// scratch, and idx[fn_off[b] .. fn_off[b+1]) are the global AO indices of those rows.
struct BlockPlan {
  int64_t P = 0, nblk = 0;
  std::vector<int64_t> sh_off, fn_off;
  at::Tensor shells, rows, idx;  // int64 on the compute device
};

// xyz: (ngrid, 3) float64 on the compute device, ngrid > 0.
inline BlockPlan plan_blocks(const at::Tensor& xyz, const BasisView& B, int64_t P) {
  BlockPlan plan;
  const int64_t ngrid = xyz.size(0);
  plan.P = P;
  plan.nblk = (ngrid + P - 1) / P;
  const int64_t pad = plan.nblk * P - ngrid;
  // Pad the last block with copies of the last point: same bounding boxes as the real points.
  const at::Tensor padded =
      pad > 0 ? at::cat({xyz, xyz.narrow(0, ngrid - 1, 1).expand({pad, 3})}, 0) : xyz;
  const at::Tensor x3 = padded.reshape({plan.nblk, P, 3});
  const at::Tensor box = at::cat({x3.amin(1), x3.amax(1)}, 1).to(at::kCPU).contiguous();
  const double* bx = box.data_ptr<double>();  // (nblk, 6): lo xyz, hi xyz
  std::vector<int64_t> shells, rows, idx, sel;
  plan.sh_off.assign(1, 0);
  plan.fn_off.assign(1, 0);
  for (int64_t b = 0; b < plan.nblk; ++b) {
    select_shells_in_box(B, bx + 6 * b, bx + 6 * b + 3, sel);
    int64_t row = 0;
    for (const int64_t s : sel) {
      shells.push_back(s);
      rows.push_back(row);
      for (int m = 0; m < B.nfunc(s); ++m) idx.push_back(B.ao_offset(s) + m);
      row += B.nfunc(s);
    }
    plan.sh_off.push_back(static_cast<int64_t>(shells.size()));
    plan.fn_off.push_back(static_cast<int64_t>(idx.size()));
  }
  const auto upload = [&](const std::vector<int64_t>& v) {
    return at::tensor(v, at::TensorOptions().dtype(at::kLong)).to(xyz.device());
  };
  plan.shells = upload(shells);
  plan.rows = upload(rows);
  plan.idx = upload(idx);
  return plan;
}

// AOs of block b of a plan into A (n, ncomp, np): function i, component c, point j at
// A[(i * ncomp + c) * np + j].
template <class K, typename T>
void eval_block_ao(const PackedBasis& basis, const BlockPlan& plan, int64_t b, const double* xyz,
                   int64_t np, int deriv, at::Tensor& A) {
  const int64_t ncomp = n_ao_components(deriv);
  AOParams<T> p;
  p.basis = basis.table;
  p.points = xyz + 3 * b * plan.P;
  p.npts = np;
  p.shells = plan.shells.data_ptr<int64_t>() + plan.sh_off[b];
  p.rows = plan.rows.data_ptr<int64_t>() + plan.sh_off[b];
  p.nsh = plan.sh_off[b + 1] - plan.sh_off[b];
  p.deriv = deriv;
  p.out = A.data_ptr<T>();
  p.cstride = np;
  p.rstride = ncomp * np;
  K::eval_ao(p);
}

// Features of one block: A (n, ncomp, np) contiguous, D (nset, n, n) contiguous and symmetric;
// out + b * o_b + f * o_f + j receives feature f of point j.
template <class K, typename T>
void rho_block(const at::Tensor& A, const at::Tensor& D, int xc, T* out, int64_t o_b, int64_t o_f) {
  const int64_t n = A.size(0), ncomp = A.size(1), np = A.size(2), nset = D.size(0);
  const int64_t ncc = xc == kMGGA ? 4 : 1;
  const at::Tensor A2 = A.view({n, ncomp * np}).narrow(1, 0, ncc * np);
  // C[b, i, c, j] = sum_k D[b, i, k] A[k, c, j]
  const at::Tensor C = at::mm(D.view({nset * n, n}), A2).contiguous();
  RhoParams<T> p;
  p.ao = A.data_ptr<T>();
  p.a_i = ncomp * np;
  p.a_c = np;
  p.cm = C.data_ptr<T>();
  p.c_b = n * ncc * np;
  p.c_i = ncc * np;
  p.c_c = np;
  p.n = n;
  p.np = np;
  p.nset = nset;
  p.xc = xc;
  p.out = out;
  p.o_b = o_b;
  p.o_f = o_f;
  K::eval_rho(p);
}

// Weights of one block: W (nset, n, ncw, np) from A (n, ncomp, np) and wv + b * w_b + f * w_f + j.
template <class K, typename T>
at::Tensor vxc_weights_block(const at::Tensor& A, const T* wv, int64_t w_b, int64_t w_f,
                             int64_t nset, int xc) {
  const int64_t n = A.size(0), ncomp = A.size(1), np = A.size(2);
  const int64_t ncw = xc == kMGGA ? 4 : 1;
  at::Tensor W = at::empty({nset, n, ncw, np}, A.options());
  WeightParams<T> p;
  p.ao = A.data_ptr<T>();
  p.a_i = ncomp * np;
  p.a_c = np;
  p.wv = wv;
  p.w_b = w_b;
  p.w_f = w_f;
  p.n = n;
  p.np = np;
  p.nset = nset;
  p.xc = xc;
  p.w = W.data_ptr<T>();
  K::contract_vxc_weights(p, nset * n * np);
  return W;
}

// AO chunk [g0, g0 + np) of a materialised ao (ncomp_all, nao, ngrid) in the block layout
// (nao, ncomp, np).
inline at::Tensor dense_chunk(const at::Tensor& ao, int64_t ncomp, int64_t g0, int64_t np) {
  return ao.narrow(0, 0, ncomp).narrow(2, g0, np).permute({1, 0, 2}).contiguous();
}

// (B, nao, nao) -> contiguous symmetric part 1/2 (D + D^T) (as cpu/eval_rho_cpu.cpp).
inline at::Tensor symmetric_part(const at::Tensor& dm3) {
  return (0.5 * (dm3 + dm3.transpose(1, 2))).contiguous();
}

// --- eval_ao --------------------------------------------------------------------------------
template <class K>
at::Tensor eval_ao_impl(const at::Tensor& coords, const at::Tensor& bas,
                        const at::Tensor& bas_coord, const at::Tensor& prim, const at::Tensor& c2s,
                        const at::Tensor& rcut, int64_t nao, int64_t deriv, bool cart,
                        const at::Device& dev) {
  const char* op = "dixc.eval_ao";
  check_float(coords, op, "coords");
  TORCH_CHECK(coords.dim() == 2 && coords.size(1) == 3, op, ": coords must be (ngrid, 3), got ",
              coords.sizes());
  TORCH_CHECK(deriv >= 0 && deriv <= 2, op, ": deriv must be 0, 1 or 2, got ", deriv);
  check_device(coords, dev, op, "coords", "the compute device");
  const PackedBasis basis(bas, bas_coord, prim, c2s, rcut, nao, cart, op, dev);
  const int64_t ngrid = coords.size(0), ncomp = n_ao_components(deriv);
  at::Tensor ao = at::zeros({ncomp, nao, ngrid}, coords.options());
  if (ngrid == 0 || nao == 0) return ao;
  const at::Tensor xyz = coords.to(at::kDouble).contiguous();
  AT_DISPATCH_FLOATING_TYPES(ao.scalar_type(), "dixc_eval_ao_gpu", [&] {
    AOParams<scalar_t> p;
    p.basis = basis.table;
    p.points = xyz.data_ptr<double>();
    p.npts = ngrid;
    p.nsh = basis.view.nshell;
    p.deriv = static_cast<int>(deriv);
    p.out = ao.data_ptr<scalar_t>();
    p.cstride = nao * ngrid;
    p.rstride = ngrid;
    K::eval_ao(p);
  });
  return ao;
}

// --- eval_rho -------------------------------------------------------------------------------
template <class K>
at::Tensor eval_rho_impl(const at::Tensor& ao, const at::Tensor& dm, const std::string& xs,
                         const Tuning& tune) {
  const char* op = "dixc.eval_rho";
  const XCType xc = parse_xctype(xs);
  check_float(ao, op, "ao");
  check_same(ao, dm, op, "ao", "dm");
  TORCH_CHECK(ao.dim() == 3, op, ": ao must be (ncomp, nao, ngrid), got ", ao.sizes());
  const int64_t need = xc == XCType::LDA ? 1 : 4;
  TORCH_CHECK(ao.size(0) >= need, op, ": xctype='", xs, "' needs ", need,
              " AO components (deriv >= ", ao_deriv_for(xc), "), got ao of shape ", ao.sizes());
  const int64_t nao = ao.size(1), ngrid = ao.size(2), nfeat = n_features(xc);
  const at::Tensor dm3 = batched_dm(dm, nao, op);
  const int64_t nset = dm3.size(0);
  at::Tensor out = at::zeros({nset, nfeat, ngrid}, ao.options());
  if (nset == 0 || ngrid == 0 || nao == 0) return unbatch(out, dm, 2);
  const at::Tensor ds = symmetric_part(dm3);
  const int x = xc_code(xc);
  const int64_t P = block_points(
      tune.dense_block, scratch_per_point(nao, need, nset, x == kMGGA ? 4 : 1), tune.scratch_elems);
  AT_DISPATCH_FLOATING_TYPES(ao.scalar_type(), "dixc_eval_rho_gpu", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    for (int64_t g0 = 0; g0 < ngrid; g0 += P) {
      const int64_t np = std::min(P, ngrid - g0);
      const at::Tensor A = dense_chunk(ao, need, g0, np);
      rho_block<K, scalar_t>(A, ds, x, o + g0, nfeat * ngrid, ngrid);
    }
  });
  return unbatch(out, dm, 2);
}

template <class K>
at::Tensor eval_rho_fused_impl(const at::Tensor& coords, const at::Tensor& bas,
                               const at::Tensor& bas_coord, const at::Tensor& prim,
                               const at::Tensor& c2s, const at::Tensor& rcut, const at::Tensor& dm,
                               const std::string& xs, int64_t nao, bool cart, const Tuning& tune) {
  const char* op = "dixc.eval_rho_fused";
  const XCType xc = parse_xctype(xs);
  check_float(dm, op, "dm");
  check_float(coords, op, "coords");
  TORCH_CHECK(coords.dim() == 2 && coords.size(1) == 3, op, ": coords must be (ngrid, 3), got ",
              coords.sizes());
  const at::Device dev = dm.device();
  check_device(coords, dev, op, "coords", "dm");
  const PackedBasis basis(bas, bas_coord, prim, c2s, rcut, nao, cart, op, dev);
  const at::Tensor dm3 = batched_dm(dm, nao, op);
  const int64_t nset = dm3.size(0), ngrid = coords.size(0), nfeat = n_features(xc);
  at::Tensor out = at::zeros({nset, nfeat, ngrid}, dm.options());
  if (nset == 0 || ngrid == 0 || nao == 0) return unbatch(out, dm, 2);
  const at::Tensor xyz = coords.to(at::kDouble).contiguous();
  const at::Tensor ds = symmetric_part(dm3);
  const int x = xc_code(xc), deriv = ao_deriv_for(xc);
  const int64_t ncomp = n_ao_components(deriv);
  const int64_t P = block_points(
      tune.block, scratch_per_point(nao, ncomp, nset, x == kMGGA ? 4 : 1), tune.scratch_elems);
  const BlockPlan plan = plan_blocks(xyz, basis.view, P);
  AT_DISPATCH_FLOATING_TYPES(dm.scalar_type(), "dixc_eval_rho_fused_gpu", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    const scalar_t* d = ds.data_ptr<scalar_t>();
    for (int64_t b = 0; b < plan.nblk; ++b) {
      const int64_t g0 = b * P, np = std::min(P, ngrid - g0);
      const int64_t n = plan.fn_off[b + 1] - plan.fn_off[b];
      if (n == 0) continue;  // no AO reaches this block: its features stay 0
      at::Tensor A = at::empty({n, ncomp, np}, dm.options());
      eval_block_ao<K, scalar_t>(basis, plan, b, xyz.data_ptr<double>(), np, deriv, A);
      at::Tensor D = at::empty({nset, n, n}, dm.options());
      GatherParams<scalar_t> gp;
      gp.ds = d;
      gp.idx = plan.idx.data_ptr<int64_t>() + plan.fn_off[b];
      gp.nao = nao;
      gp.n = n;
      gp.nset = nset;
      gp.dsub = D.data_ptr<scalar_t>();
      K::gather_dm(gp, nset * n * n);
      rho_block<K, scalar_t>(A, D, x, o + g0, nfeat * ngrid, ngrid);
    }
  });
  return unbatch(out, dm, 2);
}

// --- contract_vxc ---------------------------------------------------------------------------
template <class K>
at::Tensor contract_vxc_impl(const at::Tensor& ao, const at::Tensor& wv, const std::string& xs,
                             const Tuning& tune) {
  const char* op = "dixc.contract_vxc";
  const XCType xc = parse_xctype(xs);
  check_float(ao, op, "ao");
  check_same(ao, wv, op, "ao", "wv");
  TORCH_CHECK(ao.dim() == 3, op, ": ao must be (ncomp, nao, ngrid), got ", ao.sizes());
  const int64_t need = xc == XCType::LDA ? 1 : 4;
  TORCH_CHECK(ao.size(0) >= need, op, ": xctype='", xs, "' needs ", need,
              " AO components (deriv >= ", ao_deriv_for(xc), "), got ao of shape ", ao.sizes());
  const int64_t nao = ao.size(1), ngrid = ao.size(2), nfeat = n_features(xc);
  const at::Tensor w3 = batched_wv(wv, nfeat, ngrid, op, xs).contiguous();
  const int64_t nset = w3.size(0);
  if (nset == 0 || ngrid == 0 || nao == 0) {
    return unbatch(at::zeros({nset, nao, nao}, ao.options()), wv, 2);
  }
  const int x = xc_code(xc);
  const int64_t ncw = x == kMGGA ? 4 : 1;
  const int64_t P =
      block_points(tune.dense_block, scratch_per_point(nao, need, nset, ncw), tune.scratch_elems);
  // vt[b, k, i] accumulates V'[b, i, k]; V = V' + V'^T.
  at::Tensor vt = at::zeros({nset, nao, nao}, ao.options());
  AT_DISPATCH_FLOATING_TYPES(ao.scalar_type(), "dixc_contract_vxc_gpu", [&] {
    const scalar_t* w = w3.data_ptr<scalar_t>();
    at::Tensor vt2 = vt.view({nset * nao, nao});
    for (int64_t g0 = 0; g0 < ngrid; g0 += P) {
      const int64_t np = std::min(P, ngrid - g0);
      const at::Tensor A = dense_chunk(ao, need, g0, np);
      const at::Tensor W = vxc_weights_block<K, scalar_t>(A, w + g0, nfeat * ngrid, ngrid, nset, x);
      const at::Tensor A2 = A.view({nao, A.size(1) * np}).narrow(1, 0, ncw * np);
      // vt[b, k, i] += sum_{c, j} W[b, k, c, j] A[i, c, j]
      vt2.addmm_(W.view({nset * nao, ncw * np}), A2.t());
    }
  });
  return unbatch(vt + vt.transpose(1, 2), wv, 2);
}

template <class K>
at::Tensor contract_vxc_fused_impl(const at::Tensor& coords, const at::Tensor& bas,
                                   const at::Tensor& bas_coord, const at::Tensor& prim,
                                   const at::Tensor& c2s, const at::Tensor& rcut,
                                   const at::Tensor& wv, const std::string& xs, int64_t nao,
                                   bool cart, const Tuning& tune) {
  const char* op = "dixc.contract_vxc_fused";
  const XCType xc = parse_xctype(xs);
  check_float(wv, op, "wv");
  check_float(coords, op, "coords");
  TORCH_CHECK(coords.dim() == 2 && coords.size(1) == 3, op, ": coords must be (ngrid, 3), got ",
              coords.sizes());
  const at::Device dev = wv.device();
  check_device(coords, dev, op, "coords", "wv");
  const PackedBasis basis(bas, bas_coord, prim, c2s, rcut, nao, cart, op, dev);
  const int64_t ngrid = coords.size(0), nfeat = n_features(xc);
  const at::Tensor w3 = batched_wv(wv, nfeat, ngrid, op, xs).contiguous();
  const int64_t nset = w3.size(0);
  if (nset == 0 || ngrid == 0 || nao == 0) {
    return unbatch(at::zeros({nset, nao, nao}, wv.options()), wv, 2);
  }
  const at::Tensor xyz = coords.to(at::kDouble).contiguous();
  const int x = xc_code(xc), deriv = ao_deriv_for(xc);
  const int64_t ncomp = n_ao_components(deriv), ncw = x == kMGGA ? 4 : 1;
  const int64_t P =
      block_points(tune.block, scratch_per_point(nao, ncomp, nset, ncw), tune.scratch_elems);
  const BlockPlan plan = plan_blocks(xyz, basis.view, P);
  at::Tensor vt = at::zeros({nset, nao, nao}, wv.options());  // V'^T, as in contract_vxc_impl
  AT_DISPATCH_FLOATING_TYPES(wv.scalar_type(), "dixc_contract_vxc_fused_gpu", [&] {
    const scalar_t* w = w3.data_ptr<scalar_t>();
    for (int64_t b = 0; b < plan.nblk; ++b) {
      const int64_t g0 = b * P, np = std::min(P, ngrid - g0);
      const int64_t n = plan.fn_off[b + 1] - plan.fn_off[b];
      if (n == 0) continue;
      at::Tensor A = at::empty({n, ncomp, np}, wv.options());
      eval_block_ao<K, scalar_t>(basis, plan, b, xyz.data_ptr<double>(), np, deriv, A);
      const at::Tensor W = vxc_weights_block<K, scalar_t>(A, w + g0, nfeat * ngrid, ngrid, nset, x);
      const at::Tensor A2 = A.view({n, ncomp * np}).narrow(1, 0, ncw * np);
      // vsub[b, k, i] = sum_{c, j} W[b, k, c, j] A[i, c, j]
      const at::Tensor vsub = at::mm(W.view({nset * n, ncw * np}), A2.t()).contiguous();
      ScatterParams<scalar_t> sp;
      sp.vsub = vsub.data_ptr<scalar_t>();
      sp.idx = plan.idx.data_ptr<int64_t>() + plan.fn_off[b];
      sp.nao = nao;
      sp.n = n;
      sp.nset = nset;
      sp.v = vt.data_ptr<scalar_t>();
      K::scatter_add(sp, nset * n * n);
    }
  });
  return unbatch(vt + vt.transpose(1, 2), wv, 2);
}

}  // namespace gpu
}  // namespace dixc

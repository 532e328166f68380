// Host emulation of the CUDA ops, for tests on machines without a GPU. Not part of the op library
// (CMake builds csrc/cuda/*.cu only); tests/test_cuda_emulation.py compiles it with
// torch.utils.cpp_extension and compares its ops with the CPU kernels.
//
// The ops `dixc_emu::*` run the CUDA path's host code (numint_driver.h: validation, screening
// plan, blocking, GEMM shapes and strides) on CPU tensors, with HostLaunch running the kernels'
// per-thread bodies (numint_kernels.h, including eval_shell_point of common/ao_point.h) in loops
// over the thread indices the CUDA grid would have; becke_partition's per-point bodies
// (common/becke_point.h) likewise. What this cannot check is CUDA-only: launch
// configurations, shared memory and synchronisation in eval_rho_kernel, the warp shuffles of
// becke_backward_kernel, and device placement.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "common/becke.h"
#include "cuda/numint_driver.h"
#include "cuda/numint_kernels.h"

namespace dixc {
namespace gpu {

struct HostLaunch {
  template <typename T>
  static void eval_ao(const AOParams<T>& p) {
    at::parallel_for(0, p.nsh, 1, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k)
        for (int64_t j = 0; j < p.npts; ++j) eval_ao_thread(p, j, k);
    });
  }

  // As eval_rho_kernel: kRhoSplit partial sums per (set, point), added in the order 0, 1, ...
  template <typename T>
  static void eval_rho(const RhoParams<T>& p) {
    at::parallel_for(0, p.nset * p.np, 256, [&](int64_t e0, int64_t e1) {
      for (int64_t e = e0; e < e1; ++e) {
        const int64_t b = e / p.np, j = e - b * p.np;
        double tot[5], acc[5];
        eval_rho_partial(p, b, j, 0, kRhoSplit, tot);
        for (int w = 1; w < kRhoSplit; ++w) {
          eval_rho_partial(p, b, j, w, kRhoSplit, acc);
          for (int f = 0; f < 5; ++f) tot[f] += acc[f];
        }
        eval_rho_store(p, b, j, tot);
      }
    });
  }

  template <typename T>
  static void contract_vxc_weights(const WeightParams<T>& p, int64_t total) {
    at::parallel_for(0, total, 4096, [&](int64_t e0, int64_t e1) {
      for (int64_t e = e0; e < e1; ++e) contract_vxc_weight_thread(p, e);
    });
  }

  template <typename T>
  static void gather_dm(const GatherParams<T>& p, int64_t total) {
    at::parallel_for(0, total, 4096, [&](int64_t e0, int64_t e1) {
      for (int64_t e = e0; e < e1; ++e) gather_dm_thread(p, e);
    });
  }

  template <typename T>
  static void scatter_add(const ScatterParams<T>& p, int64_t total) {
    at::parallel_for(0, total, 4096, [&](int64_t e0, int64_t e1) {
      for (int64_t e = e0; e < e1; ++e) scatter_add_thread(p, e);
    });
  }
};

namespace {

// block: grid points per block (fused) and per chunk (dense); scratch: the scratch cap in
// elements (<= 0: the CUDA ops' default).
Tuning tuning(int64_t block, int64_t scratch) {
  Tuning t;
  t.block = block;
  t.dense_block = block;
  if (scratch > 0) t.scratch_elems = scratch;
  return t;
}

const at::Device kHost(at::kCPU);

at::Tensor emu_eval_ao(const at::Tensor& coords, const at::Tensor& bas, const at::Tensor& bas_coord,
                       const at::Tensor& prim, const at::Tensor& c2s, const at::Tensor& rcut,
                       int64_t nao, int64_t deriv, bool cart) {
  return eval_ao_impl<HostLaunch>(coords, bas, bas_coord, prim, c2s, rcut, nao, deriv, cart, kHost);
}

at::Tensor emu_eval_rho(const at::Tensor& ao, const at::Tensor& dm, c10::string_view xctype,
                        int64_t block, int64_t scratch) {
  return eval_rho_impl<HostLaunch>(ao, dm, std::string(xctype), tuning(block, scratch));
}

at::Tensor emu_contract_vxc(const at::Tensor& ao, const at::Tensor& wv, c10::string_view xctype,
                            int64_t block, int64_t scratch) {
  return contract_vxc_impl<HostLaunch>(ao, wv, std::string(xctype), tuning(block, scratch));
}

at::Tensor emu_eval_rho_fused(const at::Tensor& coords, const at::Tensor& bas,
                              const at::Tensor& bas_coord, const at::Tensor& prim,
                              const at::Tensor& c2s, const at::Tensor& rcut, const at::Tensor& dm,
                              c10::string_view xctype, int64_t nao, bool cart, int64_t block,
                              int64_t scratch) {
  return eval_rho_fused_impl<HostLaunch>(coords, bas, bas_coord, prim, c2s, rcut, dm,
                                         std::string(xctype), nao, cart, tuning(block, scratch));
}

at::Tensor emu_contract_vxc_fused(const at::Tensor& coords, const at::Tensor& bas,
                                  const at::Tensor& bas_coord, const at::Tensor& prim,
                                  const at::Tensor& c2s, const at::Tensor& rcut,
                                  const at::Tensor& wv, c10::string_view xctype, int64_t nao,
                                  bool cart, int64_t block, int64_t scratch) {
  return contract_vxc_fused_impl<HostLaunch>(coords, bas, bas_coord, prim, c2s, rcut, wv,
                                             std::string(xctype), nao, cart,
                                             tuning(block, scratch));
}

// becke_partition as becke_cuda.cu's kernels compute it: one thread per point over ordered pairs
// (common/becke_point.h), threads padded to whole blocks of 256 (padding lanes run the last point
// with grad 0), the nuclei's gradient accumulated per block and the blocks added in order.
at::Tensor emu_becke_partition(const at::Tensor& coords, const at::Tensor& owner,
                               const at::Tensor& atom_coords, const at::Tensor& adjust,
                               int64_t scheme) {
  const BeckeInputs in =
      becke_inputs(coords, owner, atom_coords, adjust, scheme, "dixc.becke_partition");
  at::Tensor out = at::empty({in.ngrid}, in.coords.options());
  const BeckeAtoms a = in.view();
  const double* r = in.coords.data_ptr<double>();
  const int64_t* own = in.owner.data_ptr<int64_t>();
  double* f = out.data_ptr<double>();
  at::parallel_for(0, in.ngrid, 64, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) f[g] = becke_fraction_point(a, r + 3 * g, own[g]);
  });
  return out.to(coords.scalar_type());
}

struct HostAccumulator {
  double* acc;
  void add(int64_t k, double x, double y, double z) {
    acc[3 * k] += x;
    acc[3 * k + 1] += y;
    acc[3 * k + 2] += z;
  }
};

std::tuple<at::Tensor, at::Tensor> emu_becke_partition_backward(
    const at::Tensor& grad, const at::Tensor& coords, const at::Tensor& owner,
    const at::Tensor& atom_coords, const at::Tensor& adjust, int64_t scheme) {
  const char* op = "dixc.becke_partition_backward";
  const BeckeInputs in = becke_inputs(coords, owner, atom_coords, adjust, scheme, op);
  constexpr int64_t kThreads = 256;
  const int64_t nblk = (in.ngrid + kThreads - 1) / kThreads, n = in.ngrid;
  const at::Tensor gc = becke_grad(grad, coords, in, op);
  at::Tensor gr = at::zeros({n, 3}, in.coords.options());
  at::Tensor blocks = at::zeros({nblk, in.natm, 3}, in.coords.options());
  const BeckeAtoms a = in.view();
  const double* r = in.coords.data_ptr<double>();
  const double* gg = gc.data_ptr<double>();
  const int64_t* own = in.owner.data_ptr<int64_t>();
  double* pr = gr.data_ptr<double>();
  double* pb = blocks.data_ptr<double>();
  at::parallel_for(0, nblk, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      HostAccumulator acc{pb + b * in.natm * 3};
      for (int64_t t = 0; t < kThreads; ++t) {
        const int64_t g = b * kThreads + t, c = g < n ? g : n - 1;
        double out[3] = {0.0, 0.0, 0.0};
        becke_backward_point(a, r + 3 * c, own[c], g < n ? gg[c] : 0.0, out, acc);
        if (g < n)
          for (int x = 0; x < 3; ++x) pr[3 * g + x] = out[x];
      }
    }
  });
  const at::ScalarType dt = coords.scalar_type();
  return {gr.to(dt), blocks.sum(0).to(dt)};
}

// The block-size rule of the CUDA ops, for tests of its edge cases.
int64_t emu_block_points(int64_t requested, int64_t per_point, int64_t cap) {
  return block_points(requested, per_point, cap);
}

}  // namespace
}  // namespace gpu
}  // namespace dixc

TORCH_LIBRARY(dixc_emu, m) {
  m.def(
      "eval_ao(Tensor coords, Tensor bas, Tensor bas_coord, Tensor prim, Tensor c2s, "
      "Tensor rcut, int nao, int deriv, bool cart) -> Tensor");
  m.def("eval_rho(Tensor ao, Tensor dm, str xctype, int block, int scratch) -> Tensor");
  m.def("contract_vxc(Tensor ao, Tensor wv, str xctype, int block, int scratch) -> Tensor");
  m.def(
      "eval_rho_fused(Tensor coords, Tensor bas, Tensor bas_coord, Tensor prim, Tensor c2s, "
      "Tensor rcut, Tensor dm, str xctype, int nao, bool cart, int block, int scratch) -> Tensor");
  m.def(
      "contract_vxc_fused(Tensor coords, Tensor bas, Tensor bas_coord, Tensor prim, Tensor c2s, "
      "Tensor rcut, Tensor wv, str xctype, int nao, bool cart, int block, int scratch) -> Tensor");
  m.def("block_points(int requested, int per_point, int cap) -> int", &dixc::gpu::emu_block_points);
  m.def(
      "becke_partition(Tensor coords, Tensor owner, Tensor atom_coords, Tensor adjust, "
      "int scheme) -> Tensor");
  m.def(
      "becke_partition_backward(Tensor grad, Tensor coords, Tensor owner, Tensor atom_coords, "
      "Tensor adjust, int scheme) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(dixc_emu, CPU, m) {
  m.impl("eval_ao", &dixc::gpu::emu_eval_ao);
  m.impl("eval_rho", &dixc::gpu::emu_eval_rho);
  m.impl("contract_vxc", &dixc::gpu::emu_contract_vxc);
  m.impl("eval_rho_fused", &dixc::gpu::emu_eval_rho_fused);
  m.impl("contract_vxc_fused", &dixc::gpu::emu_contract_vxc_fused);
  m.impl("becke_partition", &dixc::gpu::emu_becke_partition);
  m.impl("becke_partition_backward", &dixc::gpu::emu_becke_partition_backward);
}

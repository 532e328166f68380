// Becke's partition of space on the CPU: cell fractions of grid points and their derivatives
// w.r.t. the points and the nuclei (the weight term of grid-response nuclear gradients).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "common/becke.h"

namespace dixc {
namespace cpu {

namespace {

// Points per task of the backward pass; each task reduces its atoms' gradient into its own
// slot, and the slots are added in order afterwards (results independent of the thread count).
constexpr int64_t kBeckeTask = 512;

// Per-point scratch: distances, unit vectors, cell products; for the backward pass the pairs'
// mu, p and p' (i < j, at i * natm + j) and the per-atom sums of the pair coefficients.
struct BeckeScratch {
  std::vector<double> d, u, P, mu, p, dp, S;
  BeckeScratch(int64_t natm, bool pairs)
      : d(natm),
        u(3 * natm),
        P(natm),
        mu(pairs ? natm * natm : 0),
        p(mu.size()),
        dp(mu.size()),
        S(pairs ? natm : 0) {}
};

// P_i(r) for all i over the unordered pairs: P_i *= s(nu_ij), P_j *= s(nu_ji) = 1 - s(nu_ij) +
// tiny (keeping mu, p, p' per pair when the scratch has room). Returns Z = sum_i P_i.
double cells(const BeckeAtoms& a, const double* r, BeckeScratch& t) {
  const int64_t n = a.natm;
  const bool keep = !t.mu.empty();
  for (int64_t i = 0; i < n; ++i) {
    t.d[i] = becke_dist(r, a.R + 3 * i, &t.u[3 * i]);
    t.P[i] = 1.0;
  }
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = i + 1; j < n; ++j) {
      double mu, p, dp;
      becke_switch(becke_nu(a, i, j, t.d[i], t.d[j], mu), a.scheme, p, dp);
      t.P[i] *= 0.5 * (1.0 - p + kBeckeTiny);
      t.P[j] *= 0.5 * (1.0 + p + kBeckeTiny);
      if (keep) {
        t.mu[i * n + j] = mu;
        t.p[i * n + j] = p;
        t.dp[i * n + j] = dp;
      }
    }
  }
  double z = 0.0;
  for (int64_t i = 0; i < n; ++i) z += t.P[i];
  return z;
}

}  // namespace

// f[g] = P_{owner[g]}(r_g) / sum_i P_i(r_g)  (Becke cell fraction of each point)
//   coords (ngrid, 3), owner (ngrid,) int64, atom_coords (natm, 3), adjust (natm, natm) -> (ngrid,)
at::Tensor becke_partition_cpu(const at::Tensor& coords, const at::Tensor& owner,
                               const at::Tensor& atom_coords, const at::Tensor& adjust,
                               int64_t scheme) {
  const BeckeInputs in =
      becke_inputs(coords, owner, atom_coords, adjust, scheme, "dixc.becke_partition");
  at::Tensor out = at::empty({in.ngrid}, in.coords.options());
  const BeckeAtoms a = in.view();
  const double* r = in.coords.data_ptr<double>();
  const int64_t* own = in.owner.data_ptr<int64_t>();
  double* f = out.data_ptr<double>();
  at::parallel_for(0, in.ngrid, 256, [&](int64_t g0, int64_t g1) {
    BeckeScratch t(a.natm, false);
    for (int64_t g = g0; g < g1; ++g) {
      const double z = cells(a, r + 3 * g, t);
      f[g] = t.P[own[g]] / z;
    }
  });
  return out.to(coords.scalar_type());
}

// grad_coords[g] = grad[g] df_g/dr_g, grad_atom_coords[k] = sum_g grad[g] df_g/dR_k, with
//   df = sum_i f (delta_{i,owner} - P_i / Z) d ln P_i  over the unordered pairs (i < j):
//   d ln s_ij = -p' dnu / (2 s_ij), d ln s_ji = +p' dnu / (2 s_ji), dnu = (1 - 2 a_ij mu) dmu,
//   dmu = [(u_i - u_j) . dr - (u_i + mu e_ij) . dR_i + (u_j + mu e_ij) . dR_j] / R_ij.
// With q_ij the coefficient of dmu R_ij: per point, S_k = sum_{j > k} q_kj - sum_{i < k} q_ik
// gives dr = sum_k S_k u_k and dR_k -= S_k u_k; the e_ij terms are point-independent vectors,
// so per task of points M_ij = sum_g q_ij mu_ij, folded in once: dR_i -= M_ij e_ij, dR_j += ...
//   grad (ngrid,) -> ((ngrid, 3), (natm, 3))
std::tuple<at::Tensor, at::Tensor> becke_partition_backward_cpu(
    const at::Tensor& grad, const at::Tensor& coords, const at::Tensor& owner,
    const at::Tensor& atom_coords, const at::Tensor& adjust, int64_t scheme) {
  const char* op = "dixc.becke_partition_backward";
  const BeckeInputs in = becke_inputs(coords, owner, atom_coords, adjust, scheme, op);
  const at::Tensor gc = becke_grad(grad, coords, in, op);
  const int64_t n = in.natm, ntask = (in.ngrid + kBeckeTask - 1) / kBeckeTask;
  at::Tensor gr = at::zeros({in.ngrid, 3}, in.coords.options());
  at::Tensor slots = at::zeros({ntask, n, 3}, in.coords.options());
  const BeckeAtoms a = in.view();
  const double* r = in.coords.data_ptr<double>();
  const double* gg = gc.data_ptr<double>();
  const int64_t* own = in.owner.data_ptr<int64_t>();
  double* pr = gr.data_ptr<double>();
  double* ps = slots.data_ptr<double>();
  at::parallel_for(0, ntask, 1, [&](int64_t k0, int64_t k1) {
    BeckeScratch t(n, true);
    std::vector<double> c(n), M(n * n);
    for (int64_t task = k0; task < k1; ++task) {
      double* gR = ps + task * n * 3;
      std::fill(M.begin(), M.end(), 0.0);
      const int64_t end = std::min(in.ngrid, (task + 1) * kBeckeTask);
      for (int64_t g = task * kBeckeTask; g < end; ++g) {
        if (gg[g] == 0.0 || n == 1) continue;
        const double z = cells(a, r + 3 * g, t);
        const double gf = gg[g] * t.P[own[g]] / z;
        for (int64_t i = 0; i < n; ++i) {
          c[i] = gf * ((i == own[g] ? 1.0 : 0.0) - t.P[i] / z);
          t.S[i] = 0.0;
        }
        for (int64_t i = 0; i < n; ++i) {
          for (int64_t j = i + 1; j < n; ++j) {
            const int64_t ij = i * n + j;
            const double dp = t.dp[ij];
            if (dp == 0.0) continue;
            const double p = t.p[ij], mu = t.mu[ij];
            const double sij = 0.5 * (1.0 - p + kBeckeTiny), sji = 0.5 * (1.0 + p + kBeckeTiny);
            const double q = 0.5 * dp * (c[j] / sji - c[i] / sij) *
                             (1.0 - 2.0 * a.adjust[ij] * mu) * a.inv_r[ij];
            t.S[i] += q;
            t.S[j] -= q;
            M[ij] += q * mu;
          }
        }
        double* out = pr + 3 * g;
        for (int64_t k = 0; k < n; ++k)
          for (int x = 0; x < 3; ++x) {
            const double v = t.S[k] * t.u[3 * k + x];
            out[x] += v;
            gR[3 * k + x] -= v;
          }
      }
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = i + 1; j < n; ++j)
          for (int x = 0; x < 3; ++x) {
            const double v = M[i * n + j] * (a.R[3 * i + x] - a.R[3 * j + x]) * a.inv_r[i * n + j];
            gR[3 * i + x] -= v;
            gR[3 * j + x] += v;
          }
    }
  });
  const at::ScalarType dt = coords.scalar_type();
  return {gr.to(dt), slots.sum(0).to(dt)};
}

}  // namespace cpu
}  // namespace dixc

TORCH_LIBRARY_IMPL(dixc, CPU, m) {
  m.impl("becke_partition", &dixc::cpu::becke_partition_cpu);
  m.impl("becke_partition_backward", &dixc::cpu::becke_partition_backward_cpu);
}

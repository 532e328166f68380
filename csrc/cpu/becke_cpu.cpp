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

// Points per block: the pair loops run over a block's points in their inner loop (vectorised),
// with per-atom rows of kBeckeBlock values in scratch. Points per task of the backward pass:
// each task reduces its atoms' gradient into its own slot, and the slots are added in order
// afterwards (results independent of the thread count).
constexpr int64_t kBeckeBlock = 64;
constexpr int64_t kBeckeTask = 8 * kBeckeBlock;

// Per-block scratch, rows of kBeckeBlock per atom: distances, unit vectors (x, y, z rows), cell
// products, Z = sum_i P_i, and for the backward pass grad * f, the coefficients c_i and sums S_i.
struct BeckeScratch {
  std::vector<double> d, u, P, z, gf, c, S;
  explicit BeckeScratch(int64_t n)
      : d(n * kBeckeBlock),
        u(3 * n * kBeckeBlock),
        P(n * kBeckeBlock),
        z(kBeckeBlock),
        gf(kBeckeBlock),
        c(n * kBeckeBlock),
        S(n * kBeckeBlock) {}
  double* row(std::vector<double>& v, int64_t i) { return v.data() + i * kBeckeBlock; }
};

// P_i(r_g) for all atoms i and the block's nb points r (nb <= kBeckeBlock) over the unordered
// pairs: P_i *= s(nu_ij), P_j *= s(nu_ji) = (1 + p(nu_ij) + tiny) / 2; then Z = sum_i P_i.
template <int Scheme>
void cells(const BeckeAtoms& a, const double* r, int64_t nb, BeckeScratch& t) {
  const int64_t n = a.natm;
  for (int64_t i = 0; i < n; ++i) {
    double *d = t.row(t.d, i), *P = t.row(t.P, i);
    double *ux = t.row(t.u, 3 * i), *uy = t.row(t.u, 3 * i + 1), *uz = t.row(t.u, 3 * i + 2);
    for (int64_t g = 0; g < nb; ++g) {
      double v[3];
      d[g] = becke_dist(r + 3 * g, a.R + 3 * i, v);
      ux[g] = v[0];
      uy[g] = v[1];
      uz[g] = v[2];
      P[g] = 1.0;
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    const double* di = t.row(t.d, i);
    double* Pi = t.row(t.P, i);
    for (int64_t j = i + 1; j < n; ++j) {
      const double *dj = t.row(t.d, j), inv = a.inv_r[i * n + j], aij = a.adjust[i * n + j];
      double* Pj = t.row(t.P, j);
      for (int64_t g = 0; g < nb; ++g) {
        const double mu = (di[g] - dj[g]) * inv;
        double p, dp;
        becke_switch<Scheme>(mu + aij * (1.0 - mu * mu), p, dp);
        Pi[g] *= 0.5 * (1.0 - p + kBeckeTiny);
        Pj[g] *= 0.5 * (1.0 + p + kBeckeTiny);
      }
    }
  }
  for (int64_t g = 0; g < nb; ++g) t.z[g] = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double* P = t.row(t.P, i);
    for (int64_t g = 0; g < nb; ++g) t.z[g] += P[g];
  }
}

// f[g] for all points, blocks of kBeckeBlock points in parallel.
template <int Scheme>
void fractions(const BeckeAtoms& a, const double* r, const int64_t* own, int64_t ngrid, double* f) {
  const int64_t nblk = (ngrid + kBeckeBlock - 1) / kBeckeBlock;
  at::parallel_for(0, nblk, 4, [&](int64_t b0, int64_t b1) {
    BeckeScratch t(a.natm);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t g0 = b * kBeckeBlock, nb = std::min(kBeckeBlock, ngrid - g0);
      cells<Scheme>(a, r + 3 * g0, nb, t);
      for (int64_t g = 0; g < nb; ++g) f[g0 + g] = t.row(t.P, own[g0 + g])[g] / t.z[g];
    }
  });
}

// The backward pass (see becke_partition_backward_cpu) by tasks of kBeckeTask points in
// parallel: pr (ngrid, 3) the points' gradients, ps (ntask, natm, 3) the tasks' nuclear ones.
template <int Scheme>
void backward_tasks(const BeckeAtoms& a, const double* r, const int64_t* own, const double* gg,
                    int64_t ngrid, double* pr, double* ps) {
  const int64_t n = a.natm, ntask = (ngrid + kBeckeTask - 1) / kBeckeTask;
  at::parallel_for(0, ntask, 1, [&](int64_t k0, int64_t k1) {
    BeckeScratch t(n);
    std::vector<double> M(n * n);
    for (int64_t task = k0; task < k1; ++task) {
      double* gR = ps + task * n * 3;
      std::fill(M.begin(), M.end(), 0.0);
      const int64_t end = std::min(ngrid, (task + 1) * kBeckeTask);
      for (int64_t g0 = task * kBeckeTask; g0 < end; g0 += kBeckeBlock) {
        const int64_t nb = std::min(kBeckeBlock, end - g0);
        cells<Scheme>(a, r + 3 * g0, nb, t);
        for (int64_t g = 0; g < nb; ++g)  // grad[g] f_g
          t.gf[g] = gg[g0 + g] * t.row(t.P, own[g0 + g])[g] / t.z[g];
        for (int64_t i = 0; i < n; ++i) {
          const double* P = t.row(t.P, i);
          double *c = t.row(t.c, i), *S = t.row(t.S, i);
          for (int64_t g = 0; g < nb; ++g) {
            c[g] = t.gf[g] * ((i == own[g0 + g] ? 1.0 : 0.0) - P[g] / t.z[g]);
            S[g] = 0.0;
          }
        }
        for (int64_t i = 0; i < n; ++i) {
          const double *di = t.row(t.d, i), *ci = t.row(t.c, i);
          double* Si = t.row(t.S, i);
          for (int64_t j = i + 1; j < n; ++j) {
            const double *dj = t.row(t.d, j), *cj = t.row(t.c, j);
            double* Sj = t.row(t.S, j);
            const int64_t ij = i * n + j;
            const double inv = a.inv_r[ij], aij = a.adjust[ij];
            double m = 0.0;
            for (int64_t g = 0; g < nb; ++g) {
              const double mu = (di[g] - dj[g]) * inv;
              double p, dp;
              becke_switch<Scheme>(mu + aij * (1.0 - mu * mu), p, dp);
              // s_ij + s_ji = 1 + 2 tiny: one of them >= 1/2, so their product does not underflow
              const double sij = 0.5 * (1.0 - p + kBeckeTiny), sji = 0.5 * (1.0 + p + kBeckeTiny);
              const double q = 0.5 * dp * (cj[g] * sij - ci[g] * sji) / (sij * sji) *
                               (1.0 - 2.0 * aij * mu) * inv;
              Si[g] += q;
              Sj[g] -= q;
              m += q * mu;
            }
            M[ij] += m;
          }
        }
        for (int64_t k = 0; k < n; ++k) {
          const double* S = t.row(t.S, k);
          for (int x = 0; x < 3; ++x) {
            const double* u = t.row(t.u, 3 * k + x);
            double sum = 0.0;
            for (int64_t g = 0; g < nb; ++g) {
              const double v = S[g] * u[g];
              pr[3 * (g0 + g) + x] += v;
              sum += v;
            }
            gR[3 * k + x] -= sum;
          }
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
  if (a.scheme == kBeckeStratmann)
    fractions<kBeckeStratmann>(a, r, own, in.ngrid, f);
  else
    fractions<kBeckeOriginal>(a, r, own, in.ngrid, f);
  return out.to(coords.scalar_type());
}

// grad_coords[g] = grad[g] df_g/dr_g, grad_atom_coords[k] = sum_g grad[g] df_g/dR_k, with
//   df = sum_i c_i d ln P_i, c_i = f (delta_{i,owner} - P_i / Z), over the unordered pairs i < j:
//   d ln s_ij = -p' dnu / (2 s_ij), d ln s_ji = +p' dnu / (2 s_ji), dnu = (1 - 2 a_ij mu) dmu,
//   dmu = [(u_i - u_j) . dr - (u_i + mu e_ij) . dR_i + (u_j + mu e_ij) . dR_j] / R_ij.
// With q_ij the coefficient of dmu: per point, S_k = sum_{j > k} q_kj - sum_{i < k} q_ik gives
// dr = sum_k S_k u_k and dR_k -= S_k u_k; the e_ij terms are point-independent vectors, so per
// task of points M_ij = sum_g q_ij mu_ij, folded in once: dR_i -= M_ij e_ij, dR_j += M_ij e_ij.
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
  if (n == 1) return {gr.to(coords.scalar_type()), slots.sum(0).to(coords.scalar_type())};
  if (a.scheme == kBeckeStratmann)
    backward_tasks<kBeckeStratmann>(a, r, own, gg, in.ngrid, pr, ps);
  else
    backward_tasks<kBeckeOriginal>(a, r, own, gg, in.ngrid, pr, ps);
  const at::ScalarType dt = coords.scalar_type();
  return {gr.to(dt), slots.sum(0).to(dt)};
}

}  // namespace cpu
}  // namespace dixc

TORCH_LIBRARY_IMPL(dixc, CPU, m) {
  m.impl("becke_partition", &dixc::cpu::becke_partition_cpu);
  m.impl("becke_partition_backward", &dixc::cpu::becke_partition_backward_cpu);
}

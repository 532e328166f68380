// Packed-basis validation, block screening and the vectorisable per-block AO evaluator.
#include "common/basis.h"

#include "common/checks.h"

namespace dixc {

namespace {

// A primitive with a * r^2 above this everywhere in a block contributes < exp(-60) ~ 1e-26
// relative to its coefficient: skipped for the whole block.
constexpr double kExpCut = 60.0;
// exp(-x) for x > 700 is below 1e-304: returned as 0 to avoid denormal arithmetic.
constexpr double kExpZero = 700.0;

void check_basis_tensor(const at::Tensor& t, at::ScalarType dtype, int64_t dim, const char* op,
                        const char* name) {
  TORCH_CHECK(t.scalar_type() == dtype, op, ": basis tensor '", name, "' must be ", dtype, ", got ",
              t.scalar_type(), " (pack the basis with dixc.basis.pack_basis)");
  TORCH_CHECK(t.dim() == dim, op, ": basis tensor '", name, "' must have ", dim,
              " dimensions, got shape ", t.sizes());
  TORCH_CHECK(t.device().is_cpu(), op, ": basis tensor '", name, "' must be on the CPU here, got ",
              t.device());
  TORCH_CHECK(t.is_contiguous(), op, ": basis tensor '", name, "' must be contiguous");
}

}  // namespace

BasisView make_basis_view(const at::Tensor& bas, const at::Tensor& coord, const at::Tensor& prim,
                          const at::Tensor& c2s, const at::Tensor& rcut, int64_t nao, bool cart,
                          const char* op) {
  check_basis_tensor(bas, at::kLong, 2, op, "bas");
  check_basis_tensor(coord, at::kDouble, 2, op, "bas_coord");
  check_basis_tensor(prim, at::kDouble, 2, op, "prim");
  check_basis_tensor(c2s, at::kDouble, 1, op, "c2s");
  check_basis_tensor(rcut, at::kDouble, 1, op, "rcut");
  const int64_t nshell = bas.size(0);
  TORCH_CHECK(bas.size(1) == 4, op, ": bas must be (nshell, 4) = (l, nprim, prim_offset, ",
              "ao_offset), got ", bas.sizes());
  TORCH_CHECK(coord.size(0) == nshell && coord.size(1) == 3, op, ": bas_coord must be (", nshell,
              ", 3), got ", coord.sizes());
  TORCH_CHECK(prim.size(1) == 2, op, ": prim must be (nprim, 2) = (exponent, coefficient), got ",
              prim.sizes());
  TORCH_CHECK(rcut.size(0) == nshell, op, ": rcut must be (", nshell, ",), got ", rcut.sizes());
  TORCH_CHECK(nao >= 0, op, ": nao must be >= 0, got ", nao);

  BasisView B;
  B.nshell = nshell;
  B.nao = nao;
  B.bas = bas.data_ptr<int64_t>();
  B.coord = coord.data_ptr<double>();
  B.prim = prim.data_ptr<double>();
  B.rcut = rcut.data_ptr<double>();
  B.c2s = c2s.data_ptr<double>();
  B.cart = cart;
  int64_t off = 0;
  for (int l = 0; l <= kMaxL; ++l) {
    B.c2s_offset[l] = off;
    off += ncart(l) * nsph(l);
  }
  int lmax = 0;
  const int64_t nprim_total = prim.size(0);
  for (int64_t s = 0; s < nshell; ++s) {
    const int64_t l = B.bas[4 * s];
    TORCH_CHECK(l >= 0 && l <= kMaxL, op, ": shell ", s, " has angular momentum l = ", l,
                "; dixc supports 0 <= l <= ", kMaxL);
    lmax = std::max<int>(lmax, static_cast<int>(l));
    const int64_t np = B.nprim(s), po = B.prim_offset(s), ao = B.ao_offset(s);
    TORCH_CHECK(np >= 1 && po >= 0 && po + np <= nprim_total, op, ": shell ", s,
                " has nprim = ", np, ", prim_offset = ", po, " outside prim of shape ",
                prim.sizes());
    TORCH_CHECK(ao >= 0 && ao + B.nfunc(s) <= nao, op, ": shell ", s, " (l = ", l,
                ", ao_offset = ", ao, ") does not fit in nao = ", nao);
  }
  if (!cart && nshell > 0) {
    const int64_t need = B.c2s_offset[lmax] + ncart(lmax) * nsph(lmax);
    TORCH_CHECK(c2s.numel() >= need, op, ": c2s has ", c2s.numel(), " entries but l = ", lmax,
                " needs ", need);
  }
  return B;
}

void select_shells(const BasisView& B, const double* points, int64_t np,
                   std::vector<int64_t>& shells) {
  shells.clear();
  if (np == 0) return;
  double lo[3] = {points[0], points[1], points[2]};
  double hi[3] = {points[0], points[1], points[2]};
  for (int64_t j = 1; j < np; ++j) {
    for (int x = 0; x < 3; ++x) {
      lo[x] = std::min(lo[x], points[3 * j + x]);
      hi[x] = std::max(hi[x], points[3 * j + x]);
    }
  }
  for (int64_t s = 0; s < B.nshell; ++s) {
    double d2 = 0.0;
    for (int x = 0; x < 3; ++x) {
      const double c = B.coord[3 * s + x];
      const double d = std::max({0.0, lo[x] - c, c - hi[x]});
      d2 += d * d;
    }
    if (d2 <= B.rcut[s] * B.rcut[s]) shells.push_back(s);
  }
}

template <typename T>
void eval_shells(const BasisView& B, const double* points, int64_t np, int deriv,
                 const int64_t* shells, int64_t nshells, const int64_t* rows, T* out,
                 int64_t cstride, int64_t rstride, AOWorkspace& ws) {
  const int64_t ncomp = n_ao_components(deriv);
  const int64_t npow = kMaxL + 1;
  const size_t need = static_cast<size_t>(np) * (8 + 3 * npow + ncomp * ncart(kMaxL));
  if (ws.buf.size() < need) ws.buf.resize(need);
  double* dx = ws.buf.data();
  double* dy = dx + np;
  double* dz = dy + np;
  double* r2 = dz + np;
  double* R0 = r2 + np;  // sum_p c_p exp(-a_p r^2)
  double* R1 = R0 + np;  // sum_p (-2 a_p) c_p exp(-a_p r^2)
  double* R2 = R1 + np;  // sum_p (4 a_p^2) c_p exp(-a_p r^2)
  double* px = R2 + np;  // px[k * np + j] = dx[j]^k
  double* py = px + npow * np;
  double* pz = py + npow * np;
  double* acc = pz + npow * np;  // (np,) one spherical function
  double* cartbuf = acc + np;    // (ncomp, ncart, np)

  for (int64_t k = 0; k < nshells; ++k) {
    const int64_t s = shells[k];
    const int l = B.l(s);
    const double cx = B.coord[3 * s], cy = B.coord[3 * s + 1], cz = B.coord[3 * s + 2];
    double r2min = 1e300;
    for (int64_t j = 0; j < np; ++j) {
      dx[j] = points[3 * j] - cx;
      dy[j] = points[3 * j + 1] - cy;
      dz[j] = points[3 * j + 2] - cz;
      r2[j] = dx[j] * dx[j] + dy[j] * dy[j] + dz[j] * dz[j];
      r2min = std::min(r2min, r2[j]);
      R0[j] = 0.0;
      R1[j] = 0.0;
      R2[j] = 0.0;
    }
    const double* pr = B.prim + 2 * B.prim_offset(s);
    for (int64_t p = 0; p < B.nprim(s); ++p) {
      const double a = pr[2 * p], c = pr[2 * p + 1];
      if (a * r2min > kExpCut) continue;
      const double m2a = -2.0 * a, a4 = 4.0 * a * a;
      for (int64_t j = 0; j < np; ++j) {
        const double ar = a * r2[j];
        const double e = ar < kExpZero ? c * std::exp(-ar) : 0.0;
        R0[j] += e;
        if (deriv >= 1) R1[j] += m2a * e;
        if (deriv >= 2) R2[j] += a4 * e;
      }
    }
    for (int64_t j = 0; j < np; ++j) {
      px[j] = py[j] = pz[j] = 1.0;
    }
    for (int q = 1; q <= l; ++q) {
      for (int64_t j = 0; j < np; ++j) {
        px[q * np + j] = px[(q - 1) * np + j] * dx[j];
        py[q * np + j] = py[(q - 1) * np + j] * dy[j];
        pz[q * np + j] = pz[(q - 1) * np + j] * dz[j];
      }
    }

    const bool direct = B.cart || l < 2;
    const int nc = ncart(l);
    int ic = 0;
    for (int lx = l; lx >= 0; --lx) {
      for (int ly = l - lx; ly >= 0; --ly, ++ic) {
        const int lz = l - lx - ly;
        const double* X0 = px + lx * np;
        const double* Y0 = py + ly * np;
        const double* Z0 = pz + lz * np;
        const double* X1 = lx >= 1 ? px + (lx - 1) * np : nullptr;
        const double* Y1 = ly >= 1 ? py + (ly - 1) * np : nullptr;
        const double* Z1 = lz >= 1 ? pz + (lz - 1) * np : nullptr;
        const double* X2 = lx >= 2 ? px + (lx - 2) * np : nullptr;
        const double* Y2 = ly >= 2 ? py + (ly - 2) * np : nullptr;
        const double* Z2 = lz >= 2 ? pz + (lz - 2) * np : nullptr;
        double v[kMaxComp];
        for (int64_t j = 0; j < np; ++j) {
          const double xm = X0[j], ym = Y0[j], zm = Z0[j];
          const double M = xm * ym * zm;
          v[0] = M * R0[j];
          if (deriv >= 1) {
            // d/dx (M R) = M_x R0 + x M R1, with M_x = lx x^(lx-1) y^ly z^lz.
            const double Mx = X1 ? lx * X1[j] * ym * zm : 0.0;
            const double My = Y1 ? ly * xm * Y1[j] * zm : 0.0;
            const double Mz = Z1 ? lz * xm * ym * Z1[j] : 0.0;
            const double x = dx[j], y = dy[j], z = dz[j];
            const double r1 = R1[j];
            v[1] = Mx * R0[j] + x * M * r1;
            v[2] = My * R0[j] + y * M * r1;
            v[3] = Mz * R0[j] + z * M * r1;
            if (deriv >= 2) {
              const double r0 = R0[j], rr2 = R2[j];
              const double Mxx = X2 ? lx * (lx - 1) * X2[j] * ym * zm : 0.0;
              const double Myy = Y2 ? ly * (ly - 1) * xm * Y2[j] * zm : 0.0;
              const double Mzz = Z2 ? lz * (lz - 1) * xm * ym * Z2[j] : 0.0;
              const double Mxy = (X1 && Y1) ? lx * ly * X1[j] * Y1[j] * zm : 0.0;
              const double Mxz = (X1 && Z1) ? lx * lz * X1[j] * ym * Z1[j] : 0.0;
              const double Myz = (Y1 && Z1) ? ly * lz * xm * Y1[j] * Z1[j] : 0.0;
              v[4] = Mxx * r0 + (2.0 * x * Mx + M) * r1 + x * x * M * rr2;
              v[5] = Mxy * r0 + (y * Mx + x * My) * r1 + x * y * M * rr2;
              v[6] = Mxz * r0 + (z * Mx + x * Mz) * r1 + x * z * M * rr2;
              v[7] = Myy * r0 + (2.0 * y * My + M) * r1 + y * y * M * rr2;
              v[8] = Myz * r0 + (z * My + y * Mz) * r1 + y * z * M * rr2;
              v[9] = Mzz * r0 + (2.0 * z * Mz + M) * r1 + z * z * M * rr2;
            }
          }
          if (direct) {
            T* o = out + (rows[k] + ic) * rstride + j;
            for (int64_t c = 0; c < ncomp; ++c) o[c * cstride] = static_cast<T>(v[c]);
          } else {
            double* o = cartbuf + ic * np + j;
            for (int64_t c = 0; c < ncomp; ++c) o[c * nc * np] = v[c];
          }
        }
      }
    }
    if (!direct) {
      const int ns = nsph(l);
      const double* tab = B.c2s + B.c2s_offset[l];  // (ncart, nsph)
      for (int64_t c = 0; c < ncomp; ++c) {
        for (int m = 0; m < ns; ++m) {
          T* o = out + c * cstride + (rows[k] + m) * rstride;
          for (int64_t j = 0; j < np; ++j) acc[j] = 0.0;
          for (int i = 0; i < nc; ++i) {
            const double t = tab[i * ns + m];
            if (t == 0.0) continue;
            const double* src = cartbuf + (c * nc + i) * np;
            for (int64_t j = 0; j < np; ++j) acc[j] += t * src[j];
          }
          for (int64_t j = 0; j < np; ++j) o[j] = static_cast<T>(acc[j]);
        }
      }
    }
  }
}

template void eval_shells<double>(const BasisView&, const double*, int64_t, int, const int64_t*,
                                  int64_t, const int64_t*, double*, int64_t, int64_t, AOWorkspace&);
template void eval_shells<float>(const BasisView&, const double*, int64_t, int, const int64_t*,
                                 int64_t, const int64_t*, float*, int64_t, int64_t, AOWorkspace&);

}  // namespace dixc

// Packed-basis validation, block screening and the vectorisable per-block AO evaluator.
#include "common/basis.h"

#include "common/checks.h"

#include <cstring>

namespace dixc {

namespace {

// kExpCut (a primitive skipped for a whole block) and kExpZero live in common/ao_point.h.

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
  int64_t next_ao = 0;  // shells' AOs must follow each other and end exactly at nao
  for (int64_t s = 0; s < nshell; ++s) {
    const int64_t l = B.bas[4 * s];
    TORCH_CHECK(l >= 0 && l <= kMaxL, op, ": shell ", s, " has angular momentum l = ", l,
                "; dixc supports 0 <= l <= ", kMaxL);
    lmax = std::max<int>(lmax, static_cast<int>(l));
    const int64_t np = B.nprim(s), po = B.prim_offset(s), ao = B.ao_offset(s);
    // Compared by subtraction so that offsets near INT64_MAX cannot wrap around.
    TORCH_CHECK(np >= 1 && np <= nprim_total && po >= 0 && po <= nprim_total - np, op, ": shell ",
                s, " has nprim = ", np, ", prim_offset = ", po, " outside prim of shape ",
                prim.sizes());
    TORCH_CHECK(ao == next_ao, op, ": shell ", s, " (l = ", l, ") has ao_offset = ", ao,
                " but the previous shells end at AO ", next_ao,
                " (is the `cart` flag the one the basis was packed with?)");
    TORCH_CHECK(B.nfunc(s) <= nao - ao, op, ": shell ", s, " (l = ", l, ", ao_offset = ", ao,
                ") does not fit in nao = ", nao);
    next_ao = ao + B.nfunc(s);
  }
  TORCH_CHECK(next_ao == nao, op, ": the basis has ", next_ao, " AOs but nao = ", nao,
              " was given (the density matrix / weights do not belong to this basis)");
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
  select_shells_in_box(B, lo, hi, shells);
}

void select_shells_in_box(const BasisView& B, const double lo[3], const double hi[3],
                          std::vector<int64_t>& shells) {
  shells.clear();
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

// exp(x) for x in [-kExpZero, 0], branch-free so that loops over points vectorise:
// x = n ln2 + r, |r| <= ln2 / 2, exp(r) by its Taylor series to degree 13 (truncation < 1e-17
// relative), 2^n assembled in the exponent bits. Agrees with std::exp to a few ulp.
static inline double exp_nonpositive(double x) {
  constexpr double kLog2e = 1.4426950408889634;
  constexpr double kLn2Hi = 6.93147180369123816490e-01;
  constexpr double kLn2Lo = 1.90821492927058770002e-10;
  constexpr double kRound = 6755399441055744.0;  // 1.5 * 2^52: adding it rounds to an integer
  const double n = (x * kLog2e + kRound) - kRound;
  const double r = (x - n * kLn2Hi) - n * kLn2Lo;
  double p = 1.0 / 6227020800.0;  // 1/13!
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  const int64_t bits = static_cast<int64_t>(static_cast<int32_t>(n) + 1023) << 52;
  double scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// R_k[j] += (-2a)^k c exp(-a r2[j]) for k = 0..deriv.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
static void accumulate_radial(int64_t np, const double* __restrict r2, double a, double c,
                              int deriv, double* __restrict R0, double* __restrict R1,
                              double* __restrict R2) {
  const double m2a = -2.0 * a, a4 = 4.0 * a * a;
  for (int64_t j = 0; j < np; ++j) {
    const double ar = std::min(a * r2[j], kExpZero);
    const double e = ar < kExpZero ? c * exp_nonpositive(-ar) : 0.0;
    R0[j] += e;
    if (deriv >= 1) R1[j] += m2a * e;
    if (deriv >= 2) R2[j] += a4 * e;
  }
}

// Cartesian function x^lx y^ly z^lz R(r^2) and its derivatives up to `deriv` at np points.
// P0/P1/P2 hold per axis the monomial x^l, l x^(l-1), l (l-1) x^(l-2) (zeros where absent).
// out[c * ostride + j] receives component c.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
static void cart_function(int64_t np, int deriv, const double* __restrict X0,
                          const double* __restrict Y0, const double* __restrict Z0,
                          const double* __restrict X1, const double* __restrict Y1,
                          const double* __restrict Z1, const double* __restrict X2,
                          const double* __restrict Y2, const double* __restrict Z2,
                          const double* __restrict dx, const double* __restrict dy,
                          const double* __restrict dz, const double* __restrict R0,
                          const double* __restrict R1, const double* __restrict R2,
                          double* __restrict out, int64_t ostride) {
  if (deriv == 0) {
    for (int64_t j = 0; j < np; ++j) out[j] = X0[j] * Y0[j] * Z0[j] * R0[j];
    return;
  }
  double* __restrict o0 = out;
  double* __restrict o1 = out + ostride;
  double* __restrict o2 = out + 2 * ostride;
  double* __restrict o3 = out + 3 * ostride;
  if (deriv == 1) {
    for (int64_t j = 0; j < np; ++j) {
      // d/dx (M R) = M_x R0 + x M R1 with M = x^lx y^ly z^lz.
      const double xm = X0[j], ym = Y0[j], zm = Z0[j];
      const double M = xm * ym * zm, r0 = R0[j], mr1 = M * R1[j];
      o0[j] = M * r0;
      o1[j] = X1[j] * ym * zm * r0 + dx[j] * mr1;
      o2[j] = xm * Y1[j] * zm * r0 + dy[j] * mr1;
      o3[j] = xm * ym * Z1[j] * r0 + dz[j] * mr1;
    }
    return;
  }
  double* __restrict o4 = out + 4 * ostride;
  double* __restrict o5 = out + 5 * ostride;
  double* __restrict o6 = out + 6 * ostride;
  double* __restrict o7 = out + 7 * ostride;
  double* __restrict o8 = out + 8 * ostride;
  double* __restrict o9 = out + 9 * ostride;
  for (int64_t j = 0; j < np; ++j) {
    const double xm = X0[j], ym = Y0[j], zm = Z0[j];
    const double x = dx[j], y = dy[j], z = dz[j];
    const double r0 = R0[j], r1 = R1[j], r2 = R2[j];
    const double M = xm * ym * zm;
    const double Mx = X1[j] * ym * zm, My = xm * Y1[j] * zm, Mz = xm * ym * Z1[j];
    o0[j] = M * r0;
    o1[j] = Mx * r0 + x * M * r1;
    o2[j] = My * r0 + y * M * r1;
    o3[j] = Mz * r0 + z * M * r1;
    o4[j] = X2[j] * ym * zm * r0 + (2.0 * x * Mx + M) * r1 + x * x * M * r2;
    o5[j] = X1[j] * Y1[j] * zm * r0 + (y * Mx + x * My) * r1 + x * y * M * r2;
    o6[j] = X1[j] * ym * Z1[j] * r0 + (z * Mx + x * Mz) * r1 + x * z * M * r2;
    o7[j] = xm * Y2[j] * zm * r0 + (2.0 * y * My + M) * r1 + y * y * M * r2;
    o8[j] = xm * Y1[j] * Z1[j] * r0 + (z * My + y * Mz) * r1 + y * z * M * r2;
    o9[j] = xm * ym * Z2[j] * r0 + (2.0 * z * Mz + M) * r1 + z * z * M * r2;
  }
}

template <typename T>
void eval_shells(const BasisView& B, const double* points, int64_t np, int deriv,
                 const int64_t* shells, int64_t nshells, const int64_t* rows, T* out,
                 int64_t cstride, int64_t rstride, AOWorkspace& ws) {
  const int64_t ncomp = n_ao_components(deriv);
  const int64_t npow = kMaxL + 1;
  // Per axis: powers p[q] = x^q, first-derivative factors q x^(q-1), second q (q-1) x^(q-2).
  const size_t need = static_cast<size_t>(np) * (9 + 9 * npow + ncomp * ncart(kMaxL));
  if (ws.buf.size() < need) ws.buf.resize(need);
  double* dx = ws.buf.data();
  double* dy = dx + np;
  double* dz = dy + np;
  double* r2 = dz + np;
  double* R0 = r2 + np;  // sum_p c_p exp(-a_p r^2)
  double* R1 = R0 + np;  // sum_p (-2 a_p) c_p exp(-a_p r^2)
  double* R2 = R1 + np;  // sum_p (4 a_p^2) c_p exp(-a_p r^2)
  double* acc = R2 + np;
  double* zeros = acc + np;
  double* pw[3][3];  // pw[axis][order] -> (npow, np)
  {
    double* p = zeros + np;
    for (int ax = 0; ax < 3; ++ax)
      for (int o = 0; o < 3; ++o, p += npow * np) pw[ax][o] = p;
  }
  double* cartbuf = pw[2][2] + npow * np;  // (ncomp, ncart, np)
  for (int64_t j = 0; j < np; ++j) zeros[j] = 0.0;
  const double* d[3] = {dx, dy, dz};

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
      accumulate_radial(np, r2, a, c, deriv, R0, R1, R2);
    }
    for (int ax = 0; ax < 3; ++ax) {
      double* P0 = pw[ax][0];
      double* P1 = pw[ax][1];
      double* P2 = pw[ax][2];
      for (int64_t j = 0; j < np; ++j) {
        P0[j] = 1.0;
        P1[j] = 0.0;
        P2[j] = 0.0;
      }
      for (int q = 1; q <= l; ++q) {
        for (int64_t j = 0; j < np; ++j) {
          P0[q * np + j] = P0[(q - 1) * np + j] * d[ax][j];
          P1[q * np + j] = q * P0[(q - 1) * np + j];
          P2[q * np + j] = q >= 2 ? q * (q - 1) * P0[(q - 2) * np + j] : 0.0;
        }
      }
    }
    const int nc = ncart(l);
    int ic = 0;
    for (int lx = l; lx >= 0; --lx) {
      for (int ly = l - lx; ly >= 0; --ly, ++ic) {
        const int lz = l - lx - ly;
        cart_function(np, deriv, pw[0][0] + lx * np, pw[1][0] + ly * np, pw[2][0] + lz * np,
                      pw[0][1] + lx * np, pw[1][1] + ly * np, pw[2][1] + lz * np,
                      pw[0][2] + lx * np, pw[1][2] + ly * np, pw[2][2] + lz * np, dx, dy, dz, R0,
                      R1, R2, cartbuf + ic * np, nc * np);
      }
    }
    if (B.cart || l < 2) {
      for (int64_t c = 0; c < ncomp; ++c) {
        for (int i = 0; i < nc; ++i) {
          const double* src = cartbuf + (c * nc + i) * np;
          T* o = out + c * cstride + (rows[k] + i) * rstride;
          for (int64_t j = 0; j < np; ++j) o[j] = static_cast<T>(src[j]);
        }
      }
    } else {
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

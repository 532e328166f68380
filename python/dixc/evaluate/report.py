"""Markdown / JSON reports, comparison tables and plots of evaluation results."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from dixc.evaluate.core import MEH, EvaluationResult
from dixc.evaluate.tddft import HARTREE2EV

PLOTS = (
    "energy_parity.png",
    "error_histograms.png",
    "density_error_vs_size.png",
    "scf_iterations.png",
    "excitation_parity.png",
)


def _f(x: Any, fmt: str = ".3f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, fmt)


def _as_results(results) -> list[EvaluationResult]:
    if isinstance(results, EvaluationResult):
        return [results]
    return [
        r if isinstance(r, EvaluationResult) else EvaluationResult.from_dict(r) for r in results
    ]


def comparison_table(results: Sequence[EvaluationResult] | EvaluationResult) -> str:
    """One Markdown row per result: accuracy, density, hybrid-SCF savings and TDDFT errors.

    Columns: converged / evaluated molecules; total-energy MAE, E_rho MAE, mean density-driven
    error (mEh); dipole MAE (D); mean L2 density error; mean B3LYP SCF iterations from the
    default, PBE and learned guesses and the learned guess's saving vs default and vs PBE (%);
    TDDFT (Casida) and TDA MAE over all states (eV); with ``forces``, the mean over molecules of
    the mean absolute force-component error (mEh/Bohr).
    """
    rs = _as_results(results)
    head = [
        "functional", "SCF ok", "E MAE (mEh)", "E_rho MAE (mEh)", "dd-err (mEh)", "dipole MAE (D)",
        "L2[rho]", "B3LYP it. default / PBE / learned", "saving vs default / PBE (%)",
        "TDDFT MAE (eV)", "TDA MAE (eV)",
    ]  # fmt: skip
    forces = any("forces" in r.summary for r in rs)
    if forces:
        head.append("force MAE (mEh/Bohr)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rs:
        s = r.summary
        h = s.get("hybrid", {})

        def cyc(g: str, h=h) -> str:
            return _f(h.get(g, {}).get("cycles", {}).get("mean"), ".1f") if g in h else "-"

        td = s.get("tddft", {})
        row = [
            r.label,
            f"{s['n_scf_converged']}/{s['n_molecules']}",
            _f(s.get("energy_mae_mEh")),
            _f(s.get("e_rho_mae_mEh")),
            _f(s.get("density_driven_mean_mEh")),
            _f(s.get("dipole_mae_D"), ".4f"),
            _f(s.get("l2_rho_mean"), ".2e"),
            f"{cyc('default')} / {cyc('pbe')} / {cyc('learned')}" if h else "-",
            f"{_f(h.get('learned_vs_default_cycles_pct'), '.1f')} / "
            f"{_f(h.get('learned_vs_pbe_cycles_pct'), '.1f')}"
            if h
            else "-",
            _f(td.get("rpa", {}).get("mae_eV")),
            _f(td.get("tda", {}).get("mae_eV")),
        ]
        if forces:
            row.append(_f(s.get("forces", {}).get("mae_mEh_bohr")))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _molecule_table(r: EvaluationResult) -> str:
    head = [
        "id", "formula", "nao", "SCF", "E - E_B3LYP (mEh)", "E_rho err (mEh)", "dd-err (mEh)",
        "dipole err (D)", "L2[rho]", "B3LYP it. def/PBE/learned", "TDDFT err (eV)",
    ]  # fmt: skip
    forces = any("forces" in m for m in r.molecules)
    if forces:
        head += ["force MAE / max (mEh/Bohr)"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in r.molecules:
        scf = m.get("scf", {})
        met = m.get("metrics", {})
        hy = m.get("hybrid", {})
        td = m.get("tddft", {}).get("rpa", {})
        tderr = "-"
        if td.get("ref"):
            tderr = ", ".join(
                f"{HARTREE2EV * (a - b):+.3f}" for a, b in zip(td["e"], td["ref"], strict=False)
            )
        out.append(
            "| " + " | ".join([
                m["id"], str(m.get("formula", "")), str(m.get("nao", "")),
                f"{scf.get('strategy', '-')} ({scf.get('total_cycles', '-')})"
                if scf.get("converged") else "**failed**",
                _f(MEH * m["energy_error"]) if "energy_error" in m else "-",
                _f(MEH * met["e_rho_error"]) if met else "-",
                _f(MEH * met["density_driven_error"]) if met else "-",
                _f(met.get("dipole_error"), ".4f") if met else "-",
                _f(met.get("l2_rho"), ".2e") if met else "-",
                "/".join(str(hy[g]["cycles"]) for g in ("default", "pbe", "learned") if g in hy)
                or "-",
                tderr,
                *([_force_cell(m.get("forces"))] if forces else []),
            ]) + " |"
        )  # fmt: skip
    return "\n".join(out) + "\n"


def _force_cell(fo: Mapping[str, Any] | None) -> str:
    if not fo:
        return "-"
    return f"{_f(MEH * fo['mae'])} / {_f(MEH * fo['maxae'])}"


def _hybrid_section(r: EvaluationResult) -> str:
    h = r.summary.get("hybrid")
    if not h:
        return "Hybrid SCF: not run.\n"
    out = [
        "| guess | iterations mean | median | min | max | B3LYP wall mean (s) | guess cost "
        "mean (s) | converged |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for g in h["guesses"]:
        x = h[g]
        c = x["cycles"]
        out.append(
            f"| {g} | {_f(c['mean'], '.2f')} | {_f(c['median'], '.1f')} | {c['min']:.0f} | "
            f"{c['max']:.0f} | {_f(x['wall']['mean'], '.3f')} | "
            f"{_f(x['guess_wall']['mean'], '.3f')} | {x['n_converged']}/{h['n']} |"
        )
    out.append("")
    out.append(
        f"Learned guess vs default: {_f(h['learned_vs_default_cycles_pct'], '.1f')}% fewer "
        f"iterations ({_f(h['learned_vs_default_wall_pct'], '.1f')}% less B3LYP wall time); "
        f"vs PBE density: {_f(h['learned_vs_pbe_cycles_pct'], '.1f')}% fewer iterations "
        f"({_f(h['learned_vs_pbe_wall_pct'], '.1f')}% less wall time); PBE vs default: "
        f"{_f(h['pbe_vs_default_cycles_pct'], '.1f')}%. Guess costs (learned or PBE SCF) are "
        "not included in the B3LYP wall times."
    )
    return "\n".join(out) + "\n"


def _tddft_section(r: EvaluationResult) -> str:
    t = r.summary.get("tddft")
    if not t:
        return "TDDFT: not run (or no stored reference excitations).\n"
    out = ["| method | state | MAE (eV) | ME (eV) | molecules |", "|---|---|---|---|---|"]
    for method, x in t.items():
        for k, (mae, me, n) in enumerate(
            zip(x["mae_eV_per_state"], x["me_eV_per_state"], x["n_per_state"], strict=True)
        ):
            out.append(f"| {method.upper()} | S{k + 1} | {mae:.3f} | {me:+.3f} | {n} |")
        out.append(f"| {method.upper()} | all | {x['mae_eV']:.3f} | {x['me_eV']:+.3f} | |")
    return "\n".join(out) + "\n"


def _failures_section(r: EvaluationResult) -> str:
    if not r.failures:
        return "No failures.\n"
    out = ["| id | stage | error | reason |", "|---|---|---|---|"]
    for f in r.failures:
        reason = str(f.get("reason", "")).replace("|", "\\|").replace("\n", " ")
        out.append(f"| {f['id']} | {f['stage']} | {f.get('error_type', '')} | {reason} |")
    return "\n".join(out) + "\n"


def markdown_report(results, plots: Sequence[str] = ()) -> str:
    """The full Markdown report of one or several results."""
    rs = _as_results(results)
    out = ["# dixc evaluation report", ""]
    if rs:
        d = rs[0].data
        cfg = d.get("reference_config", {})
        out += [
            f"Data: {', '.join(d.get('files', []))} ({d.get('n_selected')} of "
            f"{d.get('n_available')} molecules evaluated). Reference: {cfg.get('xc')}/"
            f"{cfg.get('basis')}, grid level {cfg.get('grid_level')}, "
            f"{'density-fitted' if cfg.get('density_fit') else 'exact'} Coulomb/exchange.",
            "",
        ]
    out += ["## Comparison", "", comparison_table(rs)]
    out += [
        "E MAE: self-consistent total energy vs B3LYP; E_rho: error of the mean-field "
        "(external + Hartree) energy of the learned density; dd-err: density-driven error "
        "E_B3LYP[D_theta] - E_B3LYP[D*] (mean); L2[rho] = sqrt(int (rho_theta - rho*)^2) "
        "(e Bohr^-3/2, mean); B3LYP it.: mean PySCF B3LYP SCF iterations from each initial "
        "density; TDDFT/TDA MAE: lowest singlets vs the stored B3LYP TDDFT/TDA, all states; "
        "force MAE (with --forces): analytic nuclear gradient of the learned SCF energy vs the "
        "reference functional's at the stored orbitals (grid response in both), mean absolute "
        "component error.",
        "",
    ]
    if plots:
        out += ["## Plots", ""] + [f"![{os.path.basename(p)}]({p})" for p in plots] + [""]
    for r in rs:
        out += [f"## {r.label}", ""]
        fi = r.functional
        out += [
            f"Functional: `{fi.get('source')}` (architecture {fi.get('architecture')}, "
            f"{fi.get('xctype')}, {fi.get('n_params')} parameters).",
            "",
        ]
        if fi.get("extra"):
            out += ["Training metadata: `" + json.dumps(fi["extra"], sort_keys=True) + "`", ""]
        out += [
            "Settings: `" + json.dumps(r.settings, sort_keys=True) + "`",
            "",
            "Wall time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in r.timings.items()),
            "",
            "### Molecules",
            "",
            _molecule_table(r),
            "### Hybrid SCF from the learned density",
            "",
            _hybrid_section(r),
            "### TDDFT",
            "",
            _tddft_section(r),
            "### Failures",
            "",
            _failures_section(r),
        ]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Plots


def make_plots(results, out_dir: str) -> list[str]:
    """Writes the five plots (matplotlib, Agg) into ``out_dir``; returns their file names."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rs = _as_results(results)
    os.makedirs(out_dir, exist_ok=True)
    written = []

    def ok(r: EvaluationResult) -> list[Mapping[str, Any]]:
        return [m for m in r.molecules if "energy_error" in m]

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, name), dpi=110)
        plt.close(fig)
        written.append(name)

    # 1. energy parity
    fig, ax = plt.subplots(figsize=(5, 5))
    lo, hi = math.inf, -math.inf
    for r in rs:
        ms = ok(r)
        x = [m["e_ref"] for m in ms]
        y = [m["e_tot"] for m in ms]
        if x:
            ax.scatter(x, y, s=18, label=r.label)
            lo, hi = min(lo, *x, *y), max(hi, *x, *y)
    if lo < hi:
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel("E B3LYP (Eh)")
    ax.set_ylabel("E learned, self-consistent (Eh)")
    ax.set_title("Total energies")
    ax.legend(fontsize=7)
    save(fig, PLOTS[0])

    # 2. error histograms
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    keys = [
        ("E - E_B3LYP (mEh)", lambda m: MEH * m["energy_error"]),
        ("E_rho error (mEh)", lambda m: MEH * m["metrics"]["e_rho_error"]),
        ("dipole error (D)", lambda m: m["metrics"]["dipole_error"]),
    ]
    for ax, (name, fn) in zip(axes, keys, strict=True):
        for r in rs:
            v = [fn(m) for m in ok(r) if "metrics" in m]
            if v:
                ax.hist(v, bins=min(20, max(3, len(v))), alpha=0.5, label=r.label)
        ax.set_xlabel(name)
        ax.set_ylabel("molecules")
    axes[0].legend(fontsize=7)
    save(fig, PLOTS[1])

    # 3. density error vs molecule size
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for r in rs:
        ms = [m for m in ok(r) if "metrics" in m]
        ax.scatter([m["nelectron"] for m in ms], [m["metrics"]["l2_rho"] for m in ms], s=18,
                   label=r.label)  # fmt: skip
    ax.set_xlabel("electrons")
    ax.set_ylabel("L2 density error (e Bohr^-3/2)")
    ax.set_title("Density error vs molecule size")
    ax.legend(fontsize=7)
    save(fig, PLOTS[2])

    # 4. SCF iterations of the hybrid SCF from each guess
    fig, ax = plt.subplots(figsize=(max(5, 2.2 * len(rs) + 2), 4))
    data, labels, colors = [], [], []
    palette = {"default": "tab:gray", "pbe": "tab:blue", "learned": "tab:orange"}
    for r in rs:
        hy = [m["hybrid"] for m in ok(r) if "hybrid" in m]
        for g in ("default", "pbe", "learned"):
            v = [h[g]["cycles"] for h in hy if g in h]
            if v:
                data.append(v)
                labels.append(f"{r.label}\n{g}")
                colors.append(palette[g])
    if data:
        bp = ax.boxplot(data, patch_artist=True)
        for patch, c in zip(bp["boxes"], colors, strict=True):
            patch.set_facecolor(c)
            patch.set_alpha(0.6)
        ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=7)
    ax.set_ylabel("B3LYP SCF iterations")
    ax.set_title("Hybrid SCF iterations by initial density")
    save(fig, PLOTS[3])

    # 5. excitation-energy parity
    fig, ax = plt.subplots(figsize=(5, 5))
    lo, hi = math.inf, -math.inf
    for r in rs:
        x, y = [], []
        for m in ok(r):
            td = m.get("tddft", {}).get("rpa", {})
            for a, b in zip(td.get("e", []), td.get("ref", []), strict=False):
                x.append(HARTREE2EV * b)
                y.append(HARTREE2EV * a)
        if x:
            ax.scatter(x, y, s=18, label=r.label)
            lo, hi = min(lo, *x, *y), max(hi, *x, *y)
    if lo < hi:
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel("B3LYP TDDFT (eV)")
    ax.set_ylabel("learned TDDFT (eV)")
    ax.set_title("Singlet excitation energies")
    ax.legend(fontsize=7)
    save(fig, PLOTS[4])
    return written


def write_report(results, out_dir: str | os.PathLike, plots: bool = True) -> dict[str, str]:
    """Writes ``report.md``, ``report.json`` (every number and config) and the plots.

    Args:
        results: one or several :class:`EvaluationResult` (or their dicts).
        out_dir: report directory (created).
        plots: also write the PNG plots (``plots/``).

    Returns:
        ``{"markdown": path, "json": path, "plots": [paths...]}``.
    """
    from dixc.fileio import atomic_path

    rs = _as_results(results)
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    plot_files: list[str] = []
    if plots:
        plot_files = [
            os.path.join("plots", p) for p in make_plots(rs, os.path.join(out_dir, "plots"))
        ]
    jpath = os.path.join(out_dir, "report.json")
    mpath = os.path.join(out_dir, "report.md")
    payload = {
        "results": [r.to_dict() for r in rs],
        "comparison": [{"label": r.label, **r.summary} for r in rs],
    }
    with atomic_path(jpath) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=1, allow_nan=True)
    with atomic_path(mpath) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(markdown_report(rs, plot_files))
    return {
        "markdown": mpath,
        "json": jpath,
        "plots": [os.path.join(out_dir, p) for p in plot_files],
    }


def load_report(path: str | os.PathLike) -> list[EvaluationResult]:
    """Reads the results back from a ``report.json`` (or a report directory)."""
    p = os.fspath(path)
    if os.path.isdir(p):
        p = os.path.join(p, "report.json")
    with open(p, encoding="utf-8") as fh:
        payload = json.load(fh)
    return [EvaluationResult.from_dict(d) for d in payload["results"]]

"""The ``dixc`` command line: a thin shell over the Python API.

Subcommands: ``demo`` (the end-to-end pipeline; remaining arguments go to ``dixc.demo``),
``info`` (build information), ``generate`` (reference data, see ``docs/generate.md``), ``train``
(DI-Loss distillation, ``dixc.train``), ``evaluate`` (metrics and reports, ``dixc.evaluate``) and
``run`` (a functional on xyz molecules, ``dixc.run``). ``demo``, ``train``, ``evaluate`` and
``run`` own their argument parsers (``MODULE.main(argv)``).
"""

from __future__ import annotations

import argparse
import sys

_OWN_PARSER = {
    "demo": "dixc.demo",
    "train": "dixc.train",
    "evaluate": "dixc.evaluate",
    "run": "dixc.run",
}


def _parser() -> argparse.ArgumentParser:
    from dixc import generate

    p = argparse.ArgumentParser(prog="dixc", description="Derivative-Informed XC functionals")
    sub = p.add_subparsers(
        dest="command", required=True, metavar="{demo,info,generate,train,evaluate,run}"
    )
    sub.add_parser(
        "demo", help="SCF through dixc vs PySCF (options: dixc demo --help)", add_help=False
    )
    info = sub.add_parser(
        "info",
        help="build information, or what a functional file holds (dixc info FILE ...)",
        description="Without arguments: how dixc was built. With functional files or training "
        "directories: architecture, size, how and on what each was trained.",
    )
    info.add_argument("functionals", nargs="*", help="functional files or training directories")
    sub.add_parser(
        "train", help="train a functional with the DI-Loss (dixc train --help)", add_help=False
    )
    sub.add_parser(
        "evaluate", help="accuracy metrics and reports (dixc evaluate --help)", add_help=False
    )
    sub.add_parser(
        "run",
        help="a functional on your xyz molecules: SCF, properties, TDDFT (dixc run --help)",
        add_help=False,
    )
    g = sub.add_parser(
        "generate",
        help="hybrid-DFT reference data with gradient and Hessian targets (HDF5)",
        description=generate.__doc__.splitlines()[0],
    )
    generate.add_arguments(g)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # `dixc demo|train|evaluate|run ...` hands everything after the command to MODULE.main unparsed.
    if argv and argv[0] in _OWN_PARSER:
        import importlib

        return importlib.import_module(_OWN_PARSER[argv[0]]).main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "info":
        if not args.functionals:
            from dixc import ops

            print(ops.build_info())
            return 0
        return _describe(args.functionals)
    from dixc import generate

    return generate.main(args)


def describe_functional(spec: str) -> str:
    """What a functional file (or training directory, or classical name) holds, as text."""
    from dixc.evaluate.core import load_checkpoint

    _, info = load_checkpoint(spec)  # verifies the file (checksum, architecture, shapes)
    kind = "local" if info["is_local"] else "nonlocal"
    lines = [
        f"{info['source']}",
        f"  architecture  {info['architecture']} ({info['xctype']}, {kind}), "
        f"{info['n_params']:,} parameters",
    ]
    if info["path"] is None:
        return "\n".join([*lines, "  classical functional (no trained parameters)"])
    cfg = ", ".join(f"{k}={v}" for k, v in sorted(info["config"].items()))
    lines.append(f"  config        {cfg}")
    lines.append(f"  written by    dixc {info['dixc_version']}, torch {info['torch_version']}")
    ex = info["extra"]
    if ex:
        lines.append(
            f"  trained       preset {ex.get('preset', '?')}, step {ex.get('step', '?')} (epoch "
            f"{ex.get('epoch', '?')}), seed {ex.get('seed', '?')}"
        )
        lines.append(
            f"  data          {ex.get('data', '?')} (reference config "
            f"{ex.get('reference_config_hash', '?')})"
        )
        v = ex.get("validation") or {}
        if v:
            lines.append(
                f"  validation    E MAE {v.get('e_mae', float('nan')):.3f} mEh (at D* "
                f"{v.get('e_mae_nscf', float('nan')):.3f}), rho L2 "
                f"{v.get('rho_l2', float('nan')):.3e}, {v.get('n', '?')} molecules, "
                f"{v.get('nonconv', 0)} SCF not converged"
            )
    return "\n".join(lines)


def _describe(specs: list[str]) -> int:
    from dixc.evaluate.core import CheckpointError

    status = 0
    for spec in specs:
        try:
            print(describe_functional(spec))
        except CheckpointError as err:
            print(f"dixc info: error: {err}", file=sys.stderr)
            status = 2
    return status


if __name__ == "__main__":
    raise SystemExit(main())

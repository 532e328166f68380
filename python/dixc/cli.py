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
    sub.add_parser("info", help="build information")
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
        from dixc import ops

        print(ops.build_info())
        return 0
    from dixc import generate

    return generate.main(args)


if __name__ == "__main__":
    raise SystemExit(main())

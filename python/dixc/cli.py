"""The ``dixc`` command line: a thin shell over the Python API."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="dixc", description="Derivative-Informed XC functionals")
    p.add_argument(
        "command",
        choices=["demo", "info"],
        help="demo: SCF through dixc vs PySCF; info: build information",
    )
    args, rest = p.parse_known_args(argv)
    if args.command == "info":
        from dixc import ops

        print(ops.build_info())
        return 0
    from dixc import demo

    return demo.main(rest)


if __name__ == "__main__":
    raise SystemExit(main())

"""Validate params.yaml without running anything: `python -m genladder.check [PATH]`.

Exits 0 and prints a summary when the file is valid, 2 with one line per problem otherwise.
"""

from __future__ import annotations

import argparse
import sys

from genladder.config import PARAMS_FILE, ParamsError, load_params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genladder.check", description=__doc__.splitlines()[0])
    parser.add_argument("params", nargs="?", default=PARAMS_FILE, help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{args.params} is valid: data {params.data.source.value} at {params.data.image_size}x"
        f"{params.data.image_size}, {params.data.levels} levels; {len(params.variants)} variants, "
        f"{len(params.samplers)} samplers"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

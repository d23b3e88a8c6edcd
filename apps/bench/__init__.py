"""`osteotel bench NAME`: figures measured on this machine, beside a baseline from the same run.

These machines are noisy, so no figure stands alone: every benchmark also measures a baseline
(a plain-numpy reference, a naive implementation, a C client) in the same process and prints
the ratio. Tests never assert timings; they only run benchmarks on tiny inputs to show they work.

A benchmark is a module here with two functions:
    configure(parser: argparse.ArgumentParser) -> None   its options
    run(args: argparse.Namespace) -> dict[str, object]   the figures, flat, unit-suffixed keys
`osteotel bench NAME` prints them as `key value` lines; `--json` prints one JSON object.
"""

import argparse
import importlib
import json
from types import ModuleType

__all__ = ["BENCHMARKS", "add_parsers", "print_figures"]

BENCHMARKS: dict[str, str] = {
    "dsp": "apps.bench.dsp",
    "lineproto": "apps.bench.lineproto",
    "ingest": "apps.bench.ingest",
    "replay": "apps.bench.replay",
    "recovery": "apps.bench.recovery",
    "restart": "apps.bench.restart",
    "receive": "apps.bench.receive",
    "storage": "apps.bench.storage",
}
"""Benchmark name to the module that measures it."""


def _module(name: str) -> ModuleType:
    return importlib.import_module(BENCHMARKS[name])


def add_parsers(bench: argparse.ArgumentParser) -> None:
    """Add one sub-command per benchmark under `osteotel bench`."""
    names = bench.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name in BENCHMARKS:
        module = _module(name)
        parser = names.add_parser(name, help=(module.__doc__ or name).splitlines()[0])
        parser.add_argument("--json", action="store_true", help="print one JSON object")
        module.configure(parser)


def print_figures(figures: dict[str, object], *, as_json: bool) -> None:
    """Print a benchmark's figures as `key value` lines or as one JSON object."""
    if as_json:
        print(json.dumps(figures, sort_keys=True))
        return
    width = max((len(key) for key in figures), default=0)
    for key, value in figures.items():
        text = f"{value:,.4g}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {text}")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark named in `args.benchmark` and print its figures."""
    figures = _module(args.benchmark).run(args)
    print_figures(figures, as_json=args.json)
    return 0

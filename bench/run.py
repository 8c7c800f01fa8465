"""Run every ``bench/bench_*.py`` and write ``bench/results.json``.

Usage: ``python bench/run.py [--quick] [--only NAME ...] [--out PATH]``.

Each module's ``run(quick)`` returns rows comparing our figure with a baseline measured in the same
run. A module that fails is reported as such (its error printed) and the others still run; the
exit status is 1 when any module failed, so a broken benchmark never looks like a result.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost,::1")

from common import Row  # noqa: E402


def _modules(only: list[str]) -> list[str]:
    names = sorted(p.stem for p in HERE.glob("bench_*.py"))
    if only:
        names = [n for n in names if any(o in n for o in only)]
    return names


def _table(rows: list[Row]) -> str:
    head = (
        f"{'benchmark':<28} {'value':>14} {'baseline':>14} {'unit':<10} "
        f"{'ratio':>7} {'goal':>7}  met"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        met = r.met()
        mark = "yes" if met else ("-" if met is None else "NO")
        lines.append(
            f"{r.name:<28} {r.value:>14.4g} {r.baseline_value:>14.4g} {r.unit:<10} "
            f"{r.ratio:>7.3f} {r.goal:>7}  {mark}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller loads")
    parser.add_argument("--only", nargs="*", default=[], help="run modules whose name has this")
    parser.add_argument("--out", default=str(HERE / "results.json"))
    args = parser.parse_args(argv)

    rows: list[Row] = []
    failed: list[str] = []
    for name in _modules(args.only):
        start = time.perf_counter()
        print(f"running {name} ...", file=sys.stderr, flush=True)
        try:
            module = importlib.import_module(name)
            got = module.run(quick=args.quick)
        except Exception:  # one broken benchmark must not hide the others
            traceback.print_exc()
            failed.append(name)
            continue
        rows.extend(got)
        print(f"  {name}: {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)

    Path(args.out).write_text(json.dumps([r.to_dict() for r in rows], indent=2) + "\n")
    print(_table(rows))
    print(json.dumps([r.to_dict() for r in rows]))
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

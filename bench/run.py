"""Run every ``bench/bench_*.py`` and write ``bench/results.json``.

Usage: ``python bench/run.py [--quick] [--only NAME ...] [--out PATH]``.

Each module's ``run(quick)`` returns rows comparing our figure with a baseline measured in the same
run. Every module runs in a fresh child process, so heap size, GC generations, threads and event
loop state left by one benchmark never skew the next (measured: the workflow benchmark read 1.14
after the others in one process, 0.99-1.05 alone). A module that fails or exceeds
``--module-timeout`` is reported as such (its error printed) and the others still run; the exit
status is 1 when any module failed, so a broken benchmark never looks like a result.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
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


def _run_child(name: str, quick: bool, out: Path) -> int:
    """In the child process: run one module and write its rows as JSON to ``out``."""
    try:
        rows = importlib.import_module(name).run(quick=quick)
    except Exception:
        traceback.print_exc()
        return 1
    out.write_text(json.dumps([r.to_dict() for r in rows]))
    return 0


def _run_module(name: str, quick: bool, timeout: float) -> list[Row] | None:
    """Run one module in a fresh interpreter; its rows, or None when it failed."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--out", str(out)]
        if quick:
            cmd.append("--quick")
        try:
            done = subprocess.run(cmd, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            print(f"{name}: no result after {timeout:.0f}s", file=sys.stderr)
            return None
        if done.returncode != 0 or not out.exists():
            return None
        fields = set(Row.__dataclass_fields__)
        return [
            Row(**{k: v for k, v in d.items() if k in fields}) for d in json.loads(out.read_text())
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller loads")
    parser.add_argument("--only", nargs="*", default=[], help="run modules whose name has this")
    parser.add_argument("--out", default=str(HERE / "results.json"))
    parser.add_argument("--module-timeout", type=float, default=300, help="seconds per module")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _run_child(args.child, args.quick, Path(args.out))

    rows: list[Row] = []
    failed: list[str] = []
    for name in _modules(args.only):
        start = time.perf_counter()
        print(f"running {name} ...", file=sys.stderr, flush=True)
        got = _run_module(name, args.quick, args.module_timeout)
        if got is None:  # one broken benchmark must not hide the others
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

"""The attack suite's figures: printed at the end of the run (``pytest -s``) and written as JSON
to ``$ATTACK_FIGURES`` when it is set (docs/reliability.md quotes them)."""

from __future__ import annotations

import json
import os
from typing import Any

from attack_support import FIGURES


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    if not FIGURES:
        return
    path = os.environ.get("ATTACK_FIGURES")
    if path:
        with open(path, "w") as out:
            json.dump(dict(sorted(FIGURES.items())), out, indent=1)
    if session.config.getoption("capture") == "no":
        width = max(map(len, FIGURES))
        print("\nattack suite figures:")
        for name, value in sorted(FIGURES.items()):
            print(f"  {name:<{width}}  {value:,}")

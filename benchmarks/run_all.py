"""Run every benchmark in turn (`make bench`); each prints its table and writes benchmarks/results/*.json."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from pathlib import Path


def main() -> int:
    names = sorted(
        m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.name not in {"run_all", "__main__"}
    )
    failed = []
    for name in names:
        print(f"\n=== benchmarks.{name}", flush=True)
        started = time.perf_counter()
        module = importlib.import_module(f"benchmarks.{name}")
        try:
            module.main()
        except Exception as error:  # one broken benchmark should not hide the others' figures
            failed.append(name)
            print(f"benchmarks.{name} failed: {error!r}", file=sys.stderr)
        print(f"=== benchmarks.{name}: {time.perf_counter() - started:.0f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""`make bench` / `python -m benchmarks [name ...] [-- args]`: run Cove's benchmarks and print their figures.

Each benchmark is a module of this package with `main(argv) -> dict`; with no name, all of BENCHMARKS run in order.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path

BENCHMARKS = ["devcloud_servers", "nats_sync", "clusters", "api", "cluster_scale", "certs", "accounting", "replay", "sse", "admission", "watch", "copies",
              "memory"]


def main(argv: list[str]) -> int:
    split = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    names, rest = argv[:split] or BENCHMARKS, argv[split:]
    if not argv[:split] and rest and rest[0] in ("-h", "--help"):  # (not every benchmark: they take minutes)
        print(__doc__.strip())
        print(f"\nbenchmarks: {' '.join(BENCHMARKS)}\n`python -m benchmarks NAME --help`: a benchmark's own arguments")
        return 0
    results = {}
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        print(f"== {name}", flush=True)
        started = time.perf_counter()
        results[name] = module.main(rest if len(names) == 1 else [])
        print(f"   ({time.perf_counter() - started:.1f} s)", flush=True)
    out = Path(".cove") / "bench-results.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

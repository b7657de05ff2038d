"""`make bench`: run every benchmark, print a table per benchmark, write JSON to benchmarks/results/."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from benchmarks import (
    crash_sweep,
    decontam_bench,
    dedup_bench,
    e2e_bench,
    ingest_bench,
    llm_bench,
    llm_serving,
    pages_bench,
    parser_bench,
)

BENCHMARKS = {
    "ingest": ingest_bench.run,
    "llm": llm_bench.run,
    "llm_serving": llm_serving.run,
    "dedup": dedup_bench.run,
    "pages": pages_bench.run,
    "decontam": decontam_bench.run,
    "end_to_end": e2e_bench.run,
    "crash_sweep": crash_sweep.run,
    "parsers": parser_bench.run,
}


def machine() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("names", nargs="*", default=list(BENCHMARKS), help=f"any of {', '.join(BENCHMARKS)}")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.names:
        result = {"benchmark": name, "machine": machine(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        result.update(BENCHMARKS[name]())
        (out / f"{name}.json").write_text(json.dumps(result, indent=2))
        print(f"\n== {name} ==")
        print(result["table"])
        print(f"(JSON: {out / f'{name}.json'})")


if __name__ == "__main__":
    main()

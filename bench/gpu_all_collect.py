"""The one JSON of ``bench/gpu_all.sh``: its steps (exit code, seconds, log tail), the test counts
(JUnit XML), the demo and training measurements, and each goal of issue 17 as met / not met /
unmeasured.

    python bench/gpu_all_collect.py TMPDIR OUT.json [--dry-run 0|1]
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

DEMO_GOAL_IMG_S = 300.0  # issue 17: end to end, 2,000 1024-px JPEGs, MTCNN, batch 64, bf16, one GPU + 16 cores
GPU_BUSY_GOAL = 0.80
TRAIN_PEAK_GOAL = 0.25  # fraction of the bf16 matmul peak at the largest batch


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _tests(path: Path) -> dict | None:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    counts["failed"] = [f"{c.get('classname')}::{c.get('name')}" for s in suites for c in s.iter("testcase")
                        if c.find("failure") is not None or c.find("error") is not None]
    return counts


def _gpu() -> str | None:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _goal(value: float | None, target: float) -> dict:
    return {"value": value, "target": target, "met": None if value is None else value >= target}


def collect(tmp: Path, dry_run: bool) -> dict:
    steps = {}
    for line in (tmp / "steps.tsv").read_text().splitlines() if (tmp / "steps.tsv").is_file() else []:
        name, rc, ms = line.split("\t")
        log = (tmp / f"{name}.log").read_text(errors="replace").splitlines() if (tmp / f"{name}.log").is_file() else []
        steps[name] = {"exit": int(rc), "seconds": int(ms or 0) / 1000.0, "timed_out": int(rc) in (124, 137),
                       "log_tail": log[-15:]}
    demo, baseline, train = _json(tmp / "demo.json"), _json(tmp / "baseline.json"), _json(tmp / "train.json")
    gpu_row = next(iter(demo["setups"].values()), None) if demo else None
    base_row = baseline["setups"].get("baseline") if baseline else None
    largest = next((r for r in (train or {}).get("rows", []) if r.get("largest")), None)
    goals = {
        "demo_img_per_s": _goal(gpu_row["img_per_s"] if gpu_row else None, DEMO_GOAL_IMG_S),
        "demo_gpu_busy_share": _goal(gpu_row["gpu_busy_share"] if gpu_row else None, GPU_BUSY_GOAL),
        "train_fraction_of_bf16_peak_at_largest_batch": _goal(largest["fraction_of_peak"] if largest else None,
                                                              TRAIN_PEAK_GOAL),
    }
    return {
        "dry_run": dry_run, "host": platform.node(), "gpu": _gpu(), "steps": steps, "tests": _tests(tmp / "junit.xml"),
        "demo": demo, "baseline": baseline,
        "demo_speedup_over_baseline": (gpu_row["img_per_s"] / base_row["img_per_s"]) if gpu_row and base_row else None,
        "train": train, "goals": goals,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tmp")
    p.add_argument("out")
    p.add_argument("--dry-run", type=int, default=0)
    args = p.parse_args(argv)
    result = collect(Path(args.tmp), bool(args.dry_run))
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({"goals": result["goals"], "tests": result["tests"] and {k: v for k, v in result["tests"].items()},
                      "steps": {k: v["exit"] for k, v in result["steps"].items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""bench/gpu_all.sh (the one GPU script of issue 17): valid bash, its JSON from hand-made step
outputs, and (slow) the whole script on the CPU with --dry-run."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import gpu_all_collect  # noqa: E402


def test_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(ROOT / "bench" / "gpu_all.sh")]).returncode == 0


def test_collect_reads_the_steps_and_judges_the_goals(tmp_path):
    (tmp_path / "steps.tsv").write_text("tests\t0\t1500\ndemo\t124\t150000\n")
    (tmp_path / "demo.log").write_text("line\n" * 30)
    (tmp_path / "junit.xml").write_text(
        '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1">'
        '<testcase classname="t" name="a"/><testcase classname="t" name="b"><failure/></testcase>'
        '<testcase classname="t" name="c"><skipped/></testcase></testsuite></testsuites>')
    demo = {"setups": {"gpu-b64": {"img_per_s": 320.0, "gpu_busy_share": 0.5}}}
    (tmp_path / "demo.json").write_text(json.dumps(demo))
    (tmp_path / "baseline.json").write_text(json.dumps({"setups": {"baseline": {"img_per_s": 40.0}}}))
    rows = [{"batch": 16, "fraction_of_peak": 0.1}, {"batch": 512, "fraction_of_peak": 0.3, "largest": True}]
    (tmp_path / "train.json").write_text(json.dumps({"rows": rows}))
    r = gpu_all_collect.collect(tmp_path, dry_run=False)
    assert r["steps"]["tests"] == {"exit": 0, "seconds": 1.5, "timed_out": False, "log_tail": []}
    assert r["steps"]["demo"]["timed_out"] and len(r["steps"]["demo"]["log_tail"]) == 15
    assert r["tests"] == {"tests": 3, "failures": 1, "errors": 0, "skipped": 1, "failed": ["t::b"]}
    assert r["demo_speedup_over_baseline"] == 8.0
    assert r["goals"]["demo_img_per_s"]["met"] is True and r["goals"]["demo_gpu_busy_share"]["met"] is False
    assert r["goals"]["train_fraction_of_bf16_peak_at_largest_batch"] == {"value": 0.3, "target": 0.25, "met": True}
    empty = gpu_all_collect.collect(tmp_path / "none", dry_run=True)  # nothing ran: everything unmeasured
    assert empty["steps"] == {} and all(g["met"] is None for g in empty["goals"].values())


@pytest.mark.slow
def test_dry_run_on_the_cpu(tmp_path):
    out = tmp_path / "gpu_all.json"
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_all.sh"), "--dry-run", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["dry_run"] is True and {k: v["exit"] for k, v in r["steps"].items()} == {
        "tests": 0, "demo": 0, "baseline": 0, "train": 0}
    assert r["tests"]["failures"] == 0 and r["tests"]["tests"] > 0
    assert r["demo"]["setups"]["gpu-b2"]["ok"] == 4 and r["demo"]["setups"]["gpu-b2"]["gpu_busy_share"] is None
    assert r["baseline"]["setups"]["baseline"]["ok"] == 2 and r["train"]["rows"][0]["batch"] == 2

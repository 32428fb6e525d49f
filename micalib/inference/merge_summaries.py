"""Write ``OUT/summary.csv`` / ``summary.json`` of a demo run from its completion records: after the
``--shard K/N`` jobs of one run finished (each wrote only its records), or to check a run.

    python -m micalib.inference.merge_summaries OUT -i INPUT [-a ARCFACE]    (-a: also check the crops there)

With ``-i`` (the same input as the demo's) there is one row per input in the demo's order, and an
input without a complete record is ``pending`` (a shard that died: re-run the missing shards, or the
whole run under any shard count, to finish it). Without ``-i``, one row per record, sorted by input.
Nothing a shard wrote is trusted beyond its record: every ``ok`` record is checked against its files
(``micalib.inference.records.rebuild_summary``). Exit code 0 when every row is ok, 3 when some input is
still pending (a shard did not finish: run it again), 1 when the run is complete but inputs failed.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from loguru import logger

from micalib.inference.demo_runner import input_names, list_inputs
from micalib.inference.records import RECORD_DIR, rebuild_summary
from utils.errors import MICAError, run_main
from utils.log_setup import setup_logging


def merge(output_dir: Path, input_dir: Path | None = None, arcface_dir: Path | None = None) -> list:
    """Rebuild and write the summary of ``output_dir`` (see the module docstring); returns the rows."""
    output_dir = Path(output_dir)
    if not (output_dir / RECORD_DIR).is_dir():
        raise MICAError(f"{output_dir} has no completion records ({RECORD_DIR}); pass the -o folder of a demo run "
                        f"that has finished at least one input")
    inputs = None
    if input_dir is not None:
        input_dir = Path(input_dir)
        if not input_dir.exists():
            raise MICAError(f"input {input_dir} does not exist (pass the -i of the demo run)")
        paths, root = list_inputs(input_dir, output_dir, Path(arcface_dir) if arcface_dir else output_dir)
        inputs = [(rel.as_posix(), name) for rel, name in input_names(paths, root)]
    return rebuild_summary(output_dir, inputs, arcface_dir=Path(arcface_dir) if arcface_dir else None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="summary of a (sharded) demo run from its completion records")
    p.add_argument("output", help="the demo's -o folder")
    p.add_argument("-i", "--input", default=None, help="the demo's -i (lists inputs without a record as pending)")
    p.add_argument("-a", "--arcface", default=None,
                   help="the demo's -a: also check every input's crops there (default: the meshes only)")
    p.add_argument("--no-page", action="store_true", help="skip the viewer page OUTPUT/index.html")
    args = p.parse_args(argv)
    rows = merge(Path(args.output), Path(args.input) if args.input else None,
                 Path(args.arcface) if args.arcface else None)
    counts = {s: sum(r.status == s for r in rows) for s in ("ok", "failed", "pending")}
    if not args.no_page:  # the page of a sharded run, as one process writes it at its end
        from micalib.viewer.page import write_demo_page

        arcface = Path(args.arcface) if args.arcface else None  # the crops beside the meshes, when given
        print(f"viewer page: {write_demo_page(Path(args.output), arcface)}")
    logger.info(f"{len(rows)} inputs: {counts['ok']} ok, {counts['failed']} failed, {counts['pending']} pending "
                f"-> {Path(args.output) / 'summary.csv'}")
    if counts["pending"]:  # the run is incomplete: some shard did not finish
        return 3
    return 0 if counts["ok"] == len(rows) else 1


if __name__ == "__main__":
    setup_logging()
    run_main(main)

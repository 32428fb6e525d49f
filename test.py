"""NoW / Stirling benchmarks: export predicted meshes in the official layout, and score them locally.

    # meshes + 7 landmarks for NoW (validation and test lists) -> OUTPUT/now_test_TAG/predicted_meshes
    python test.py --cfg configs/mica.yml --benchmark now --now-root /data/NoW
    # Stirling/ESRC (HQ and LQ) -> OUTPUT/stirling_test_TAG/predicted_meshes
    python test.py --cfg configs/mica.yml --benchmark stirling --stirling-root /data/stirling
    # score the NoW validation set (non-metrical challenge; --metrical for MICA's metrical protocol)
    python test.py --cfg configs/mica.yml --evaluate --benchmark now --now-root /data/NoW
    # compare methods: each --predicted NAME=FOLDER gets a row of OUTPUT/.../results/results.md
    python test.py --evaluate --now-root /data/NoW --predicted mica=out/a --predicted deca=out/b

Exports run on many processes like demo.py: under ``torchrun --nproc_per_node G test.py ...`` or as
independent ``--shard K/N`` jobs (unit: a NoW image, a Stirling (quality, subject) group; see
``micalib.inference.sharding``). ``--evaluate`` runs in one process (python, not torchrun; no --shard).

Benchmark roots also come from the config (test.now_root, test.stirling_root); trailing
KEY VALUE pairs override the configuration (see configs/config.py).

Exit code 1 when an export item (a NoW image; a Stirling quality and subject) yields no output, or
when a scan or prediction cannot be read while scoring. Photos a protocol drops by design (Stirling
photos without exactly one face while the subject still gets a mesh) are ``skipped`` and listed in
``export_report.json``; missing predictions are reported as ``num_missing_files``. Neither changes
the exit code.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from loguru import logger

from configs.config import load_cfg, resolve_path
from utils.errors import MICAError, UserError, check_range, run_main
from utils.log_setup import setup_logging

NOW_DETECTION_THRESHOLD = 0.4  # MICA's NoW preparation (SCRFD)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="MICA benchmarks: NoW / Stirling export and NoW-protocol scoring",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--cfg", default=None, help="YAML config file merged over the defaults")
    p.add_argument("--benchmark", choices=["now", "stirling"], default=None, help="default: cfg test_dataset")
    p.add_argument("--evaluate", action="store_true", help="score predicted meshes instead of exporting them")
    p.add_argument("--now-root", default=None, help="NoW folder (default: cfg test.now_root)")
    p.add_argument("--stirling-root", default=None, help="Stirling folder (default: cfg test.stirling_root)")
    p.add_argument("--tag", default=None, help="output folder suffix (default: cfg test.tag)")
    p.add_argument("-o", "--output", default=None,
                   help="benchmark output folder (default: OUTPUT_DIR/now_test_TAG or stirling_test_TAG)")
    g = p.add_argument_group("export")
    g.add_argument("--split", choices=["validation", "test", "both"], default=None,
                   help="NoW image list(s); default: both for export, validation for --evaluate")
    g.add_argument("--quality", choices=["HQ", "LQ", "both"], default="both", help="Stirling image sets")
    g.add_argument("-m", "--model", default=None, help="MICA checkpoint (default: cfg pretrained_model_path)")
    g.add_argument("--onnx", default=None, help="run this exported ONNX network on onnxruntime instead of torch")
    g.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N or mps")
    g.add_argument("--precision", choices=["fp32", "bf16", "fp16", "auto"], default=None)
    g.add_argument("--detector", choices=["auto", "scrfd", "mtcnn"], default=None)
    g.add_argument("--threshold", type=float, default=None,
                   help=f"detection score threshold (default: {NOW_DETECTION_THRESHOLD} for NoW, 0.1 for Stirling, as MICA)")
    g.add_argument("--batch-size", type=int, default=16, help="faces per network call")
    g.add_argument("--mesh-format", choices=["ply", "obj"], default="ply", help="predicted mesh files")
    g.add_argument("--overwrite", action="store_true", help="redo images whose outputs already exist")
    g.add_argument("--no-render", action="store_true", help="skip the preview images")
    g.add_argument("--shard", default=None, metavar="K/N",
                   help="export only share K of N (0 <= K < N, e.g. K=$SLURM_ARRAY_TASK_ID) as an independent job "
                        "(under torchrun the ranks split the items by themselves: no --shard)")
    e = p.add_argument_group("evaluation")
    e.add_argument("--predicted", action="append", default=None, metavar="[NAME=]FOLDER",
                   help="predicted folder(s) to score (default: this run's predicted_meshes); repeat to compare methods")
    e.add_argument("--metrical", action="store_true", help="MICA's metrical protocol (no scale in the alignment)")
    e.add_argument("--unit", choices=["mm", "cm", "m"], default="mm", help="unit of the predicted meshes (metrical)")
    e.add_argument("--scans", default=None, help="scan folder (NoW default: NOW_ROOT/scans; required for Stirling)")
    e.add_argument("--scan-landmarks", default=None,
                   help="folder of .pp scan landmarks (NoW default: NOW_ROOT/scans_lmks_onlypp; Stirling: --scans)")
    e.add_argument("--image-list", default=None, help="NoW-style image list to score (default: NOW_ROOT/imagepathsSPLIT.txt)")
    e.add_argument("--results", default=None, help="results folder (default: OUTPUT/results or results_metrical)")
    e.add_argument("--max-nfev", type=int, default=200, help="bound on refinement evaluations per image")
    e.add_argument("--fit-points", type=int, default=0,
                   help="0: refine the alignment on every kept scan point, as NoW; N > 0: on at most N evenly spread "
                        "points (unlike NoW, because faster); the errors always use every point")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p.parse_args(argv)


def setup(args: argparse.Namespace):
    """Frozen config from --cfg, the command-line flags and the trailing overrides."""
    return load_cfg(args.cfg, args.opts, flags=[
        ("device", args.device), ("precision", args.precision), ("pretrained_model_path", args.model),
        ("detector.name", args.detector), ("test.now_root", args.now_root),
        ("test.stirling_root", args.stirling_root), ("test.tag", args.tag)])


def benchmark_dir(args: argparse.Namespace, cfg, benchmark: str) -> Path:
    """``--output`` or ``OUTPUT_DIR/{now,stirling}_test_TAG``."""
    if args.output:
        return Path(args.output)
    return resolve_path(cfg.output_dir or "output") / f"{benchmark}_test_{cfg.test.tag}"


def _root(value: str, key: str, flag: str) -> Path:
    if not value:
        raise MICAError(f"no benchmark folder given: set {key} in the config or pass {flag} PATH")
    return resolve_path(value)


def export(args: argparse.Namespace, cfg, benchmark: str) -> int:
    from micalib.predictor import Predictor
    from models.detectors import detector_from_config
    from utils.io import prepare_output_dir

    out = prepare_output_dir(benchmark_dir(args, cfg, benchmark), "benchmark output folder (-o)")
    default_threshold = NOW_DETECTION_THRESHOLD if benchmark == "now" else 0.1
    threshold = args.threshold if args.threshold is not None else default_threshold
    # Check the benchmark folder before loading any network, so a wrong path fails at once.
    if benchmark == "now":
        root = _root(cfg.test.now_root, "test.now_root", "--now-root")
        from testing.now_export import export_now, now_export_items

        splits = ("validation", "test") if args.split in (None, "both") else (args.split,)
        now_export_items(root, out, None, splits)
    else:
        root = _root(cfg.test.stirling_root, "test.stirling_root", "--stirling-root")
        from testing.stirling_export import QUALITIES, export_stirling, stirling_export_items

        qualities = QUALITIES if args.quality == "both" else (args.quality,)
        stirling_export_items(root, out, None, qualities)
    from micalib.inference.sharding import rank_cores, rank_device, resolve_shard

    shard = resolve_shard(args.shard)
    device = None
    if shard.distributed:  # one GPU per rank, the rank's share of the cores (torchrun sets OMP_NUM_THREADS=1)
        import torch

        torch.set_num_threads(rank_cores(shard))
        device = rank_device(cfg.device, shard)
    predictor = Predictor.from_config(cfg, backend="onnxruntime" if args.onnx else "torch", onnx_path=args.onnx,
                                      batch_size=args.batch_size, device=device)
    faces = predictor.faces
    detector = detector_from_config(cfg, threshold=threshold)
    kwargs = dict(mesh_suffix="." + args.mesh_format, batch_size=args.batch_size, overwrite=args.overwrite,
                  render=not args.no_render, shard=shard)
    if benchmark == "now":
        report = export_now(predictor, faces, detector, root, out, splits, **kwargs)
    else:
        report = export_stirling(predictor, faces, detector, root, out, qualities, **kwargs)
    if report.failed:
        logger.error(f"{len(report.failed)} {'NoW images' if benchmark == 'now' else 'Stirling subjects'} gave no "
                     f"output (first: {next(iter(report.failed))}); reasons in {out / 'export_report.json'}")
    return 1 if report.failed else 0


def _predicted(args: argparse.Namespace, default: Path, default_name: str) -> list[tuple[str, Path]]:
    """(method name, predicted folder) pairs from ``--predicted [NAME=]FOLDER`` (default: this run's)."""
    if not args.predicted:
        return [(default_name, default)]
    out = []
    for spec in args.predicted:
        name, sep, folder = spec.partition("=")
        if not sep:
            name, folder = Path(spec).name if Path(spec).name != "predicted_meshes" else Path(spec).parent.name, spec
        out.append((name, Path(folder)))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise UserError(f"--predicted names must differ (got {names}); use NAME=FOLDER")
    return out


def evaluate(args: argparse.Namespace, cfg, benchmark: str) -> int:
    from testing.now_eval import evaluate as score
    from testing.now_eval import now_items, stirling_items
    from testing.report import PUBLISHED_NOW, write_reports
    from utils.io import prepare_output_dir

    out = benchmark_dir(args, cfg, benchmark)
    res_dir = Path(args.results) if args.results else out / ("results_metrical" if args.metrical else "results")
    prepare_output_dir(res_dir, "results folder", recursive=False)  # before the slow scoring
    methods = _predicted(args, out / "predicted_meshes", str(cfg.test.tag))
    results = []
    for name, folder in methods:
        if benchmark == "now":
            root = _root(cfg.test.now_root, "test.now_root", "--now-root")
            split = "validation" if args.split in (None, "both") else args.split
            items = now_items(root, folder, split, args.scans, args.scan_landmarks, args.image_list)
        else:
            if not args.scans:
                raise MICAError("Stirling scoring needs the subjects' scans: pass --scans FOLDER (SCANS/ID5/*.obj with .pp landmarks)")
            items = stirling_items(folder, args.scans, args.scan_landmarks)
        results.append(score(items, method=name, metrical=args.metrical, unit=args.unit, max_nfev=args.max_nfev,
                             fit_points=args.fit_points))
    published = PUBLISHED_NOW if benchmark == "now" and not args.metrical else None
    written = write_reports(results, res_dir, published)
    for r in results:
        logger.info(f"{r.method}: median {r.overall.median:.3f} mm, mean {r.overall.mean:.3f} mm, std {r.overall.std:.3f} mm "
                    f"({r.overall.n_images} images, {len(r.missing)} missing, {len(r.failed)} failed)")
        if not r.overall.n_images:
            logger.warning(f"{r.method}: no prediction was scored (all missing or failed)")
    logger.info(f"results -> {written['table']}")
    # Missing predictions are part of the protocol (num_missing_files); unreadable files are errors.
    return 1 if any(r.failed for r in results) else 0


def main(argv=None) -> int:
    from utils.image_io import set_max_pixels

    args = parse_args(argv)
    # argument checks first, before anything imports torch
    check_range("--batch-size", args.batch_size, 1, 4096)
    if args.threshold is not None:
        check_range("--threshold", args.threshold, 0, 1, low_open=True, hint="a detection score")
    if args.fit_points < 0:
        raise MICAError(f"--fit-points must be 0 (every scan point, as NoW) or a positive count, not {args.fit_points}")
    if args.max_nfev < 1:
        raise MICAError(f"--max-nfev must be at least 1, not {args.max_nfev}")
    cfg = setup(args)
    set_max_pixels(cfg.image.max_pixels)
    benchmark = args.benchmark or str(cfg.test_dataset).lower()
    if benchmark not in ("now", "stirling"):
        raise UserError(f"benchmark must be now or stirling, not '{benchmark}' (--benchmark or test_dataset)")
    if args.evaluate:
        from micalib.inference.sharding import under_torchrun

        if args.shard is not None or under_torchrun():
            raise MICAError("--evaluate scores in one process: run it with python (not torchrun) and without "
                            "--shard, after every export shard has finished")
    return evaluate(args, cfg, benchmark) if args.evaluate else export(args, cfg, benchmark)


if __name__ == "__main__":
    setup_logging()
    run_main(main)

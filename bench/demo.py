"""Demo throughput: images per second through demo.py's pipeline, split into stages.

Runs the same folder of images through ``micalib.inference.demo_runner.DemoRunner`` in several set-ups, in one run:
- ``baseline``: batch 1, fp32 (the original demo's way: one image at a time);
- ``batched``: ``--batch-size 16 --precision auto`` (bf16 on CPUs with native bf16, fp16/bf16 on CUDA),
  one image after the other (``--workers 1``);
- ``batched-wN``: the same with N worker threads (``demo.py``'s default: the CPU cores, at most 8)
  reading, detecting and aligning a batch's images at the same time and writing its outputs;
- ``prefetch-wN``: the same with ``--prefetch 16`` (images prepared ahead, also while the network runs);
- ``int8``, ``int8-wN``, ``int8-pf-wN``: batch 16 on the int8 ONNX model (``python -m micalib.export
  --int8``; the fast CPU path, ``demo.py --onnx``), with 1 and N workers, and with prefetching
  (``--no-int8`` skips them);
and prints seconds per stage (read, detect with MTCNN's own stages det:shrink/pyramid/pnet/nms/rnet/onet,
align, crops, network, flame, render, write), the throughput ratio to the baseline, the network alone
on pre-aligned inputs at the same batch, precision and threads (demo/net: the demo's share of it) and
the non-network CPU milliseconds per image (process CPU time of all threads minus the network's, and
"stage CPU": the summed own CPU time of the threads in the non-network stages, which a loaded machine
blurs less; per stage in the last table). Stage seconds are summed over threads: with workers or prefetch
they add up to more than the wall time.

With ``--device cuda`` the set-ups are the baseline and the GPU pipeline (``gpu-bN``: MTCNN on the
GPU, one ``detect_batch`` per batch, photos decoded in worker processes, ``--batch-size``, bf16), and
each row also gives img/s per stage and the share of the wall time the GPU had work (CUDA events
around each batch's detection and network calls; "n/a" where there are no events, e.g. on a CPU).

Usage::

    python bench/demo.py [-i FOLDER] [-n 32] [--arch iresnet100] [--device cpu] [--render] [--only int8-w]
    python bench/demo.py --device cuda -n 2000 --resize 1024 --batch-size 64 --json out.json

Without ``-i`` the photos in ../shared/data/faces are repeated to ``-n`` images. Weights are random
(an iresnet100 in the mica.tar format) and FLAME is synthetic: speed does not depend on the values.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from loguru import logger  # noqa: E402

from configs.config import load_cfg  # noqa: E402
from utils.errors import MICAError, run_main  # noqa: E402
from utils.image_io import list_images  # noqa: E402


def _make_folder(src: Path, n: int, dst: Path, resize: int = 0) -> None:
    """``n`` photos from ``src`` (repeated); with ``resize``, re-encoded as JPEG (quality 90) with
    the longer side ``resize`` px (the demo goal's input of issue 17)."""
    photos = list_images(src)
    if not photos:
        raise MICAError(f"no images in {src}")
    dst.mkdir(parents=True)
    if resize:
        import cv2

        from utils.image_io import read_image

        encoded = []
        for p in photos:
            rgb = read_image(p)
            f = resize / max(rgb.shape[:2])
            big = cv2.resize(rgb, (round(rgb.shape[1] * f), round(rgb.shape[0] * f)),
                             interpolation=cv2.INTER_CUBIC if f > 1 else cv2.INTER_AREA)
            encoded.append(cv2.imencode(".jpg", big[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
        for i in range(n):
            (dst / f"{i:05d}.jpg").write_bytes(encoded[i % len(encoded)])
        return
    for i in range(n):
        p = photos[i % len(photos)]
        shutil.copy(p, dst / f"{i:03d}{p.suffix}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-i", "--input", default=str(ROOT.parent / "shared" / "data" / "faces"))
    ap.add_argument("-n", type=int, default=32)
    ap.add_argument("--arch", default="iresnet100")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--render", action="store_true", help="include render.png previews")
    ap.add_argument("--no-int8", action="store_true", help="skip the int8 ONNX set-ups")
    ap.add_argument("--workers", type=int, default=None,
                    help="worker threads of the -wN set-ups (default: demo.py's, the CPU cores, at most 8)")
    ap.add_argument("--resize", type=int, default=0, help="re-encode the input photos at this longer side (JPEG q90)")
    ap.add_argument("--batch-size", type=int, default=64, help="batch of the GPU set-up (--device cuda)")
    ap.add_argument("--precision", default="bf16", help="precision of the GPU set-up (--device cuda)")
    ap.add_argument("--mtcnn-min-face", type=float, default=None,
                    help="MTCNN's smallest face (fraction of the longer side; default: the config's, 0 = full search)")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    ap.add_argument("--no-baseline", action="store_true", help="skip the batch-1 fp32 baseline (no ratio column)")
    ap.add_argument("--gpu-pipeline", action="store_true",
                    help="the GPU set-up (batch detection, decoding processes) also on a CPU (tests its code path)")
    ap.add_argument("--only", nargs="+", default=None, metavar="PREFIX",
                    help="run only the set-ups whose label starts with one of these (the baseline always runs)")
    args = ap.parse_args()

    from micalib.inference.demo_runner import DemoRunner, default_workers
    from micalib.predictor import Predictor
    from models.detectors import create_detector
    from tests.synthetic_flame import write_synthetic_flame
    from tests.synthetic_weights import write_random_mica_tar

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _make_folder(Path(args.input), args.n, tmp / "in", args.resize)
        write_synthetic_flame(tmp / "flame", real=None)
        write_random_mica_tar(tmp / "mica.tar", arch=args.arch)
        f = tmp / "flame"
        cfg = load_cfg(None, ["model.arch", args.arch, "pretrained_model_path", str(tmp / "mica.tar"),
                              "model.flame_model_path", str(f / "generic_model.pkl"),
                              "model.flame_lmk_embedding_path", str(f / "landmark_embedding.npy"),
                              "device", args.device])
        gpu = args.device.startswith("cuda") or args.gpu_pipeline
        min_face = cfg.detector.mtcnn_min_face if args.mtcnn_min_face is None else args.mtcnn_min_face
        detector = create_detector("mtcnn", mtcnn_max_side=cfg.detector.mtcnn_max_side, mtcnn_min_face=min_face,
                                   device=args.device if args.device.startswith("cuda") else "cpu")
        w = default_workers() if args.workers is None else args.workers
        setups = [("baseline", 1, "fp32", 0, 1, None), ("batched", 16, "auto", 0, 1, None),
                  (f"batched-w{w}", 16, "auto", 0, w, None), (f"prefetch-w{w}", 16, "auto", 16, w, None)]
        if gpu:  # the GPU pipeline against the one-image-at-a-time baseline
            setups = [("baseline", 1, "fp32", 0, 1, None), (f"gpu-b{args.batch_size}", args.batch_size,
                                                             args.precision, 2 * args.batch_size, w, None)]
        if not gpu and not args.no_int8 and (not args.only or any(p.startswith("int8") for p in args.only)):
            from micalib.export.quantize import export_int8, synthetic_calibration
            from micalib.mica import MICA

            model = MICA.from_config(cfg, device="cpu", checkpoint=tmp / "mica.tar")
            export_int8(model.arcface, model.regressor, tmp / "int8.onnx", synthetic_calibration(32, seed=1))
            setups += [("int8", 16, "fp32", 0, 1, tmp / "int8.onnx"), (f"int8-w{w}", 16, "fp32", 0, w, tmp / "int8.onnx"),
                       (f"int8-pf-w{w}", 16, "fp32", 16, w, tmp / "int8.onnx")]
        if args.only:
            setups = [s for s in setups if s[0] == "baseline" or s[0].startswith(tuple(args.only))]
        if args.no_baseline:
            setups = [s for s in setups if s[0] != "baseline"]
        rows = {}
        for label, batch, precision, prefetch, workers, onnx in setups:
            predictor = Predictor.from_config(cfg, precision=precision, batch_size=batch, onnx_path=onnx)
            for _ in range(2):  # steady state: oneDNN/onnxruntime prepare their kernels per batch shape
                predictor.decode(predictor.predict_identity(np.zeros((batch, 3, 112, 112), np.float32)))
            decode = workers if gpu and batch > 1 else 0
            runner = DemoRunner(predictor, detector, predictor.faces, tmp / f"out_{label}", tmp / f"arc_{label}",
                                batch_size=batch, render=args.render, prefetch=prefetch, workers=workers,
                                decode_processes=decode, batch_detect=gpu and batch > 1)
            if hasattr(detector, "timer"):
                detector.timer = runner.timings  # MTCNN's own stages (det:*)
            cpu0, t0 = time.process_time(), time.perf_counter()
            results = runner.run(tmp / "in")
            total, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            ok = sum(r.status == "ok" for r in results)
            busy = runner.gpu_busy.seconds()
            net_wall, net_cpu = network_only(predictor, ok, batch)
            rows[label] = (total, ok, dict(runner.timings.seconds),
                           predictor.onnx_precision or str(predictor.dtype).replace("torch.", ""),
                           None if busy is None else busy / total, (cpu, net_wall, net_cpu),
                           dict(runner.timings.cpu_seconds))
    report = summarise(rows, args.n)
    print(f"{args.n} images, {args.arch}, device {args.device}, MTCNN min_face {min_face:g}")
    print(format_rows(report))
    if args.json:
        import json

        Path(args.json).write_text(json.dumps({"images": args.n, "arch": args.arch, "device": args.device,
                                               "setups": report}, indent=2))
    return 0


def network_only(predictor, n: int, batch: int) -> tuple:
    """Wall and process-CPU seconds of the network alone (ArcFace + mapping + FLAME) on ``n``
    pre-aligned inputs, at the demo's batch size, precision and threads, in the same process: the
    reference of the demo/network goal (not the demo's own network stage, which overlap inflates)."""
    x = np.random.default_rng(0).uniform(-1, 1, (max(n, 1), 3, 112, 112)).astype(np.float32)
    cpu0, t0 = time.process_time(), time.perf_counter()
    for i in range(0, len(x), batch):
        predictor.decode(predictor.predict_identity(x[i:i + batch]))
    return time.perf_counter() - t0, time.process_time() - cpu0


NETWORK_STAGES = ("network", "flame")


def prep_cpu_seconds(cpu_seconds: dict) -> float:
    """CPU seconds of the stages outside the network (read, detect, align, crops, write, render),
    each the own CPU time of the thread that ran it; MTCNN's det:* stages lie inside detect."""
    return sum(v for s, v in cpu_seconds.items() if s not in NETWORK_STAGES and not s.startswith("det:"))


def summarise(rows: dict, n: int) -> dict:
    """Per set-up: wall seconds, img/s, ratio to the baseline, seconds and img/s per stage, and the
    share of the wall time the GPU had work (None without CUDA events)."""
    base = rows["baseline"][0] if "baseline" in rows else None
    out = {}
    for label, (total, ok, sec, dtype, busy, (cpu, net_wall, net_cpu), stage_cpu) in rows.items():
        prep_cpu = prep_cpu_seconds(stage_cpu)
        out[label] = {"dtype": dtype, "seconds": total, "img_per_s": ok / total, "ok": ok,
                      "network_only_img_per_s": ok / net_wall if net_wall > 0 else None,
                      "demo_over_network": net_wall / total if total > 0 else None,
                      # process CPU time (all threads) of the demo minus that of the network alone
                      "non_network_cpu_ms_per_img": 1000 * (cpu - net_cpu) / ok if ok else None,
                      # the same from the stages' own thread CPU times: not a difference of two large
                      # process-CPU figures, which OpenMP's spin-waiting on a loaded machine blurs
                      "prep_cpu_ms_per_img": 1000 * prep_cpu / ok if ok else None,
                      "ratio": None if base is None else base / total,
                      "stage_seconds": sec,
                      "stage_cpu_ms_per_img": {s: 1000 * v / max(ok, 1) for s, v in stage_cpu.items()},
                      "stage_img_per_s": {s: (n / t if t > 0 else None) for s, t in sec.items()},
                      "gpu_busy_share": busy}
    return out


def format_rows(report: dict) -> str:
    stages = sorted({s for r in report.values() for s in r["stage_seconds"]})
    lines = [f"{'set-up':14s} {'dtype':9s} {'img/s':>7s} {'ratio':>6s} {'GPU busy':>8s} {'net img/s':>9s} "
             f"{'demo/net':>8s} {'non-net CPU ms/img':>18s} {'stage CPU ms/img':>16s}"]
    for label, r in report.items():
        busy = "n/a" if r["gpu_busy_share"] is None else f"{100 * r['gpu_busy_share']:.0f}%"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        net, share, cpu = (r["network_only_img_per_s"], r["demo_over_network"], r["non_network_cpu_ms_per_img"])
        stage_cpu = r["prep_cpu_ms_per_img"]
        lines.append(f"{label:14s} {r['dtype']:9s} {r['img_per_s']:7.2f} {ratio:>6s} {busy:>8s} "
                     f"{net or 0:9.2f} {100 * (share or 0):7.0f}% {cpu or 0:18.1f} {stage_cpu or 0:16.1f}")
    lines.append("seconds per stage, summed over threads (det:* = MTCNN's stages, inside detect):")
    lines.append(f"  {'set-up':12s} " + " ".join(f"{s:>11s}" for s in stages))
    for label, r in report.items():
        lines.append(f"  {label:12s} " + " ".join(f"{r['stage_seconds'].get(s, 0):10.2f}s" for s in stages))
    lines.append("CPU ms per image per stage (own CPU time of the threads that ran it):")
    for label, r in report.items():
        lines.append(f"  {label:12s} " + ", ".join(f"{s} {v:.1f}" for s, v in sorted(r["stage_cpu_ms_per_img"].items())))
    lines.append("img/s per stage (images / stage seconds):")
    for label, r in report.items():
        lines.append(f"  {label:12s} " + ", ".join(f"{s} {v:.1f}" for s, v in sorted(r["stage_img_per_s"].items())
                                                   if v is not None))
    return "\n".join(lines)


if __name__ == "__main__":
    run_main(main)

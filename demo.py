"""MICA demo: metrical 3D face shape from single photos.

    python demo.py -i demo/input -o demo/output

For every face: OUTPUT/NAME/{mesh.ply, mesh.obj (mm), identity.npy, kpt7.npy, kpt68.npy, render.png}
(+ mesh.glb in metres with --glb), the aligned crops in -a (NAME.jpg 224 crop, NAME.npy network
input), OUTPUT/summary.{csv,json} and the viewer page OUTPUT/index.html (--no-page skips it).
Trailing KEY VALUE pairs override the configuration (see configs/config.py).
Exit code: 0 when every input is reconstructed (or was by an earlier run), 1 when any failed,
130 when interrupted (Ctrl-C or SIGTERM; the summary then lists the unprocessed inputs as pending).

Many processes (``micalib.inference.sharding``): ``torchrun --nnodes N --nproc_per_node G demo.py -i BIG -o OUT``
splits the inputs over the ranks (one GPU each, rank 0 writes the summary at the end);
``--shard K/N`` runs one independent share (a SLURM array task), and
``python -m micalib.inference.merge_summaries OUT -i BIG`` writes the summary when all shards are done.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from loguru import logger

from configs.config import load_cfg, resolve_path
from utils.errors import MICAError, check_range, run_main, sigterm_as_interrupt
from utils.log_setup import setup_logging


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="MICA: metrical FLAME head meshes from photos",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-i", "--input", default="demo/input", help="image file or folder (searched recursively)")
    p.add_argument("-o", "--output", default="demo/output", help="output folder")
    p.add_argument("-a", "--arcface", default="demo/arcface", help="folder for aligned crops and network inputs")
    p.add_argument("-m", "--model", default=None, help="MICA checkpoint (default: cfg pretrained_model_path)")
    p.add_argument("--cfg", default=None, help="YAML config file merged over the defaults")
    p.add_argument("--detector", choices=["auto", "scrfd", "mtcnn"], default=None,
                   help="face detector; auto = SCRFD (antelopev2) if installed, else bundled MTCNN")
    p.add_argument("--all-faces", action="store_true", help="reconstruct every face (NAME_0, NAME_1, ...)")
    p.add_argument("--aligned", action="store_true", help="inputs are already aligned 112/224 ArcFace crops")
    p.add_argument("--batch-size", type=int, default=8, help="faces per network call (1..4096)")
    p.add_argument("--prefetch", type=int, default=None,
                   help="images read/detected/aligned ahead in a worker thread while the network runs "
                        "(0..64; 0 = off; default: 8 when the network runs on a GPU, 0 on CPU, where both stages "
                        "compete for the same cores: measured slower in bench/README.md)")
    p.add_argument("--workers", type=int, default=None,
                   help="threads that read, detect and align the images of a batch at the same time, and "
                        "write its outputs (1..64; default: the CPU cores, at most 8, divided among torchrun's "
                        "ranks on a machine; 1 = one after the other); with the detector on a GPU, also the worker "
                        "processes that decode the photos")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16", "auto"], default=None)
    p.add_argument("--onnx", default=None, help="run this exported ONNX network on onnxruntime instead of torch")
    p.add_argument("--fuse", action="store_true",
                   help="also average the identity of all images of each sub-folder into SUBFOLDER/fused/")
    p.add_argument("--no-render", action="store_true", help="skip render.png previews")
    p.add_argument("--glb", action="store_true",
                   help="also write NAME/mesh.glb (glTF binary, metres; mesh.ply / mesh.obj stay millimetres), "
                        "--fuse results too")
    p.add_argument("--no-page", action="store_true", help="skip the viewer page OUTPUT/index.html")
    p.add_argument("--overwrite", action="store_true", help="redo images whose outputs already exist")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of this process (1..1024; default: torch's, under torchrun the machine's "
                        "cores divided by its ranks); the same count gives byte-identical results across runs")
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="process only share K of N (0 <= K < N, e.g. K=$SLURM_ARRAY_TASK_ID) as an independent job; "
                        "afterwards python -m micalib.inference.merge_summaries OUT writes the summary (under torchrun the "
                        "ranks split the inputs by themselves: no --shard)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p.parse_args(argv)


def setup(args: argparse.Namespace):
    """Frozen config from --cfg, the command-line flags and the trailing overrides."""
    return load_cfg(args.cfg, args.opts, flags=[("device", args.device), ("precision", args.precision),
                                                ("pretrained_model_path", args.model),
                                                ("detector.name", args.detector)])


def build_runner(args: argparse.Namespace, cfg):
    """Predictor, detector and runner for the parsed arguments (also used by bench/demo.py);
    ``args.run_shard``: this process's share (``micalib.inference.sharding.resolve_shard``; absent = everything)."""
    from micalib.inference.demo_runner import DemoOptions, DemoRunner, default_workers, detector_on_gpu
    from micalib.inference.records import checkpoint_id
    from micalib.inference.sharding import Shard, rank_cores
    from micalib.predictor import Predictor
    from models.detectors import detector_from_config

    predictor = Predictor.from_config(cfg, onnx_path=args.onnx)
    weights = args.onnx or (resolve_path(cfg.pretrained_model_path) if cfg.pretrained_model_path else None)
    detector = None
    if not args.aligned:
        # MTCNN on the network's GPU (one detect_batch per batch); SCRFD picks onnxruntime's CUDA provider itself
        on_gpu = predictor.device.type == "cuda"
        detector = detector_from_config(cfg, device=predictor.device if on_gpu else "cpu", all_faces=args.all_faces)
    shard = getattr(args, "run_shard", None) or Shard()
    workers = default_workers(rank_cores(shard)) if args.workers is None else args.workers
    options = DemoOptions(batch_size=args.batch_size, all_faces=args.all_faces, aligned=args.aligned,
                          render=not args.no_render, overwrite=args.overwrite, fuse=args.fuse,
                          prefetch=_default_prefetch(predictor) if args.prefetch is None else args.prefetch,
                          workers=workers, checkpoint=checkpoint_id(weights), shard=shard,
                          # the GPU pipeline (detector on CUDA) decodes photos in worker processes
                          decode_processes=workers if detector is not None and detector_on_gpu(detector) else 0)
    return DemoRunner(predictor, detector, predictor.faces, Path(args.output), Path(args.arcface), options)


def _default_prefetch(predictor) -> int:
    """Overlap CPU preparation with the network only when the network has its own device."""
    return 8 if predictor.device.type in ("cuda", "mps") else 0


def check_args(args: argparse.Namespace) -> None:
    """One-line errors for out-of-range flags (argparse checks only the types)."""
    check_range("--batch-size", args.batch_size, 1, 4096)
    if args.threads is not None:
        check_range("--threads", args.threads, 1, 1024)
    if args.workers is not None:
        check_range("--workers", args.workers, 1, 64)
    if args.prefetch is not None:
        check_range("--prefetch", args.prefetch, 0, 64, hint="0 = off")


def main(argv=None) -> int:
    from utils.image_io import set_max_pixels
    from utils.io import prepare_output_dir

    args = parse_args(argv)
    check_args(args)
    if args.fuse and args.all_faces:
        raise MICAError("--fuse averages one face per image; it cannot be combined with --all-faces")
    if not Path(args.input).exists():
        raise MICAError(f"input {args.input} does not exist (pass an image or a folder of images with -i)")
    from micalib.inference.sharding import gather, rank_cores, rank_device, resolve_shard
    from utils.dist import destroy_distributed

    shard = args.run_shard = resolve_shard(args.shard)
    if shard.distributed or args.threads is not None:
        import torch

        # torchrun sets OMP_NUM_THREADS=1; each rank takes its share of the cores instead, unless told
        torch.set_num_threads(args.threads if args.threads is not None else rank_cores(shard))
    if shard.distributed:
        args.device = rank_device(args.device, shard)
    cfg = setup(args)
    set_max_pixels(cfg.image.max_pixels)
    from micalib.inference.demo_runner import check_output_folders

    check_output_folders(Path(args.input), Path(args.output), Path(args.arcface))
    # refuse an unusable output before loading anything; remove what killed runs left behind
    prepare_output_dir(args.output, "output folder (-o)")
    prepare_output_dir(args.arcface, "crop folder (-a)")
    from micalib.inference.output_lock import output_lock

    # the lock before loading anything: a second run on the same -o is refused at once (a --shard job
    # takes none: the shards of one run must not refuse each other; under torchrun rank 0 holds it)
    with sigterm_as_interrupt(), output_lock(Path(args.output), enabled=shard.leader):
        try:
            runner = build_runner(args, cfg)
        except KeyboardInterrupt:  # while the model loads: still leave a summary of every input
            if not shard.sharded:
                from micalib.inference.demo_runner import write_interrupted_summary

                write_interrupted_summary(Path(args.input), Path(args.output), Path(args.arcface),
                                          all_faces=args.all_faces, render=not args.no_render)
            raise
        results = runner.run(Path(args.input))
    failed = [r for r in results if r.status == "failed"]
    counts = [sum(r.status == s for r in results) for s in ("ok", "done", "failed")]
    totals = [sum(c) for c in zip(*gather(shard, counts), strict=True)]  # every rank of a torchrun run: the run's totals
    destroy_distributed()
    if shard.leader:
        finish_outputs(args)
    elif shard.independent:  # a --shard job: its .glb files; merge_summaries writes the page at the end
        finish_outputs(args, page=False)
    where = f"shard {shard}: " if shard.sharded else ""
    logger.info(f"{where}{counts[0]} reconstructed, {counts[1]} already done, {counts[2]} failed -> {args.output}")
    for r in failed:
        logger.warning(f"failed: {r.input}: {r.message}")
    if shard.distributed and shard.leader:
        logger.info(f"all {shard.count} ranks: {totals[0]} reconstructed, {totals[1]} already done, "
                    f"{totals[2]} failed; summary -> {Path(args.output) / 'summary.csv'}")
    elif shard.independent:
        logger.info(f"when every shard has finished: python -m micalib.inference.merge_summaries {args.output} -i {args.input} "
                    f"-a {args.arcface}")
    return 1 if totals[2] else 0


def finish_outputs(args: argparse.Namespace, page: bool = True) -> None:
    """``--glb``: ``mesh.glb`` beside every ``mesh.ply``; the viewer page (its path printed) unless
    ``page`` is False (a ``--shard`` job) or ``--no-page``."""
    if args.glb:
        from micalib.export.gltf import demo_glb

        written = demo_glb(args.output, overwrite=args.overwrite)
        logger.info(f"{len(written)} mesh.glb written (metres)")
    if page and not args.no_page:
        from micalib.viewer.page import write_demo_page

        print(f"viewer page: {write_demo_page(args.output, args.arcface)}")


if __name__ == "__main__":
    setup_logging()
    run_main(main)

"""Train MICA.

    python train.py --cfg configs/mica.yml [KEY VALUE ...]                 # one process (CPU or one GPU)
    torchrun --nproc_per_node N train.py --cfg configs/mica.yml [KEY VALUE ...]   # N GPUs (or N CPU processes, gloo)
    python train.py --cfg configs/mica.yml --resume                        # continue the last checkpoint
    python train.py --cfg configs/mica.yml --resume-from output/mica/checkpoints/model_00001000.tar
    python train.py --cfg configs/mica.yml -m data/pretrained/mica.tar       # fine-tune from a MICA checkpoint

``-m/--model`` starts from a MICA checkpoint's weights (as ``model.use_pretrained True`` with
``pretrained_model_path``); without it, ArcFace starts from ``model.arcface_pretrained_model``.
A resumed run takes its weights from the checkpoint it resumes. ``dataset.batch_size`` is per process. Without ``--resume`` a run continues from the output folder's
last checkpoint when ``train.resume`` is True (the default); ``--no-resume`` always starts over.
The output folder (``output_dir``) receives ``config.yaml``, ``logs/train.log``, TensorBoard events
in ``logs/``, ``checkpoints/``, ``best_models/``, ``train_images/`` and the final ``model.tar``.
"""
from __future__ import annotations

import argparse

from loguru import logger

from utils.errors import run_main
from utils.log_setup import setup_logging


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train MICA (single process or torchrun).")
    p.add_argument("--cfg", default="configs/mica.yml", help="YAML config (default configs/mica.yml)")
    p.add_argument("-m", "--model", default=None, metavar="PATH",
                   help="start from this MICA checkpoint (sets pretrained_model_path and model.use_pretrained True)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true",
                   help="resume from the output folder's last checkpoint (error when there is none)")
    g.add_argument("--resume-from", metavar="PATH", default=None, help="resume from this training checkpoint")
    g.add_argument("--no-resume", action="store_true", help="start from step 0 even if checkpoints exist")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides as KEY VALUE pairs")
    return p.parse_args(argv)




def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from configs.config import load_cfg
    from micalib.engine.builder import build_trainer, output_dir_of
    from micalib.engine.checkpointer import write_config
    from utils import dist as comm
    from utils.device import resolve_device
    from utils.io import prepare_output_dir

    opts = list(args.opts)
    if args.model:
        opts += ["pretrained_model_path", args.model, "model.use_pretrained", "True"]
    cfg = load_cfg(args.cfg, opts)
    comm.init_distributed(resolve_device(cfg.device).type)
    try:
        out = output_dir_of(cfg)
        if comm.is_main_process():  # unusable output refused before loading anything; killed runs' temp files removed
            prepare_output_dir(out, "training output folder (output_dir)")
        # rank 0: console + output_dir/log_dir/train.log; other ranks: warnings only
        main_rank = comm.is_main_process()
        setup_logging("INFO" if main_rank else "WARNING", out / cfg.train.log_dir / "train.log" if main_rank else None)
        if comm.is_main_process():
            write_config(out, cfg.dump())
            logger.info(f"output folder {out}; {comm.get_world_size()} process(es)")
        resume = False if args.no_resume else (args.resume_from or (True if args.resume else None))
        trainer = build_trainer(cfg, resume=resume)
        trainer.train()
    finally:
        comm.destroy_distributed()
    return 0


if __name__ == "__main__":
    setup_logging()
    run_main(main)

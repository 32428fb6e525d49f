"""Command helpers the tests share: demo.py's options for the synthetic FLAME and random weights
(``demo_opts``) and a subprocess run of it (``run_demo``); train.py's options for the synthetic
dataset (``make_opts``) and the trainer helpers (``weights_of``, ``full_batch_loss``,
``killed_and_resumed``)."""
from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from configs.config import PROJECT_ROOT, load_cfg
from micalib.engine.builder import build_trainer
from micalib.engine.hooks import CallbackHook

ROOT = Path(__file__).resolve().parent.parent


ARCH = "iresnet18"  # the checkpoint format is the same for every depth; 18 keeps CPU tests fast


def demo_opts(flame_dir: Path, tar: Path) -> list[str]:
    return [
        "model.arch", ARCH,
        "pretrained_model_path", str(tar),
        "model.flame_model_path", str(flame_dir / "generic_model.pkl"),
        "model.flame_lmk_embedding_path", str(flame_dir / "landmark_embedding.npy"),
        "model.topology_path", str(flame_dir / "head_template.obj"),
        "model.flame_masks_path", str(flame_dir / "FLAME_masks.pkl"),
        "detector.antelopev2_dir", "/nonexistent/antelopev2",
    ]


def run_demo(args: list[str], cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PROJECT_ROOT / "demo.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def make_opts(d: Path, out: Path, **overrides) -> list[str]:
    f = d / "flame"
    opts = {
        "dataset.root": str(d / "data"), "dataset.image_lists": str(d / "lists"),
        "dataset.training_data": "['LYHM']", "dataset.eval_data": "['FLORENCE']",
        "dataset.batch_size": "2", "dataset.K": "2", "dataset.num_workers": "0",
        "model.arch": "iresnet18", "model.use_pretrained": "True", "pretrained_model_path": str(d / "init.tar"),
        "model.flame_model_path": str(f / "generic_model.pkl"),
        "model.flame_lmk_embedding_path": str(f / "landmark_embedding.npy"),
        "model.flame_masks_path": str(f / "FLAME_masks.pkl"),
        "output_dir": str(out), "device": "cpu", "seed": "7",
        "train.lr": "1e-3", "train.arcface_lr": "1e-3", "train.max_steps": "4", "train.log_steps": "2",
        "train.val_steps": "0", "train.vis_steps": "0", "train.checkpoint_steps": "0", "train.write_summary": "False",
    }
    opts.update({k: str(v) for k, v in overrides.items()})
    return [x for kv in opts.items() for x in kv]


def weights_of(trainer) -> dict:
    return {k: v.detach().clone() for k, v in trainer.mica.state_dict().items()}


def full_batch_loss(trainer) -> float:
    """Training loss (train mode, no update) on all training actors at once, on a copy of the model."""
    import copy

    from datasets.mica_dataset import collate_mica

    mica = copy.deepcopy(trainer.mica).train()
    dev = next(mica.parameters()).device
    ds = trainer.loader.dataset
    ds.set_epoch(0)
    batch = collate_mica([ds[i] for i in range(len(ds))])
    images = batch["arcface"].flatten(0, 1).to(dev)
    with torch.no_grad():
        gt = mica.flame.canonical(batch["identity"].to(dev)).repeat_interleave(batch["arcface"].shape[1], dim=0)
        pred = mica.decode(mica.encode(images))["vertices"]
        return float(trainer.loss_fn(pred, gt))


class _Killed(Exception):
    pass


def _kill_at(step: int):
    def fn(trainer):
        if trainer.state.step == step:
            raise _Killed(f"killed at step {step}")
    return fn


def killed_and_resumed(setup: Path, tmp_path: Path, common: dict, kill_at: int = 3):
    """An uninterrupted run (``tmp_path/a``, trained) and a run killed after step ``kill_at``
    (``tmp_path/b``) rebuilt as a new process would (``train.resume`` picks its last checkpoint),
    with every RNG scrambled first: resuming must restore them. Returns (trained, resumed-not-trained)."""
    ref = build_trainer(load_cfg(ROOT / "configs/mica.yml", make_opts(setup, tmp_path / "a", **common)))
    ref.train()
    cfg_b = load_cfg(ROOT / "configs/mica.yml", make_opts(setup, tmp_path / "b", **common))
    killed = build_trainer(cfg_b, extra_hooks=[CallbackHook(_kill_at(kill_at))])
    with pytest.raises(_Killed):
        killed.train()
    assert not (tmp_path / "b" / "model.tar").exists()
    random.seed(99), np.random.seed(99), torch.manual_seed(99)  # also seeds every CUDA device
    return ref, build_trainer(cfg_b)

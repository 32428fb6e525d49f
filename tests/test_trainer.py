"""Trainer: loss, best-model bookkeeping, sampler/RNG state, training, resume, DDP, config errors.

Everything runs on CPU with the synthetic FLAME (``synthetic_flame_dir``), the tiny synthetic MICA
dataset (``tests/synthetic_dataset.py``), ArcFace iresnet18 from a random-weight ``mica.tar`` and
batch 2 x K 2.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import socket
from pathlib import Path
from typing import List, Sequence

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from configs.config import load_cfg
from datasets.sampler import ResumableDistributedSampler
from micalib.engine.builder import build_trainer
from micalib.engine.hooks import CallbackHook, EvalHook, PeriodicCheckpointer, VisualizationHook
from micalib.engine.losses import VertexLoss
from micalib.engine.trainer import NonFiniteLossError
from micalib.engine.validator import BEST_AVERAGE, BEST_DIR, BEST_RUNNING, BestModelTracker
from tests.logs import warnings_during
from utils.errors import MICAError
from utils.rng import get_rng_state, set_rng_state

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------------
# Pure pieces
# ------------------------------------------------------------------------------------------------
def test_vertex_loss_hand_computed():
    pred = torch.zeros(2, 3, 3)
    gt = torch.zeros(2, 3, 3)
    pred[0, 0] = torch.tensor([0.001, -0.002, 0.0])  # |diff| 1 mm, 2 mm on vertex 0 of sample 0
    pred[1, 2] = torch.tensor([0.0, 0.0, 0.003])      # 3 mm on vertex 2 of sample 1
    w = torch.tensor([10.0, 1.0, 0.5])
    loss = VertexLoss(w)
    # sample 0: (0.001 + 0.002) * 10 / 9 * 1000 = 10/3 ; sample 1: 0.003 * 0.5 / 9 * 1000 = 1/6
    per = loss.per_sample(pred, gt)
    assert torch.allclose(per, torch.tensor([10 / 3, 1 / 6]), atol=1e-5)
    assert math.isclose(float(loss(pred, gt)), (10 / 3 + 1 / 6) / 2, rel_tol=1e-5)


def test_best_model_tracker_running_average_and_nan():
    t = BestModelTracker(window=4)
    assert t.update(8.0) == {"average": True, "running": True}          # r = 8
    assert t.update(12.0) == {"average": False, "running": False}       # r = 8*3/4 + 12/4 = 9
    assert math.isclose(t.running, 9.0)
    assert t.update(float("nan")) == {"average": False, "running": False}
    assert math.isclose(t.running, 9.0) and t.count == 2
    assert t.update(4.0) == {"average": True, "running": True}          # r = 9*3/4 + 1 = 7.75
    assert math.isclose(t.running, 7.75) and t.best_average == 4.0 and t.best_running == 7.75
    t2 = BestModelTracker(window=4)
    t2.load_state_dict(t.state_dict())
    assert t2.update(5.0) == {"average": False, "running": True}        # r = 7.75*3/4 + 1.25 = 7.0625
    assert math.isclose(t2.running, 7.0625)


def test_resumable_sampler_offsets_and_shards():
    data = list(range(10))
    full = ResumableDistributedSampler(data, num_replicas=1, rank=0, seed=3)
    full.set_epoch(2)
    order = list(full)
    assert sorted(order) == data
    late = ResumableDistributedSampler(data, num_replicas=1, rank=0, seed=3)
    late.set_epoch(2)
    late.set_start(4)
    assert list(late) == order[4:] and len(late) == 6
    shards = []
    for r in range(2):
        s = ResumableDistributedSampler(data, num_replicas=2, rank=r, seed=3)
        s.set_epoch(2)
        shards.append(list(s))
    # the two shards interleave the single-process order
    assert shards[0] == order[0::2] and shards[1] == order[1::2]
    full.set_epoch(3)
    assert list(full) != order  # a new epoch reshuffles


def test_rng_state_roundtrip_through_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = get_rng_state(torch.device("cpu"))
    torch.save(state, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item(), np.random.randn())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True), torch.device("cpu"))
    assert (random.random(), np.random.rand(), torch.rand(1).item(), np.random.randn()) == expected


# ------------------------------------------------------------------------------------------------
# End-to-end with the real MICA model (iresnet18) and the synthetic data
# ------------------------------------------------------------------------------------------------
def make_opts(d: Path, out: Path, **overrides) -> List[str]:
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


@pytest.mark.slow
def test_training_lowers_loss_and_writes_run_files(train_setup_dir, tmp_path):
    out = tmp_path / "run"
    cfg = load_cfg(ROOT / "configs/mica.yml", make_opts(train_setup_dir, out, **{
        "train.max_steps": 8, "train.val_steps": 8, "train.write_summary": True, "train.use_mask": True,
        "train.lr": 1e-3, "train.arcface_lr": 1e-4,
        "dataset.eval_data": "['LYHM']", "train.checkpoint_steps": 8}))
    trainer = build_trainer(cfg)
    before = full_batch_loss(trainer)
    w0 = weights_of(trainer)
    trainer.train()
    after = full_batch_loss(trainer)
    assert trainer.state.step == 8
    # 8 steps lower the full-batch loss by 9-13% (synthetic FLAME with or without the real topology
    # of ../shared); 5% leaves room for that spread and still fails when nothing learns
    assert after < 0.95 * before, (before, after)
    assert math.isfinite(trainer.hook(EvalHook).validator.history[-1]["average"])
    # only the trainable part moved: frozen ArcFace convolutions stay (their BN running statistics
    # follow the batches, as MICA), layer4 and the mapping network change
    w1 = weights_of(trainer)
    assert torch.equal(w0["arcface.layer1.0.conv1.weight"], w1["arcface.layer1.0.conv1.weight"])
    assert torch.equal(w0["arcface.conv1.weight"], w1["arcface.conv1.weight"])
    assert not torch.equal(w0["arcface.bn1.running_mean"], w1["arcface.bn1.running_mean"])
    assert not torch.equal(w0["arcface.layer4.0.conv1.weight"], w1["arcface.layer4.0.conv1.weight"])
    assert not torch.equal(w0["regressor.output.weight"], w1["regressor.output.weight"])
    assert (out / "checkpoints" / "model_00000008.tar").is_file()
    assert (out / "checkpoints" / "last_checkpoint").read_text().strip() == "model_00000008.tar"
    assert (out / BEST_DIR / BEST_AVERAGE).is_file() and (out / BEST_DIR / BEST_RUNNING).is_file()
    assert list((out / "logs").glob("events.out.tfevents.*"))
    # the final model is a mica.tar the demo can load
    from micalib.mica import MICA
    from utils.checkpoint import load_mica_checkpoint

    ck = load_mica_checkpoint(out / "model.tar")
    assert ck["extra"]["global_step"] == 8
    assert torch.equal(ck["arcface"]["layer1.0.bn1.running_var"], w1["arcface.layer1.0.bn1.running_var"])
    assert torch.equal(ck["regressor"]["output.weight"], w1["regressor.output.weight"])
    m = MICA.from_config(cfg, "cpu", checkpoint=out / "model.tar")
    assert torch.equal(m.arcface.layer4[0].conv1.weight, w1["arcface.layer4.0.conv1.weight"])


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


@pytest.mark.slow
def test_killed_run_resumes_bit_identical(train_setup_dir, tmp_path):
    common = {"train.max_steps": 5, "train.checkpoint_steps": 2, "train.deterministic": True,
              "train.lr_update_step": 3, "train.weight_decay": 1e-2, "train.keep_checkpoints": 1}
    # 5 steps (8 actors / batch 2 = 4 steps per epoch, so an epoch boundary is crossed); the killed
    # run stops after step 3, its last checkpoint is step 2
    ref, resumed = killed_and_resumed(train_setup_dir, tmp_path, common)
    assert resumed.state.step == 2 and resumed.state.epoch == 0 and resumed.state.offset == 2
    resumed.train()
    assert resumed.state.step == 5
    assert [g["lr"] for g in resumed.optimizer.param_groups] == [g["lr"] for g in ref.optimizer.param_groups]
    assert math.isclose(ref.optimizer.param_groups[0]["lr"], 1e-4)  # StepLR(0.1) after 3 steps
    wa, wb = weights_of(ref), weights_of(resumed)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    sa, sb = ref.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    for i in sa:
        assert torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"])
    # keep-last-1: only the newest periodic checkpoint is left
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").glob("model_*.tar")) == ["model_00000005.tar"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _rank_trainer(rank: int, world: int, port: int, opts: Sequence[str], timeout_s: int = 120):
    """In a spawned process: torchrun's environment for ``rank``, one thread, gloo, the trainer."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from utils import dist as comm

    comm.init_distributed("cpu", timeout_s=timeout_s)
    try:
        yield build_trainer(load_cfg(ROOT / "configs/mica.yml", list(opts))), comm
    finally:
        comm.destroy_distributed()


def _ddp_worker(rank: int, world: int, port: int, opts: Sequence[str], result: str) -> None:
    with _rank_trainer(rank, world, port, opts) as (trainer, comm):
        trainer.train()
        try:
            history = trainer.hook(EvalHook).validator.history
        except KeyError:  # a run without validation
            history = []
        torch.save({"weights": weights_of(trainer), "val": history[-1]["average"] if history else None,
                    "world": comm.get_world_size()}, os.path.join(result, f"rank{rank}.pt"))


@pytest.mark.slow
def test_two_process_ddp_matches_single_process_with_double_batch(train_setup_dir, tmp_path):
    # with model.freeze_bn the frozen stages' BN use running statistics, so the only per-process
    # statistics are the synchronised ones and N x b trains like 1 x N*b (the default's per-process
    # statistics of the frozen stages: test_two_process_ddp_frozen_bn_statistics_are_per_process)
    steps = {"train.max_steps": 3, "train.val_steps": 3, "train.lr": 1e-3, "train.arcface_lr": 1e-3,
             "model.freeze_bn": True}
    opts2 = make_opts(train_setup_dir, tmp_path / "ddp", **steps, **{"dataset.batch_size": 2})
    mp.spawn(_ddp_worker, args=(2, _free_port(), opts2, str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["world"] == r1["world"] == 2
    for k in r0["weights"]:
        assert torch.equal(r0["weights"][k], r1["weights"][k]), k
    single = build_trainer(load_cfg(ROOT / "configs/mica.yml",
                                    make_opts(train_setup_dir, tmp_path / "one", **steps, **{"dataset.batch_size": 4})))
    w_init = weights_of(single)
    single.train()
    w1 = weights_of(single)
    moved, tot_diff, tot_update = 0, 0.0, 0.0
    for k, v in w1.items():
        if not v.is_floating_point():
            continue
        update = (v - w_init[k]).double().norm().item()
        diff = (v - r0["weights"][k]).double().norm().item()
        tot_diff, tot_update = tot_diff + diff ** 2, tot_update + update ** 2
        if update == 0:
            assert diff == 0, k
            continue
        moved += 1
        # Adam's first steps are ~lr*sign(grad), so gradients that are analytically zero (BN biases
        # feeding another BN) move by float noise; compare the weight matrices per tensor, all in norm.
        if v.numel() >= 1000:
            assert diff <= 0.05 * update, (k, diff, update)
    assert moved > 10
    assert tot_diff ** 0.5 <= 0.05 * tot_update ** 0.5
    assert math.isclose(r0["val"], single.hook(EvalHook).validator.history[-1]["average"], rel_tol=1e-4)


@pytest.mark.slow
def test_two_process_ddp_frozen_bn_statistics_are_per_process(train_setup_dir, tmp_path):
    """Default (as the original's per-process BatchNorm): the frozen stages' BN layers update their
    running statistics from each process's own batch, so the ranks end with different statistics
    (rank 0's are saved), while every trained weight and the synchronised BN statistics agree."""
    from utils.checkpoint import load_mica_checkpoint

    out = tmp_path / "ddp"
    opts = make_opts(train_setup_dir, out, **{"train.max_steps": 2, "dataset.batch_size": 2})
    mp.spawn(_ddp_worker, args=(2, _free_port(), opts, str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)["weights"]
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)["weights"]
    frozen = ("arcface.bn1.", "arcface.layer1.", "arcface.layer2.", "arcface.layer3.")
    for k in r0:
        if k.startswith(frozen) and k.endswith(("running_mean", "running_var")):
            assert not torch.equal(r0[k], r1[k]), k
        elif k.endswith("num_batches_tracked") or not k.endswith(("running_mean", "running_var")):
            assert torch.equal(r0[k], r1[k]), k
        else:  # synchronised BN of layer4 and the head: equal up to the all-reduce's rounding
            torch.testing.assert_close(r0[k], r1[k], rtol=1e-5, atol=1e-6)
    saved = load_mica_checkpoint(out / "model.tar")["arcface"]
    assert torch.equal(saved["layer1.0.bn1.running_mean"], r0["arcface.layer1.0.bn1.running_mean"])


def _ddp_nan_worker(rank: int, world: int, port: int, opts: Sequence[str], result: str) -> None:
    with _rank_trainer(rank, world, port, opts, timeout_s=60) as (trainer, _):
        trainer.run_step()
        if rank == 1:  # only this process's loss becomes NaN
            trainer.loss_fn.weights.fill_(float("nan"))
        try:
            trainer.run_step()
            outcome = "went on"
        except NonFiniteLossError as e:
            outcome = str(e)
        Path(result, f"rank{rank}.txt").write_text(outcome)


@pytest.mark.slow
def test_two_process_nan_loss_stops_every_process(train_setup_dir, tmp_path):
    """A NaN loss on one process stops all of them at the same step (none waits for the other)."""
    opts = make_opts(train_setup_dir, tmp_path / "ddp", **{"train.max_steps": 3})
    mp.spawn(_ddp_nan_worker, args=(2, _free_port(), opts, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (tmp_path / "rank0.txt").read_text(), (tmp_path / "rank1.txt").read_text()
    assert "training loss is nan at step 2" in r1
    assert "not finite on another process at step 2" in r0


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ({"dataset.training_data": "['NOSUCH']"}, "unknown dataset 'NOSUCH'"),
    ({"dataset.root": "/nonexistent/mica"}, "dataset.root"),
    ({"dataset.batch_size": 9}, "batch_size"),
    ({"pretrained_model_path": "/nonexistent/mica.tar"}, "mica.tar"),
])
def test_bad_config_fails_before_training_with_one_line(train_setup_dir, tmp_path, override, message):
    cfg = load_cfg(ROOT / "configs/mica.yml", make_opts(train_setup_dir, tmp_path / "x", **override))
    with pytest.raises((MICAError, FileNotFoundError)) as e:
        build_trainer(cfg)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "x" / "checkpoints").exists()


def test_train_py_reports_bad_config_in_one_line(train_setup_dir, tmp_path, capfd):
    import train
    from utils.errors import run_main

    argv = ["--cfg", str(ROOT / "configs/mica.yml")] + make_opts(train_setup_dir, tmp_path / "y", **{"dataset.batch_size": 9})
    with pytest.raises(SystemExit) as e:
        run_main(lambda: train.main(argv))
    assert e.value.code == 1
    err = capfd.readouterr().err
    assert "batch_size" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        run_main(lambda: train.main(["--cfg", str(ROOT / "configs/mica.yml"), "--resume"] + make_opts(train_setup_dir, tmp_path / "z")))
    assert "no checkpoint" in capfd.readouterr().err


def test_non_finite_loss_names_the_step(train_setup_dir, tmp_path):
    trainer = build_trainer(load_cfg(ROOT / "configs/mica.yml", make_opts(train_setup_dir, tmp_path / "n")))
    trainer.run_step()
    trainer.loss_fn.weights.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="at step 2"):
        trainer.run_step()


def test_nan_loss_stops_train_py_with_one_line(train_setup_dir, tmp_path, capfd):
    """A diverging run (absurd learning rates: the first step throws the weights to ~1e30) stops at the
    first non-finite loss with one line naming the step, no traceback, and writes no final model."""
    import train
    from utils.errors import run_main

    out = tmp_path / "nan"
    argv = ["--cfg", str(ROOT / "configs/mica.yml")] + make_opts(
        train_setup_dir, out, **{"train.lr": 1e30, "train.arcface_lr": 1e30, "train.max_steps": 3})
    with pytest.raises(SystemExit) as e:
        run_main(lambda: train.main(argv))
    assert e.value.code == 1
    err = [line for line in capfd.readouterr().err.splitlines() if "ERROR" in line or "Traceback" in line]
    assert len(err) == 1 and "training loss is" in err[0] and "at step 2" in err[0], err
    assert not (out / "model.tar").exists()


def _layer1_state(trainer) -> dict:
    return {k: v.detach().clone() for k, v in trainer.mica.arcface.state_dict().items()
            if k.startswith(("conv1.", "bn1.", "layer1."))}


@pytest.mark.parametrize("freeze_bn", [False, True])
def test_frozen_stages_batchnorm_during_training(train_setup_dir, tmp_path, freeze_bn):
    """Two trainer steps: the frozen convolutions never change; layer1's BN running statistics change
    only in the default (as MICA), and the checkpoint holds them."""
    from utils.checkpoint import load_mica_checkpoint

    trainer = build_trainer(load_cfg(ROOT / "configs/mica.yml", make_opts(
        train_setup_dir, tmp_path / "f", **{"model.freeze_bn": freeze_bn})))
    before = _layer1_state(trainer)
    for _ in range(2):
        trainer.run_step()
    after = _layer1_state(trainer)
    arc = trainer.mica.arcface
    assert arc.layer1.training != freeze_bn and arc.layer4.training
    for k in ("conv1.weight", "layer1.0.conv1.weight", "layer1.1.conv2.weight", "layer1.0.downsample.0.weight",
              "bn1.weight", "layer1.0.bn2.bias", "layer1.0.prelu.weight"):
        assert torch.equal(before[k], after[k]), k
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    changed = [k for k in stats if not torch.equal(before[k], after[k])]
    assert changed == ([] if freeze_bn else stats)
    path = trainer.hook(PeriodicCheckpointer).checkpointer.save()
    saved = load_mica_checkpoint(path)["arcface"]
    assert torch.equal(saved["layer1.0.bn1.running_mean"], after["layer1.0.bn1.running_mean"])


def test_resume_does_not_claim_random_weights(train_setup_dir, tmp_path):
    """Resuming loads the checkpoint's weights: no "random weights" warning, even when the initial
    weights of the config are gone."""
    opts = make_opts(train_setup_dir, tmp_path / "r", **{"train.checkpoint_steps": 1, "train.max_steps": 1})
    build_trainer(load_cfg(ROOT / "configs/mica.yml", opts)).train()
    cfg = load_cfg(ROOT / "configs/mica.yml", opts + ["train.max_steps", "2", "pretrained_model_path", "/gone/mica.tar"])
    box = {}
    warnings = warnings_during(lambda: box.setdefault("t", build_trainer(cfg)))
    assert box["t"].state.step == 1
    assert not any("random" in w for w in warnings), warnings
    # while a fresh run without any weights still says so
    fresh = load_cfg(ROOT / "configs/mica.yml", make_opts(train_setup_dir, tmp_path / "s", **{
        "model.use_pretrained": False, "model.arcface_pretrained_model": ""}))
    assert any("random weights" in w for w in warnings_during(lambda: build_trainer(fresh)))


def test_training_image_grid(train_setup_dir, tmp_path):
    out = tmp_path / "v"
    trainer = build_trainer(load_cfg(ROOT / "configs/mica.yml", make_opts(train_setup_dir, out, **{"train.write_summary": True})))
    trainer.run_step()
    grid = trainer.hook(VisualizationHook).visualize()
    # B*K = 4 samples, one row each: crop | predicted render | ground-truth render (224 px, 2 px padding)
    assert grid.shape == (4 * 226 + 2, 3 * 226 + 2, 3) and grid.dtype == np.uint8
    crop = grid[2:226, 2:226].astype(np.float64)
    expected = trainer.last_batch["images"][0].numpy().transpose(1, 2, 0) * 127.5 + 127.5
    import cv2

    assert np.abs(crop - cv2.resize(expected, (224, 224))).mean() < 2.0
    pred, gt = grid[2:226, 228:452], grid[2:226, 454:678]
    assert (pred != 255).any() and (gt != 255).any() and not np.array_equal(pred, gt)
    assert (out / "train_images" / "00000001.jpg").is_file()


@pytest.mark.slow
def test_fp16_loss_scale_is_checkpointed_and_resumed(train_setup_dir, tmp_path, monkeypatch):
    """fp16 training uses a GradScaler whose scale is saved and restored. fp16 is refused on the CPU
    (utils.device), so CPU autocast fp16 is forced here to test the bookkeeping without a GPU."""
    import micalib.engine.builder as trainer_mod
    from utils.checkpoint import load_mica_checkpoint

    monkeypatch.setattr(trainer_mod, "resolve_precision", lambda precision, device: torch.float16)
    common = {"train.max_steps": 4, "train.checkpoint_steps": 2, "train.deterministic": True}
    ref, resumed = killed_and_resumed(train_setup_dir, tmp_path, common)
    assert ref.scaler.is_enabled() and ref.amp_dtype == torch.float16
    saved = load_mica_checkpoint(tmp_path / "a" / "checkpoints" / "model_00000004.tar")["extra"]["grad_scaler"]
    assert saved["scale"] == ref.scaler.get_scale()
    # the scale moved (backed off after an overflow of the scaled fp16 gradients, or grew): it is live state
    assert ref.scaler.get_scale() != 2.0 ** 16 or saved["_growth_tracker"] == 4
    at_two = load_mica_checkpoint(tmp_path / "b" / "checkpoints" / "model_00000002.tar")["extra"]["grad_scaler"]
    assert resumed.state.step == 2 and resumed.scaler.state_dict() == at_two
    resumed.train()
    assert resumed.scaler.state_dict() == ref.scaler.state_dict()
    wa, wb = weights_of(ref), weights_of(resumed)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.mark.slow
def test_truncated_last_checkpoint_falls_back_to_the_last_intact_one(train_setup_dir, tmp_path):
    """Issue 21, R2: a cut-off latest checkpoint stopped the run with advice for a downloaded mica.tar;
    the automatic resume now takes the newest intact one with a warning, and a checkpoint named with
    --resume that is cut off is one line with advice for a training checkpoint."""
    opts = make_opts(train_setup_dir, tmp_path / "r", **{"train.checkpoint_steps": 1, "train.max_steps": 2,
                                                          "train.keep_checkpoints": 0})
    build_trainer(load_cfg(ROOT / "configs/mica.yml", opts)).train()
    ckpts = tmp_path / "r" / "checkpoints"
    latest = ckpts / "model_00000002.tar"
    assert (ckpts / "last_checkpoint").read_text().strip() == latest.name
    latest.write_bytes(latest.read_bytes()[:5000])  # a kill or a full disk while it was written
    cfg = load_cfg(ROOT / "configs/mica.yml", opts + ["train.max_steps", "3"])
    box = {}
    warnings = warnings_during(lambda: box.setdefault("t", build_trainer(cfg)))
    assert box["t"].state.step == 1  # from model_00000001.tar
    assert any("unreadable" in w and "model_00000001.tar" in w and "newest intact" in w for w in warnings), warnings
    with pytest.raises(MICAError) as e:  # named explicitly: no silent substitute
        build_trainer(cfg, resume=str(latest))
    msg = str(e.value)
    assert "\n" not in msg and str(latest) in msg and "cut off while being written" in msg
    assert "download" not in msg

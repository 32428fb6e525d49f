"""Checkpointer: pruning, and resuming a checkpoint written by the official MICA trainer.

The official files follow ``tests/synthetic_weights.official_training_checkpoint`` (the layout the
original ``Trainer.save_checkpoint`` writes, MICA_FACTS); the expected best-model values follow the
original ``utils/best_model.py`` arithmetic, computed by hand below.
"""
from __future__ import annotations

import math

import pytest
import torch

from configs.config import load_cfg
from micalib.engine.builder import build_trainer
from micalib.engine.checkpointer import Checkpointer
from micalib.engine.hooks import EvalHook
from micalib.engine.validator import BestModelTracker, Validator
from tests.commands import ROOT, make_opts, weights_of


def test_tracker_accepts_the_official_best_model_record():
    # before the first validation: counter None, everything inf -> a fresh tracker
    fresh = BestModelTracker(window=7)
    fresh.load_state_dict({"average": math.inf, "smoothed_average": math.inf, "running_average": math.inf,
                           "now_mean": None, "counter": None})
    assert fresh.running is None and fresh.count == 0
    assert fresh.update(8.0) == {"average": True, "running": True} and fresh.running == 8.0
    # after four validations: lowest loss 3.0, lowest running average 3.5, running average now 3.6
    t = BestModelTracker(window=7)
    t.load_state_dict({"average": 3.0, "smoothed_average": 3.5, "running_average": 3.6, "now_mean": 1.2, "counter": 4})
    assert (t.best_average, t.best_running, t.running, t.count) == (3.0, 3.5, 3.6, 4)
    # the original: r <- r * 6/7 + loss/7; best_model_1 when loss < average, best_model_3 when r < smoothed
    assert t.update(3.2) == {"average": False, "running": False}
    assert math.isclose(t.running, 3.6 * 6 / 7 + 3.2 / 7)                  # 3.542857 > 3.5
    assert t.update(2.0) == {"average": True, "running": True}
    assert math.isclose(t.running, (3.6 * 6 / 7 + 3.2 / 7) * 6 / 7 + 2.0 / 7)  # 3.322449 < 3.5
    with pytest.raises(KeyError):
        t.load_state_dict({"something": 1.0})


def test_validator_takes_the_official_validator_entry():
    import numpy as np

    v = Validator([], loss_fn=None, window=7)
    v.load_state_dict({"embeddings_lyhm": {"00001": [np.zeros(512, np.float32)], "00003": []},
                       "best_model": {"average": 1.25, "smoothed_average": math.inf, "running_average": 1.25,
                                      "now_mean": None, "counter": 1}})
    assert (v.best.best_average, v.best.best_running, v.best.running, v.best.count) == (1.25, math.inf, 1.25, 1)


def test_prune_keeps_newest_and_every_nth(tmp_path):
    ck = Checkpointer.__new__(Checkpointer)  # pruning needs only the folder and the two numbers
    ck.output_dir, ck.keep, ck.keep_every = tmp_path, 2, 4
    (tmp_path / "checkpoints").mkdir()
    for step in range(1, 10):
        (tmp_path / "checkpoints" / f"model_{step:08d}.tar").write_bytes(b"x")
    ck.prune()
    left = sorted(int(p.stem.split("_")[1]) for p in (tmp_path / "checkpoints").glob("model_*.tar"))
    assert left == [4, 8, 9]


@pytest.mark.slow  # the official file of an iresnet18 with its AdamW moments is ~270 MB
def test_resume_from_official_trainer_checkpoint(train_setup_dir, tmp_path):
    """Weights, AdamW moments (by parameter name), learning rates, StepLR, step, epoch and best values
    come from the official file; training goes on from there and decays the learning rate when the
    original would."""
    from tests.synthetic_weights import official_training_checkpoint, random_arcface, write_official_training_checkpoint

    kw = dict(lr=1e-5, arcface_lr=2e-5, lr_update_step=2, global_step=5)
    path = write_official_training_checkpoint(tmp_path / "official.tar", "iresnet18", 3, **kw)
    ref = official_training_checkpoint("iresnet18", 3, **kw)
    cfg = load_cfg(ROOT / "configs/mica.yml", make_opts(train_setup_dir, tmp_path / "run", **{
        "train.lr_update_step": 2, "train.max_steps": 6, "dataset.eval_data": "['FLORENCE']"}))
    trainer = build_trainer(cfg, resume=str(path))
    st = trainer.state
    assert (st.step, st.epoch, st.offset) == (5, 3, 0)
    w = weights_of(trainer)
    assert all(torch.equal(w["arcface." + k], v) for k, v in ref["arcface"].items())
    assert all(torch.equal(w[k], v) for k, v in ref["flameModel"].items() if k.startswith("regressor."))
    # StepLR(step_size 1) stepped at global steps 2 and 4 -> lr x 0.01, initial_lr kept
    groups = trainer.optimizer.param_groups
    assert [g["name"] for g in groups] == ["mapping", "arcface"]
    assert [g["lr"] for g in groups] == pytest.approx([1e-7, 2e-7], rel=1e-9)
    assert [g["initial_lr"] for g in groups] == pytest.approx([1e-5, 2e-5], rel=1e-9)
    # moments by name: the writer's group 0 = mapping network + FLAME's two poses, group 1 = all of ArcFace
    official_names = ([f"regressor.{n}" for n, _ in trainer.mica.regressor.named_parameters()]
                      + ["generator.eye_pose", "generator.neck_pose"]
                      + [f"arcface.{n}" for n, _ in random_arcface("iresnet18", 3).named_parameters()])
    index = {n: i for n, i in zip(official_names, ref["opt"]["param_groups"][0]["params"]
                                  + ref["opt"]["param_groups"][1]["params"], strict=True)}
    names = {id(p): n for n, p in trainer.mica.named_parameters()}
    ours = trainer.optimizer.state
    checked = 0
    for g in groups:
        for p in g["params"]:
            want = ref["opt"]["state"][index[names[id(p)]]]
            assert torch.equal(ours[p]["exp_avg"], want["exp_avg"]) and torch.equal(ours[p]["exp_avg_sq"], want["exp_avg_sq"])
            assert float(ours[p]["step"]) == 1.0
            checked += 1
    assert checked == sum(len(g["params"]) for g in groups) > 20
    best = trainer.hook(EvalHook).validator.best
    assert (best.best_average, best.count) == (1.25, 2)
    trainer.train()
    assert trainer.state.step == 6
    # the original decays after global step 6 too (6 % lr_update_step == 0)
    assert [g["lr"] for g in groups] == pytest.approx([1e-8, 2e-8], rel=1e-9)
    assert all(float(trainer.optimizer.state[p]["step"]) == 2.0 for p in groups[0]["params"])

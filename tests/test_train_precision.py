"""Training speed options change how, not what: channels-last and fused AdamW reproduce the plain fp32
losses, and bf16 training follows the fp32 loss curve (the bound of bench/train.py's iresnet100 check,
here on iresnet18 and the synthetic data of tests/test_trainer.py)."""
from __future__ import annotations

import statistics

import pytest

from configs.config import load_cfg
from micalib.engine.builder import build_trainer
from micalib.engine.hooks import PeriodicCheckpointer
from tests.commands import ROOT, make_opts
from utils.checkpoint import load_mica_checkpoint
from utils.device import cpu_supports_bf16

ORIGINAL = {"precision": "fp32", "train.channels_last": False, "train.optimizer_impl": "auto"}


def losses(setup, out, steps: int, **options) -> list[float]:
    """Per-step training losses of ``steps`` steps; a final checkpoint in ``out/model.tar``."""
    cfg = load_cfg(ROOT / "configs/mica.yml", make_opts(setup, out, **{"train.max_steps": steps, **options}))
    trainer = build_trainer(cfg)
    result = []
    for _ in range(steps):
        trainer.run_step()
        result.append(trainer.last_metrics["loss"])
    trainer.hook(PeriodicCheckpointer).checkpointer.save_final()
    return result


@pytest.mark.slow
def test_channels_last_and_fused_adamw_match_plain_fp32(train_setup_dir, tmp_path):
    ref = losses(train_setup_dir, tmp_path / "a", 3, **ORIGINAL)
    fast = losses(train_setup_dir, tmp_path / "b", 3, **{**ORIGINAL, "train.channels_last": True,
                                                        "train.optimizer_impl": "fused"})
    foreach = losses(train_setup_dir, tmp_path / "c", 3, **{**ORIGINAL, "train.optimizer_impl": "foreach"})
    assert ref[0] != ref[-1]  # the weights moved, so the later losses test the optimiser too
    # float rounding only (other convolution kernels, other summation order in AdamW)
    assert fast == pytest.approx(ref, rel=1e-4) and foreach == pytest.approx(ref, rel=1e-4)
    # a channels-last run writes the same layout as any other (contiguous tensors)
    saved = load_mica_checkpoint(tmp_path / "b" / "model.tar")["arcface"]
    assert saved["layer1.0.conv1.weight"].dim() == 4 and all(t.is_contiguous() for t in saved.values())


@pytest.mark.slow
@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no native bf16")
def test_bf16_training_follows_fp32(train_setup_dir, tmp_path):
    steps = 12
    ref = losses(train_setup_dir, tmp_path / "a", steps, **ORIGINAL)
    bf16 = losses(train_setup_dir, tmp_path / "b", steps, precision="bf16", **{"train.channels_last": True,
                                                                               "train.optimizer_impl": "fused"})
    # lr 1e-3: the loss falls (4 steps = one epoch over the same 8 actors), so the curves are compared while moving
    assert statistics.fmean(ref[-4:]) < 0.97 * statistics.fmean(ref[:4]), ref
    for step, (a, b) in enumerate(zip(ref, bf16, strict=True), 1):
        assert abs(b - a) <= 0.03 * a, (step, a, b)
    tail = 5
    assert abs(statistics.fmean(bf16[-tail:]) - statistics.fmean(ref[-tail:])) <= 0.01 * statistics.fmean(ref[-tail:])

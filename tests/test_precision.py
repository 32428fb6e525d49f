"""bf16 vs fp32 on the CPU: identity-code cosine and vertex deviation stay within the bounds
measured in bench/README.md (random, well-conditioned weights; see tests/synthetic_weights.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from micalib.predictor import Predictor
from tests.logs import warnings_during
from tests.synthetic_weights import random_mica
from utils.device import cpu_supports_bf16, resolve_precision
from utils.errors import MICAError


def _compare(arch: str, flame_dir: Path, n: int = 4):
    model = random_mica(flame_dir, arch)
    x = torch.rand(n, 3, 112, 112, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.inference_mode():
        code32 = model.encode(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            code16 = model.encode(x.contiguous(memory_format=torch.channels_last)).float()
    out32 = Predictor(model=model, device="cpu", precision="fp32")(x)
    out16 = Predictor(model=model, device="cpu", precision="bf16")(x)
    cos = F.cosine_similarity(code32, code16).min().item()
    dev_mm = np.linalg.norm(out32["vertices"] - out16["vertices"], axis=-1) * 1000
    spread_mm = np.linalg.norm(out32["vertices"] - out32["vertices"].mean(0), axis=-1).mean() * 1000
    return cos, dev_mm, spread_mm, code32, code16


def _bound(cos, dev_mm, spread_mm, cos_min):
    assert cos >= cos_min, cos
    # bf16 moves vertices by a small fraction of how much different inputs move them
    assert dev_mm.mean() <= 0.1 * spread_mm, (dev_mm.mean(), spread_mm)


def test_bf16_iresnet18(synthetic_flame_dir):
    cos, dev, spread, c32, c16 = _compare("iresnet18", Path(synthetic_flame_dir))
    _bound(cos, dev, spread, 0.9995)  # measured 0.99995
    assert not torch.equal(c32, c16)  # bf16 really ran


@pytest.mark.slow
def test_bf16_iresnet100(synthetic_flame_dir):
    cos, dev, spread, _, _ = _compare("iresnet100", Path(synthetic_flame_dir))
    _bound(cos, dev, spread, 0.999)  # measured min 0.99986 over 8 inputs


def test_precision_resolution_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == torch.float32
    assert resolve_precision("auto", cpu) == (torch.bfloat16 if cpu_supports_bf16() else torch.float32)
    with pytest.raises(MICAError, match="fp16"):
        resolve_precision("fp16", cpu)


@pytest.mark.parametrize("native", [False, True])
def test_explicit_bf16_warns_only_where_it_is_emulated(monkeypatch, native):
    import utils.device

    monkeypatch.setattr(utils.device, "cpu_supports_bf16", lambda: native)
    lines = warnings_during(lambda: resolve_precision("bf16", torch.device("cpu")))
    assert bool([m for m in lines if "emulated" in m]) is (not native)
    assert not warnings_during(lambda: resolve_precision("auto", torch.device("cpu")))  # auto never warns


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_encoder_plan_tells_the_layout_that_really_runs(synthetic_flame_dir, precision):
    model = random_mica(Path(synthetic_flame_dir), "iresnet18")
    for fuse in (True, False):
        predictor = Predictor(model=model, device="cpu", precision=precision, fuse=fuse)
        enc, plan = predictor.encoder, predictor.plan
        conv = [m for m in enc._arcface.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        w = conv.weight
        really_channels_last = w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
        def bns(net):
            return sum(isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) for m in net.modules())
        assert plan["fuse_bn"] is (bns(enc._arcface) < bns(model.arcface))  # folded BNs are gone
        assert plan["channels_last"] is really_channels_last
        assert plan["precision"] == {"fp32": "float32", "bf16": "bfloat16"}[precision]
        assert plan["batch_size"] == predictor.batch_size

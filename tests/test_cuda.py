"""CUDA: the network, the trainer and demo.py on a GPU agree with the CPU (skipped without CUDA).

Oracles: the same model and inputs on the CPU in float32; for training, the loss falling as on the
CPU and a killed run resuming bit-identically. Bounds are the measured values with a margin
(bench/README.md, "CUDA").
"""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

# deterministic cuBLAS needs this before the first cuBLAS call of the process (build_trainer sets it
# too, but an earlier test may already have made that call)
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

from configs.config import load_cfg  # noqa: E402
from micalib.engine.builder import build_trainer  # noqa: E402
from micalib.predictor import Predictor  # noqa: E402
from tests.commands import ROOT, full_batch_loss, killed_and_resumed, make_opts, weights_of  # noqa: E402
from tests.synthetic_weights import random_mica  # noqa: E402
from utils.device import resolve_precision  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture(autouse=True)
def _restore_determinism():
    """``train.deterministic`` switches deterministic algorithms on for the process; undo it."""
    flags = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    yield
    torch.use_deterministic_algorithms(flags[0])
    torch.backends.cudnn.benchmark = flags[1]


def _inputs(n: int) -> np.ndarray:
    return (torch.rand(n, 3, 112, 112, generator=torch.Generator().manual_seed(3)) * 2 - 1).numpy()


def _agreement(ref: dict, out: dict) -> tuple[float, float, float]:
    """Coefficient cosine (min over inputs), mean vertex deviation (mm), and the spread of the
    reference vertices across inputs (mm) that the deviation is judged against."""
    cos = F.cosine_similarity(torch.from_numpy(ref["identity"]), torch.from_numpy(out["identity"])).min().item()
    dev = np.linalg.norm(ref["vertices"] - out["vertices"], axis=-1).mean() * 1000
    spread = np.linalg.norm(ref["vertices"] - ref["vertices"].mean(0), axis=-1).mean() * 1000
    return cos, float(dev), float(spread)


@pytest.mark.parametrize("arch", ["iresnet18", "iresnet100"])
def test_fp32_on_cuda_matches_cpu(arch, synthetic_flame_dir):
    x = _inputs(8)
    ref = Predictor(model=random_mica(synthetic_flame_dir, arch), device="cpu", precision="fp32")(x)
    out = Predictor(model=random_mica(synthetic_flame_dir, arch), device="cuda", precision="fp32")(x)
    cos, dev, spread = _agreement(ref, out)
    # cuDNN runs fp32 convolutions as TF32 by default (as the original did on its GPUs)
    assert cos >= 0.999, cos
    assert dev <= 0.02 * spread, (dev, spread)
    assert out["vertices"].dtype == np.float32 and out["vertices"].shape == ref["vertices"].shape


@pytest.mark.parametrize("precision", ["bf16", "fp16", "auto"])
def test_reduced_precision_on_cuda(precision, synthetic_flame_dir):
    x = _inputs(8)
    model = random_mica(synthetic_flame_dir, "iresnet18")
    ref = Predictor(model=model, device="cuda", precision="fp32")(x)
    pred = Predictor(model=model, device="cuda", precision=precision)
    assert pred.dtype == resolve_precision(precision, torch.device("cuda")) != torch.float32
    out = pred(x)
    cos, dev, spread = _agreement(ref, out)
    assert cos >= 0.999, cos  # the CPU bf16 bound (tests/test_precision.py)
    assert dev <= 0.1 * spread, (dev, spread)
    assert not np.array_equal(ref["identity"], out["identity"])  # reduced precision really ran


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_on_cuda_lowers_loss(precision, train_setup_dir, tmp_path):
    out = tmp_path / "run"
    cfg = load_cfg(ROOT / "configs/mica.yml", make_opts(train_setup_dir, out, **{
        "device": "cuda", "precision": precision, "train.max_steps": 8, "train.lr": 1e-3,
        "train.arcface_lr": 1e-4, "train.checkpoint_steps": 8, "train.use_mask": True}))
    trainer = build_trainer(cfg)
    assert next(trainer.mica.parameters()).is_cuda
    assert trainer.scaler.is_enabled() == (precision == "fp16")
    before = full_batch_loss(trainer)
    trainer.train()
    after = full_batch_loss(trainer)
    assert trainer.state.step == 8
    # the CPU test's bound (tests/test_trainer.py): 8 steps lower the loss by 9-13% there
    assert math.isfinite(after) and after < 0.95 * before, (before, after)
    from utils.checkpoint import load_mica_checkpoint

    extra = load_mica_checkpoint(out / "checkpoints" / "model_00000008.tar")["extra"]
    if precision == "fp16":  # the loss scale travels with the checkpoint
        assert extra["grad_scaler"]["scale"] == trainer.scaler.get_scale() > 0
    else:
        assert not extra["grad_scaler"]


@pytest.mark.slow
def test_killed_cuda_run_resumes_bit_identical(train_setup_dir, tmp_path):
    common = {"device": "cuda", "train.max_steps": 5, "train.checkpoint_steps": 2, "train.deterministic": True,
              "train.lr_update_step": 3, "train.keep_checkpoints": 1}
    ref, resumed = killed_and_resumed(train_setup_dir, tmp_path, common)
    assert resumed.state.step == 2 and next(resumed.mica.parameters()).is_cuda
    resumed.train()
    wa, wb = weights_of(ref), weights_of(resumed)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.mark.slow
def test_demo_on_cuda_matches_cpu(tmp_path, face_photos_dir, synthetic_flame_dir):
    from tests.commands import demo_opts, run_demo
    from tests.synthetic_weights import write_random_mica_tar

    tar = tmp_path / "mica.tar"
    write_random_mica_tar(tar, arch="iresnet18", seed=0)
    inp = tmp_path / "in"
    shutil.copytree(face_photos_dir, inp)
    outs = {}
    for dev in ("cpu", "cuda"):
        out = tmp_path / dev
        res = run_demo(["-i", str(inp), "-o", str(out), "-a", str(tmp_path / f"arc_{dev}"), "--batch-size", "2",
                    "--device", dev, *demo_opts(Path(synthetic_flame_dir), tar)])
        assert res.returncode == 0, res.stderr[-2000:]
        outs[dev] = out
    names = sorted(p.parent.name for p in outs["cpu"].glob("*/identity.npy"))
    assert len(names) == len(list(face_photos_dir.iterdir()))
    assert names == sorted(p.parent.name for p in outs["cuda"].glob("*/identity.npy"))
    for name in names:
        a, b = (np.load(outs[d] / name / "identity.npy") for d in ("cpu", "cuda"))
        assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) >= 0.999, name
        k_cpu, k_gpu = (np.load(outs[d] / name / "kpt68.npy").reshape(-1, 3) for d in ("cpu", "cuda"))
        spread = np.linalg.norm(k_cpu - k_cpu.mean(0), axis=-1).mean()
        assert np.linalg.norm(k_cpu - k_gpu, axis=-1).mean() <= 0.02 * spread, name

"""MICA wrapper and Predictor: normalised codes, FLAME decode against the raw model arrays,
config building, training-mode behaviour."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from configs.config import load_cfg
from micalib.mica import MICA
from micalib.predictor import Predictor
from models.flame import FLAME
from models.flame_io import load_flame_model
from tests.numerics import reorder_bound
from tests.synthetic_weights import random_arcface, random_mapping_network, write_random_backbone, write_random_mica_tar


@pytest.fixture(scope="module")
def flame(synthetic_flame_dir) -> FLAME:
    d = Path(synthetic_flame_dir)
    return FLAME.from_files(d / "generic_model.pkl", d / "landmark_embedding.npy", 300, 100)


@pytest.fixture(scope="module")
def mica(flame) -> MICA:
    return MICA(random_arcface("iresnet18", 0), random_mapping_network(3, 300, 1), flame).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(3, 3, 112, 112, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_encode_is_unit_norm(mica, images):
    with torch.no_grad():
        code = mica.encode(images)
    assert code.shape == (3, 512)
    torch.testing.assert_close(code.norm(dim=1), torch.ones(3))
    with pytest.raises(ValueError, match=r"\(B, 3, 112, 112\)"):
        mica.encode(torch.zeros(1, 3, 64, 64))


def test_decode_matches_raw_flame_arrays(mica, images, synthetic_flame_dir):
    """Vertices = v_template + shapedirs[..., :300] . shape, from the parsed pickle in numpy."""
    with torch.no_grad():
        out = mica(images)
    raw = load_flame_model(Path(synthetic_flame_dir) / "generic_model.pkl")
    shape = out["identity"].double().numpy()
    expected = raw.v_template[None] + np.einsum("vcl,bl->bvc", raw.shapedirs[:, :, :300], shape)
    np.testing.assert_allclose(out["vertices"].numpy(), expected, atol=1e-6)
    assert out["landmarks68"].shape == (3, 68, 3) and out["landmarks7"].shape == (3, 7, 3)
    assert out["identity"].shape == (3, 300) and out["code"].shape == (3, 512)
    # the 7 NoW landmarks are the inner-51 indices 19, 22, 25, 28, 16, 31, 37 of the 68
    torch.testing.assert_close(out["landmarks7"], out["landmarks68"][:, 17:][:, [19, 22, 25, 28, 16, 31, 37]],
                               atol=1e-7, rtol=0)


def test_train_mode_frozen_parts_and_flame(mica):
    mica.train()
    try:
        assert mica.arcface.layer4.training and mica.regressor.training and not mica.flame.training
        # as MICA: the frozen stages get no gradient but their BN runs in train mode (model.freeze_bn: eval)
        assert mica.arcface.layer3.training and mica.arcface.bn1.training
        assert not any(p.requires_grad for p in mica.arcface.layer3.parameters())
        from micalib.engine.builder import parameter_groups

        groups = parameter_groups(mica, 1e-5, 2e-5)
        assert sum(p.numel() for p in groups[0]["params"]) == sum(p.numel() for p in mica.regressor.parameters())
        trainable = sum(p.numel() for p in groups[1]["params"])
        expected = sum(p.numel() for n, p in mica.arcface.named_parameters()
                       if n.startswith(("layer4.", "bn2.", "fc.")) or n == "features.bias")
        assert trainable == expected
    finally:
        mica.eval()


def test_state_dict_has_no_flame(mica):
    keys = list(mica.state_dict())
    assert all(k.startswith(("arcface.", "regressor.")) for k in keys)


def test_predictor_torch_matches_model(mica, images):
    pred = Predictor(model=mica, device="cpu", precision="fp32", batch_size=2)
    out = pred(images.numpy())
    with torch.no_grad():
        ref = mica(images)
    np.testing.assert_allclose(out["identity"], ref["identity"].numpy(), atol=1e-6)
    np.testing.assert_allclose(out["vertices"], ref["vertices"].numpy(), atol=1e-7)
    np.testing.assert_allclose(out["landmarks7"], ref["landmarks7"].numpy(), atol=1e-7)
    assert all(v.dtype == np.float32 for v in out.values())
    one = pred(images[0].numpy())  # a single (3, 112, 112) input
    np.testing.assert_allclose(one["identity"][0], out["identity"][0], atol=1e-6)
    with pytest.raises(ValueError, match="112"):
        pred(np.zeros((2, 112, 112, 3), np.float32))
    with pytest.raises(ValueError, match="float"):
        pred(np.zeros((1, 3, 112, 112), np.uint8))
    with pytest.raises(ValueError, match="backend"):
        Predictor(model=mica, backend="tensorrt")


def _cfg(flame_dir: Path, **opts):
    pairs = ["model.arch", "iresnet18", "device", "cpu",
             "model.flame_model_path", str(flame_dir / "generic_model.pkl"),
             "model.flame_lmk_embedding_path", str(flame_dir / "landmark_embedding.npy")]
    for k, v in opts.items():
        pairs += [k.replace("__", "."), v]
    return load_cfg(None, pairs)


@pytest.mark.slow
def test_from_config_loads_checkpoint_and_backbone(synthetic_flame_dir, tmp_path, images):
    d = Path(synthetic_flame_dir)
    tar = write_random_mica_tar(tmp_path / "mica.tar", arch="iresnet18", seed=7)
    model = MICA.from_config(_cfg(d, pretrained_model_path=str(tar)))
    assert torch.equal(model.arcface.fc.weight, random_arcface("iresnet18", 7).fc.weight)
    assert torch.equal(model.regressor.output.weight, random_mapping_network(3, 300, 8).output.weight)
    bb = write_random_backbone(tmp_path / "backbone.pth", "iresnet18", seed=9)
    scratch = MICA.from_config(_cfg(d, model__use_pretrained="False", model__arcface_pretrained_model=str(bb)))
    assert torch.equal(scratch.arcface.layer4[1].conv2.weight, random_arcface("iresnet18", 9).layer4[1].conv2.weight)
    with pytest.raises(FileNotFoundError, match="nothere.tar.*pretrained_model_path"):
        MICA.from_config(_cfg(d, pretrained_model_path=str(tmp_path / "nothere.tar")))
    with pytest.raises(FileNotFoundError, match="backbone"):
        MICA.from_config(_cfg(d, model__use_pretrained="False", model__arcface_pretrained_model=str(tmp_path / "no.pth")))
    pred = Predictor.from_config(_cfg(d, pretrained_model_path=str(tar)))
    assert pred(images[:1])["vertices"].shape[0] == 1


def test_predictor_split_interface(mica, images):
    """predict_identity + decode (numpy in/out), as demo.py uses them, equal the one-call path."""
    pred = Predictor(model=mica, device="cpu")
    ident = pred.predict_identity(images.numpy())
    assert isinstance(ident, np.ndarray) and ident.shape == (3, 300)
    whole = pred(images)
    parts = pred.decode(ident)
    for k in whole:  # the same process, the same call on the same shapes: identical
        np.testing.assert_array_equal(parts[k], whole[k])
    # One row alone vs inside the batch of 3: MKL may take another kernel (GEMV vs GEMM, AMX tiles),
    # i.e. sum the 300 products plus the template in another order (issue 21: up to 7e-9 m on a
    # Xeon). Bound: two float32 evaluations of template + shape . shapedirs (301 terms) differ by at
    # most 2 gamma_301 (|template| + |shape| . |shapedirs|), tests/numerics.py.
    one = pred.decode(ident[0])["vertices"][0].astype(np.float64)
    dirs = mica.flame.shapedirs[:300].double().numpy()
    abs_sum = np.abs(mica.flame.v_template.double().numpy()).ravel() + np.abs(ident[0]).astype(np.float64) @ np.abs(dirs)
    bound = reorder_bound(abs_sum, 301).reshape(-1, 3)
    assert (np.abs(one - whole["vertices"][0]) <= bound).all()
    assert bound.max() < 1e-5  # metres: well below what another identity moves (test below)
    other = pred.decode(ident[1])["vertices"][0]
    assert (np.abs(other - whole["vertices"][0]) > bound).any()  # the bound still tells rows apart
    assert pred.faces.dtype == np.int64 and pred.faces.shape[1] == 3

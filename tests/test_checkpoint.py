"""mica.tar / backbone.pth: bit-exact reload, name mapping, and one-line errors for bad files."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from micalib.mica import MICA
from models.arcface import create_arcface
from models.mapping import MappingNetwork
from tests.synthetic_weights import random_arcface, random_mapping_network, write_random_backbone, write_random_mica_tar
from utils import checkpoint as ckpt
from utils.errors import MICAError


def _encoder(arch="iresnet18", n_layers=3, n_shape=300) -> MICA:
    return MICA(create_arcface(arch), MappingNetwork(512, 300, n_layers, n_shape), None)


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.fixture(scope="module")
def tar18(tmp_path_factory) -> Path:
    return write_random_mica_tar(tmp_path_factory.mktemp("ck") / "mica.tar", arch="iresnet18", seed=3,
                                 extra={"epoch": 4, "global_step": 123, "batch_size": 8})


def test_reload_is_bit_exact(tar18):
    model = _encoder()
    extra = model.load_checkpoint(tar18)
    ref_a, ref_r = random_arcface("iresnet18", 3).state_dict(), random_mapping_network(3, 300, 4).state_dict()
    for k, v in model.arcface.state_dict().items():
        assert torch.equal(v, ref_a[k]), k
    for k, v in model.regressor.state_dict().items():
        assert torch.equal(v, ref_r[k]), k
    assert extra == {"epoch": 4, "global_step": 123, "batch_size": 8}


def test_saved_layout_is_the_official_one(tar18, tmp_path):
    raw = torch.load(tar18, weights_only=True)
    assert set(raw) == {"arcface", "flameModel", "epoch", "global_step", "batch_size"}
    assert "regressor.network.3.weight" in raw["flameModel"] and "regressor.output.bias" in raw["flameModel"]
    assert "layer1.0.downsample.1.running_var" in raw["arcface"]
    # save -> load -> save gives identical tensors, training state passing through
    model = _encoder()
    extra = model.load_checkpoint(tar18)
    out = model.save_checkpoint(tmp_path / "again.tar", extra=extra)
    again = torch.load(out, weights_only=True)
    assert again["epoch"] == 4 and list(again["flameModel"]) == list(raw["flameModel"])
    assert all(torch.equal(again["arcface"][k], v) for k, v in raw["arcface"].items())
    assert not list(tmp_path.glob(".*tmp*"))  # atomic: no temporary left


def test_module_prefixes_are_stripped(tar18, tmp_path):
    raw = torch.load(tar18, weights_only=True)
    raw["arcface"] = OrderedDict(("module." + k, v) for k, v in raw["arcface"].items())
    raw["flameModel"] = OrderedDict(("module." + k, v) for k, v in raw["flameModel"].items())
    torch.save(raw, tmp_path / "ddp.tar")
    model = _encoder()
    model.load_checkpoint(tmp_path / "ddp.tar")
    assert torch.equal(model.arcface.conv1.weight, raw["arcface"]["module.conv1.weight"])


def test_missing_key(tar18, tmp_path):
    raw = torch.load(tar18, weights_only=True)
    del raw["arcface"]["layer3.1.bn2.weight"]
    del raw["flameModel"]["regressor.output.bias"]
    torch.save(raw, tmp_path / "m.tar")
    with pytest.raises(MICAError) as e:
        _encoder().load_checkpoint(tmp_path / "m.tar")
    msg = _one_line(e)
    assert "1 missing keys" in msg and "layer3.1.bn2.{weight}" in msg and "m.tar" in msg


def test_unexpected_and_misshaped_keys(tar18, tmp_path):
    raw = torch.load(tar18, weights_only=True)
    raw["flameModel"]["regressor.output.weight"] = torch.zeros(100, 300)
    raw["flameModel"]["regressor.output.bias"] = torch.zeros(100)
    torch.save(raw, tmp_path / "s.tar")
    with pytest.raises(MICAError) as e:
        _encoder().load_checkpoint(tmp_path / "s.tar")
    msg = _one_line(e)
    assert "mis-shaped" in msg and "output.weight: file (100, 300), model (300, 300)" in msg and "n_shape=100" in msg
    raw = torch.load(tar18, weights_only=True)
    raw["arcface"]["head.extra"] = torch.zeros(1)
    torch.save(raw, tmp_path / "u.tar")
    with pytest.raises(MICAError, match="1 unexpected keys .head.{extra}"):
        _encoder().load_checkpoint(tmp_path / "u.tar")


def test_wrong_architecture_is_named(tmp_path):
    sd50 = create_arcface("iresnet50").state_dict()
    torch.save({"arcface": sd50, "flameModel": {f"regressor.{k}": v for k, v in MappingNetwork().state_dict().items()}},
               tmp_path / "r50.tar")
    with pytest.raises(MICAError) as e:
        _encoder("iresnet100").load_checkpoint(tmp_path / "r50.tar")
    msg = _one_line(e)
    assert "looks like iresnet50" in msg and "model is iresnet100" in msg and "model.arch" in msg


def test_arbitrary_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.tar"
    torch.save({"arcface": {"conv1.weight": Evil()}, "flameModel": {}}, path)
    with pytest.raises(MICAError) as e:
        ckpt.load_mica_checkpoint(path)
    msg = _one_line(e)
    assert "refused" in msg and "not executed" in msg and "open" in msg
    assert not marker.exists()
    # the oracle: an unrestricted load of the same file does run the payload
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_truncated_corrupt_and_missing_files(tar18, tmp_path):
    data = tar18.read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 2])
    with pytest.raises(MICAError, match="truncated or corrupt") as e:
        ckpt.load_mica_checkpoint(tmp_path / "cut.tar")
    assert "cut.tar" in _one_line(e)
    (tmp_path / "text.tar").write_text("hello, not a checkpoint")
    with pytest.raises(MICAError, match="text.tar"):
        ckpt.load_mica_checkpoint(tmp_path / "text.tar")
    with pytest.raises(FileNotFoundError, match="nothere.tar"):
        ckpt.load_mica_checkpoint(tmp_path / "nothere.tar")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.tar")
    with pytest.raises(MICAError, match="lacks the keys 'arcface' and 'flameModel'"):
        ckpt.load_mica_checkpoint(tmp_path / "other.tar")


def test_backbone_pth(tmp_path):
    path = write_random_backbone(tmp_path / "backbone.pth", "iresnet18", seed=5)
    model = _encoder()
    model.load_arcface_backbone(path)
    ref = random_arcface("iresnet18", 5).state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in model.arcface.state_dict().items())
    # a backbone handed over as a mica.tar gets a pointed message
    with pytest.raises(MICAError, match="bare ArcFace backbone .iresnet18.*arcface_pretrained_model"):
        ckpt.load_mica_checkpoint(path)
    with pytest.raises(MICAError, match="looks like iresnet18 but the model is iresnet34"):
        _encoder("iresnet34").load_arcface_backbone(path)


def test_generator_buffers_are_dropped_and_compared(tmp_path, caplog):
    flame_mod = pytest.importorskip("models.flame")
    from tests.synthetic_flame import write_synthetic_flame

    folder = write_synthetic_flame(tmp_path / "flame", seed=0)
    files = {p.name: p for p in Path(folder).rglob("*") if p.is_file()}
    flame = flame_mod.FLAME.from_files(files["generic_model.pkl"], files["landmark_embedding.npy"], 300, 100)
    path = write_random_mica_tar(tmp_path / "with_flame.tar", flame=flame, arch="iresnet18")
    data = ckpt.load_mica_checkpoint(path)
    assert "v_template" in data["generator"] and "shapedirs" in data["generator"]
    assert ckpt.check_flame_template(data["generator"], flame, "t") == 0.0
    shifted = dict(data["generator"], v_template=data["generator"]["v_template"] + 0.001)
    assert ckpt.check_flame_template(shifted, flame, "t") == pytest.approx(0.001, rel=1e-4)

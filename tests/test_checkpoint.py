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
    from models.flame import FLAME
    from tests.synthetic_flame import write_synthetic_flame

    folder = write_synthetic_flame(tmp_path / "flame", seed=0)
    files = {p.name: p for p in Path(folder).rglob("*") if p.is_file()}
    flame = FLAME.from_files(files["generic_model.pkl"], files["landmark_embedding.npy"], 300, 100)
    path = write_random_mica_tar(tmp_path / "with_flame.tar", flame=flame, arch="iresnet18")
    data = ckpt.load_mica_checkpoint(path)
    assert "v_template" in data["generator"] and "shapedirs" in data["generator"]
    assert ckpt.check_flame_template(data["generator"], flame, "t") == 0.0
    shifted = dict(data["generator"], v_template=data["generator"]["v_template"] + 0.001)
    assert ckpt.check_flame_template(shifted, flame, "t") == pytest.approx(0.001, rel=1e-4)


# ---------------------------------------------------------------------------------------------
# Checkpoints written by the official trainer (numpy objects, numpy-1 names)
# ---------------------------------------------------------------------------------------------
NUMPY1 = {"numpy.core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype"}


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """(path, dict): the dict the official trainer saves, written as its environment wrote it."""
    from tests.legacy_pickle import torch_save_numpy1
    from tests.synthetic_weights import official_training_checkpoint

    ref = official_training_checkpoint("iresnet18", 3)
    path = tmp_path_factory.mktemp("official") / "model_00000001.tar"
    path.write_bytes(torch_save_numpy1(ref))
    return path, ref


@pytest.mark.slow  # a 270 MB file (iresnet18 + AdamW state)
def test_official_trainer_checkpoint_loads(official):
    import numpy as np

    from tests.legacy_pickle import torch_file_globals

    official_tar, ref = official
    names = torch_file_globals(official_tar.read_bytes())
    assert NUMPY1 <= names and not any(n.startswith("numpy._core") for n in names)  # numpy 1.23's names
    with pytest.raises(Exception, match="numpy"):  # the oracle: plain weights_only refuses this file
        torch.load(official_tar, weights_only=True)
    data = ckpt.load_mica_checkpoint(official_tar)
    extra = data["extra"]
    assert set(extra) == {"opt", "scheduler", "validator", "epoch", "global_step", "batch_size"}
    emb = extra["validator"]["embeddings_lyhm"]
    assert set(emb) == {"00001", "00002", "00003"} and emb["00003"] == []
    for actor, arrays in ref["validator"]["embeddings_lyhm"].items():
        assert len(emb[actor]) == len(arrays)
        for got, want in zip(emb[actor], arrays):
            assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == (512,)
            np.testing.assert_array_equal(got, want)
    best = extra["validator"]["best_model"]
    assert best["smoothed_average"] == float("inf") and best["now_mean"] is None and best["counter"] == 2
    assert extra["scheduler"] == ref["scheduler"]
    assert extra["opt"]["param_groups"] == ref["opt"]["param_groups"]
    for i, st in ref["opt"]["state"].items():
        assert all(torch.equal(extra["opt"]["state"][i][k], v) for k, v in st.items())
    # the weights load into the model as they were saved
    model = _encoder()
    model.load_checkpoint(official_tar)
    assert all(torch.equal(v, ref["arcface"][k]) for k, v in model.arcface.state_dict().items())
    assert all(torch.equal(v, ref["flameModel"]["regressor." + k]) for k, v in model.regressor.state_dict().items())


def test_numpy2_names_and_scalars_load(tmp_path):
    """numpy 2 writes numpy._core names; scalars go through multiarray.scalar under both names."""
    import numpy as np

    from tests.legacy_pickle import torch_file_globals, torch_save_numpy1

    payload = {"a": np.arange(4, dtype=np.float32), "s": np.float64(2.5), "i": np.int64(-3),
               "t": torch.ones(2), "text": "frame 7", "n": 7}
    torch.save(payload, tmp_path / "np2.frame")
    (tmp_path / "np1.frame").write_bytes(torch_save_numpy1(payload))
    assert "numpy._core.multiarray.scalar" in torch_file_globals((tmp_path / "np2.frame").read_bytes())
    assert "numpy.core.multiarray.scalar" in torch_file_globals((tmp_path / "np1.frame").read_bytes())
    for name in ("np1.frame", "np2.frame"):
        out = ckpt.load_checkpoint_file(tmp_path / name)
        np.testing.assert_array_equal(out["a"], payload["a"])
        assert out["s"] == 2.5 and isinstance(out["s"], np.float64) and out["i"] == -3
        assert torch.equal(out["t"], payload["t"]) and out["text"] == "frame 7" and out["n"] == 7


def test_safe_globals_are_exactly_numpys_data_objects():
    import numpy as np

    from utils.safe_pickle import torch_numpy_safe_globals

    named = {name: obj for obj, name in (g for g in torch_numpy_safe_globals() if isinstance(g, tuple))}
    assert set(named) == {f"numpy.{m}multiarray.{n}" for m in ("core.", "_core.") for n in ("_reconstruct", "scalar")} | \
        {"numpy.ndarray", "numpy.dtype"}
    assert named["numpy.core.multiarray._reconstruct"] is named["numpy._core.multiarray._reconstruct"]
    assert named["numpy.ndarray"] is np.ndarray and named["numpy.dtype"] is np.dtype
    others = [g for g in torch_numpy_safe_globals() if not isinstance(g, tuple)]
    assert others and all(isinstance(c, type) and issubclass(c, np.dtype) for c in others)  # BUILD of dtypes


def test_code_in_official_checkpoint_is_refused(tmp_path):
    """numpy is allowed as data, code still is not: a payload beside the numpy arrays is refused."""
    import numpy as np

    from tests.legacy_pickle import torch_save_numpy1

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (__import__("os").system, (f"touch {marker}",))

    sd = {f"regressor.{k}": v for k, v in MappingNetwork().state_dict().items()}
    path = tmp_path / "evil.tar"
    path.write_bytes(torch_save_numpy1({"arcface": create_arcface("iresnet18").state_dict(), "flameModel": sd,
                                        "validator": {"embeddings_lyhm": {"1": [np.zeros(512, np.float32)]},
                                                      "best_model": Evil()}}))
    with pytest.raises(MICAError) as e:
        ckpt.load_mica_checkpoint(path)
    msg = _one_line(e)
    assert "refused" in msg and "system" in msg and str(path) in msg
    assert not marker.exists()


@pytest.mark.parametrize("where", ["arcface", "regressor", "backbone"])
def test_non_finite_weights_are_named(tmp_path, tar18, where):
    raw = torch.load(tar18, weights_only=True)
    if where == "backbone":
        state = dict(raw["arcface"])
        state["layer2.0.conv1.weight"] = state["layer2.0.conv1.weight"].clone()
        state["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
        torch.save(state, tmp_path / "backbone.pth")
        with pytest.raises(MICAError) as e:
            ckpt.load_arcface_backbone(tmp_path / "backbone.pth")
        assert "'layer2.0.conv1.weight' holds 1 NaN" in _one_line(e)
        return
    group, key = ("arcface", "bn1.running_var") if where == "arcface" else ("flameModel", "regressor.output.bias")
    raw[group][key] = raw[group][key].clone()
    raw[group][key][1] = float("inf")
    torch.save(raw, tmp_path / "bad.tar")
    with pytest.raises(MICAError) as e:
        _encoder().load_checkpoint(tmp_path / "bad.tar")
    msg = _one_line(e)
    assert "bad.tar" in msg and f"'{key.replace('regressor.', '')}' holds 1 NaN or infinite" in msg


def test_permission_denied_is_not_called_corrupt(tmp_path, monkeypatch):
    """A checkpoint the user may not read is reported as such, not as "truncated or corrupt" (root
    ignores permissions, so the error is injected where torch opens the file)."""
    import torch

    from utils.checkpoint import load_checkpoint_file
    from utils.errors import MICAError

    path = tmp_path / "mica.tar"
    torch.save({"a": torch.zeros(1)}, path)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(torch, "load", denied)
    with pytest.raises(MICAError, match="permission denied") as e:
        load_checkpoint_file(path)
    assert "corrupt" not in str(e.value) and str(path) in str(e.value)


@pytest.mark.parametrize("scale", [1e30, 2e6])
def test_absurd_finite_weights_are_named(tmp_path, tar18, scale):
    """Issue 21, D21: regressor.output.weight x1e30 ran to identities of 8e29 with status ok."""
    raw = torch.load(tar18, weights_only=True)
    key = "regressor.output.weight"
    raw["flameModel"][key] = raw["flameModel"][key] / raw["flameModel"][key].abs().max() * scale
    torch.save(raw, tmp_path / "big.tar")
    with pytest.raises(MICAError) as e:
        ckpt.load_mica_checkpoint(tmp_path / "big.tar")
    msg = _one_line(e)
    assert "big.tar" in msg and "'output.weight' holds values up to" in msg and f"{scale:.3g}" in msg
    assert ckpt.load_mica_checkpoint(tar18)  # the real scale loads

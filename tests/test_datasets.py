"""Tests of the MICA dataset side: image lists, sampling, bad files, config builders, build_lists."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from loguru import logger
from torch.utils.data import DataLoader

from configs.config import load_cfg
from datasets.build import KNOWN_DATASETS, build_train_dataset, build_val_datasets
from datasets.build_lists import build_image_list
from datasets.build_lists import main as build_lists_main
from datasets.image_lists import image_list_bytes, load_image_list, save_image_list
from datasets.mica_dataset import MICADataset, collate_mica
from tests.synthetic_dataset import make_synthetic_mica_dataset, synthetic_dataset_opts
from utils.errors import USER_ERRORS, MICAError

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "datasets" / "image_paths"


@pytest.fixture()
def warnings_log():
    """Messages of loguru warnings emitted during the test."""
    messages: list = []
    sink = logger.add(lambda m: messages.append(m.record["message"]), level="WARNING")
    yield messages
    logger.remove(sink)


@pytest.fixture()
def synth(tmp_path):
    """Synthetic LYHM (4 actors x 6 images) and FLORENCE (counts 5, 3, 7, 4)."""
    data, lists = tmp_path / "data", tmp_path / "lists"
    make_synthetic_mica_dataset(data, names=("LYHM",), n_actors=4, n_images=6, seed=1, lists_dir=lists)
    make_synthetic_mica_dataset(data, names=("FLORENCE",), n_actors=4, n_images=[5, 3, 7, 4], seed=2, lists_dir=lists)
    return data, lists


def _dataset(data: Path, lists: Path, name: str = "LYHM", **kw) -> MICADataset:
    return MICADataset(data / name, name, lists / f"{name}.npy", **kw)


# ------------------------------------------------------------------------------------------------
# image lists
# ------------------------------------------------------------------------------------------------
def test_shipped_lists_sizes_and_example():
    sizes = {"LYHM": 1211, "FLORENCE": 53, "STIRLING": 96}  # MICA_FACTS, "Actors per shipped list"
    for name, n in sizes.items():
        assert len(load_image_list(SHIPPED / f"{name}.npy")) == n
    lyhm = load_image_list(SHIPPED / "LYHM.npy")
    assert lyhm["00001"] == (["00001/2C.png", "00001/1C.png"], "00001/130925161618.npz")
    assert set(p.stem for p in SHIPPED.glob("*.npy")) == set(KNOWN_DATASETS)


@pytest.mark.shared_data
def test_shipped_lists_equal_originals(image_paths_dir):
    for original in sorted(image_paths_dir.glob("*.npy")):
        ours = load_image_list(SHIPPED / original.name)
        # Oracle: NumPy's own (unrestricted) loader on the trusted original file.
        ref = np.load(original, allow_pickle=True)[()]
        assert list(ours) == list(ref)
        assert all(ours[a] == (list(ref[a][0]), ref[a][1]) for a in ref)
        assert (SHIPPED / original.name).read_bytes() == original.read_bytes()


def test_list_roundtrip_readable_by_numpy(tmp_path):
    lst = {"x1": (["x1/a.jpg", "x1/b.jpg"], "x1/fit.npz"), "x2": (["x2/c.png"], "x2/x2.npz")}
    save_image_list(tmp_path / "L.npy", lst)
    assert load_image_list(tmp_path / "L.npy") == lst
    assert np.load(tmp_path / "L.npy", allow_pickle=True)[()] == lst
    # Our writer reproduces the original file byte for byte.
    lyhm = load_image_list(SHIPPED / "LYHM.npy")
    assert image_list_bytes(lyhm) == (SHIPPED / "LYHM.npy").read_bytes()


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _npy_with_object(obj) -> bytes:
    arr = np.empty((), dtype=object)
    arr[()] = obj
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def test_list_loader_refuses_code_and_bad_structure(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "evil.npy").write_bytes(_npy_with_object({"a": (["a/x.jpg"], _Evil(str(marker)))}))
    with pytest.raises(MICAError, match="evil.npy"):
        load_image_list(tmp_path / "evil.npy")
    assert not marker.exists()
    (tmp_path / "ints.npy").write_bytes(_npy_with_object({1: ([2], 3)}))
    with pytest.raises(MICAError, match="ints.npy"):
        load_image_list(tmp_path / "ints.npy")
    (tmp_path / "pair.npy").write_bytes(_npy_with_object({"a": ["a/x.jpg"]}))
    with pytest.raises(MICAError, match="not a pair"):
        load_image_list(tmp_path / "pair.npy")
    np.save(tmp_path / "floats.npy", np.zeros(3))
    with pytest.raises(MICAError, match="floats.npy"):
        load_image_list(tmp_path / "floats.npy")
    (tmp_path / "trunc.npy").write_bytes((SHIPPED / "STIRLING.npy").read_bytes()[:500])
    with pytest.raises(MICAError, match="trunc.npy"):
        load_image_list(tmp_path / "trunc.npy")
    with pytest.raises(FileNotFoundError, match="build_lists"):
        load_image_list(tmp_path / "nope.npy")


# ------------------------------------------------------------------------------------------------
# sampling
# ------------------------------------------------------------------------------------------------
def test_item_contents_match_files(synth):
    data, lists = synth
    ds = _dataset(data, lists, K=3)
    item = ds[2]
    assert item["arcface"].shape == (3, 3, 112, 112) and item["arcface"].dtype == torch.float32
    assert item["actor"] == "a002" and item["dataset"] == "LYHM"
    fit = np.load(data / "LYHM" / "FLAME_parameters" / "a002" / "a002.npz")
    assert torch.equal(item["identity"], torch.from_numpy(fit["betas"][:300]))
    for k, p in enumerate(item["image_paths"]):
        assert torch.equal(item["arcface"][k], torch.from_numpy(np.load(Path(p).with_suffix(".npy"))))


def test_sampling_without_replacement_covers_all(synth):
    data, lists = synth
    ds = _dataset(data, lists, K=4)
    seen = set()
    for epoch in range(60):
        ds.set_epoch(epoch)
        item = ds[1]
        assert len(set(item["image_paths"])) == 4
        seen.update(Path(p).name for p in item["image_paths"])
    assert seen == {f"img_{i:03d}.jpg" for i in range(6)}


def test_sampling_reproducible_per_seed_and_epoch(synth):
    data, lists = synth
    a, b = _dataset(data, lists, K=2, seed=7), _dataset(data, lists, K=2, seed=7)
    a.set_epoch(3)
    b.set_epoch(3)
    first = [a[i]["image_paths"] for i in range(4)]
    np.random.seed(123)
    torch.manual_seed(123)  # global state must not matter
    assert [b[i]["image_paths"] for i in reversed(range(4))][::-1] == first
    draws = []
    for epoch in range(4, 8):
        b.set_epoch(epoch)
        draws.append([b[i]["image_paths"] for i in range(4)])
    assert all(d != first for d in draws)
    c = _dataset(data, lists, K=2, seed=8)
    c.set_epoch(3)
    assert [c[i]["image_paths"] for i in range(4)] != first


def test_validation_takes_first_images_in_order(synth):
    data, lists = synth
    ds = _dataset(data, lists, "FLORENCE", K=2, is_eval=True)
    assert ds.eval_K == 3  # min(200, smallest count 3)
    names = load_image_list(lists / "FLORENCE.npy")
    for i in range(4):
        item = ds[i]
        assert item["arcface"].shape[0] == 3
        assert [Path(p).relative_to(data / "FLORENCE" / "arcface_input").as_posix() for p in item["image_paths"]] \
            == names[f"a{i:03d}"][0][:3]
    many = {f"b{i}": ([f"b{i}/{j}.jpg" for j in range(250 + i)], f"b{i}/f.npz") for i in range(3)}
    assert MICADataset(data / "X", "X", many, is_eval=True).eval_K == 200


# ------------------------------------------------------------------------------------------------
# missing / corrupt files
# ------------------------------------------------------------------------------------------------
def test_missing_and_corrupt_inputs_are_skipped(synth, warnings_log):
    data, lists = synth
    actor_dir = data / "LYHM" / "arcface_input" / "a000"
    (actor_dir / "img_001.npy").unlink()
    (actor_dir / "img_003.npy").write_bytes(b"not a numpy file")
    ds = _dataset(data, lists, K=4)
    for epoch in range(20):
        ds.set_epoch(epoch)
        item = ds[0]
        names = [Path(p).name for p in item["image_paths"]]
        assert item["actor"] == "a000" and len(set(names)) == 4
        assert not {"img_001.jpg", "img_003.jpg"} & set(names)
    assert sum("img_001.npy" in m for m in warnings_log) == 1
    assert sum("img_003.npy" in m for m in warnings_log) == 1


def test_actor_with_too_few_images_or_bad_fit_is_replaced(synth, warnings_log):
    data, lists = synth
    for i in range(4):
        (data / "LYHM" / "arcface_input" / "a001" / f"img_00{i}.npy").unlink()  # 2 of 6 left, K=3
    (data / "LYHM" / "FLAME_parameters" / "a002" / "a002.npz").write_bytes(b"garbage")
    ds = _dataset(data, lists, K=3)
    for epoch in range(5):
        ds.set_epoch(epoch)
        for i in (1, 2):
            item = ds[i]
            assert item["actor"] in ("a000", "a003") and item["arcface"].shape == (3, 3, 112, 112)
    assert sum("actor a001" in m for m in warnings_log) == 1
    assert sum("a002.npz" in m for m in warnings_log) == 1
    for i in range(4):
        (data / "LYHM" / "FLAME_parameters" / f"a{i:03d}" / f"a{i:03d}.npz").unlink()
    with pytest.raises(MICAError, match="no usable actor"):
        _dataset(data, lists, K=3)[0]


# ------------------------------------------------------------------------------------------------
# builders from config
# ------------------------------------------------------------------------------------------------
def _cfg(data, lists, *extra, **kw):
    return load_cfg("configs/mica.yml", synthetic_dataset_opts(data, lists, **kw) + list(extra))


def test_builders(synth):
    data, lists = synth
    train = build_train_dataset(_cfg(data, lists, train=("lyhm", "Florence"), K=3))
    assert train.names == ["LYHM", "FLORENCE"] and len(train) == 8
    train.set_epoch(1)
    assert all(d.epoch == 1 for d in train.datasets)
    assert train[5]["dataset"] == "FLORENCE" and train[5]["arcface"].shape == (3, 3, 112, 112)
    (val,) = build_val_datasets(_cfg(data, lists))
    assert val.is_eval and val.name == "FLORENCE" and val.eval_K == 3
    batch = collate_mica([train[0], train[1]])
    assert batch["arcface"].shape == (2, 3, 3, 112, 112) and batch["identity"].shape == (2, 300)
    assert batch["actor"] == ["a000", "a001"] and len(batch["image_paths"][1]) == 3


def _one_line_error(cfg, match, builder=build_train_dataset):
    with pytest.raises(MICAError, match=match) as e:
        builder(cfg)
    assert "\n" not in str(e.value)


def test_bad_config_errors(synth, tmp_path):
    data, lists = synth
    _one_line_error(_cfg(tmp_path / "missing", lists), "dataset.root")
    _one_line_error(_cfg(data, lists, train=("NOPE",)), "unknown dataset 'NOPE'")
    _one_line_error(_cfg(data, lists, train=("STIRLING",)), "image list .*STIRLING.npy is missing")
    _one_line_error(_cfg(data, tmp_path / "nolists"), "LYHM.npy is missing")
    _one_line_error(_cfg(data, lists, val=("NOPE",)), "dataset.eval_data: unknown dataset", build_val_datasets)
    save_image_list(lists / "STIRLING.npy", {"x": (["x/a.jpg"], "x/x.npz")})
    _one_line_error(_cfg(data, lists, train=("STIRLING",)), "dataset folder .*STIRLING does not exist")
    _one_line_error(_cfg(data, lists, batch_size=5), r"dataset.batch_size = 5 .*\(4 in LYHM\)")
    _one_line_error(_cfg(data, lists, K=7), "dataset.K = 7")
    _one_line_error(_cfg(data, lists, "dataset.training_data", "[]"), "dataset.training_data is empty")
    assert build_val_datasets(_cfg(data, lists, "dataset.eval_data", "[]")) == []


# ------------------------------------------------------------------------------------------------
# build_lists
# ------------------------------------------------------------------------------------------------
def test_build_lists_roundtrip(synth, tmp_path):
    data, lists = synth
    expected = load_image_list(lists / "FLORENCE.npy")
    assert build_image_list(data / "FLORENCE") == expected
    out = tmp_path / "out" / "FLORENCE.npy"
    assert build_lists_main([str(data / "FLORENCE"), "-o", str(out)]) == 0
    assert load_image_list(out) == expected
    with pytest.raises(MICAError, match="--overwrite"):
        build_lists_main([str(data / "FLORENCE"), "-o", str(out)])
    # crops without .npy, actors without a fit, and extra files are left out
    (data / "FLORENCE" / "arcface_input" / "a000" / "img_004.npy").unlink()
    (data / "FLORENCE" / "FLAME_parameters" / "a001" / "a001.npz").unlink()
    (data / "FLORENCE" / "arcface_input" / "a002" / "notes.txt").write_text("x")
    got = build_image_list(data / "FLORENCE")
    assert list(got) == ["a000", "a002", "a003"]
    assert got["a000"][0] == expected["a000"][0][:4] and got["a002"] == expected["a002"]


def test_build_lists_cli_errors(tmp_path):
    with pytest.raises(USER_ERRORS, match="arcface_input does not exist") as e:
        build_lists_main([str(tmp_path / "none"), "-o", str(tmp_path / "x.npy")])
    assert "\n" not in str(e.value)
    assert not (tmp_path / "x.npy").exists()


@pytest.mark.slow
def test_dataloader_workers_reproducible(synth):
    data, lists = synth
    ds = _dataset(data, lists, K=2, seed=3)
    ds.set_epoch(2)
    def paths(workers):
        loader = DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=collate_mica)
        return [b["image_paths"] for b in loader]
    assert paths(0) == paths(2)

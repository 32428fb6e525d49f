"""Safe FLAME file loaders: real formats, refusal of foreign globals, clear user errors."""
from __future__ import annotations

import os
import pickle
import sys

import numpy as np
import pytest
import torch

from models.flame_io import FLAME_URL, load_flame_masks, load_flame_model, load_landmark_embedding, safe_unpickle
from tests.legacy_pickle import pickle_globals
from tests.synthetic_flame import (
    embedding_npy_bytes,
    generic_model_bytes,
    make_model_arrays,
    masks_pkl_bytes,
    write_synthetic_flame,
)
from utils.errors import MICAError
from utils.safe_pickle import FLAME_MODEL, NUMPY_DATA, TORCH_TENSORS

# MICA_FACTS, "generic_model.pkl": the globals a genuine protocol-2 file names
# (numpy.core.multiarray.scalar "possibly" as well).
FLAME_P2_GLOBALS = {"chumpy.ch.Ch", "__builtin__.set", "numpy.core.multiarray._reconstruct", "numpy.ndarray",
                    "numpy.dtype", "scipy.sparse.csc.csc_matrix"}
CHUMPY_STATE_KEYS = {"x", "_dirty_vars", "_itr", "_make_dense", "_make_sparse", "_depends_on_deps"}

MASK_SIZES = {"face": 1787, "eye_region": 751, "left_eye_region": 287, "right_eye_region": 287,
              "left_eyeball": 546, "right_eyeball": 546, "left_ear": 588, "right_ear": 588,
              "forehead": 133, "lips": 254, "nose": 379, "scalp": 489, "neck": 253, "boundary": 114}


class _System:
    """Pickles as a call of os.system (what a malicious file would do)."""

    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _Eval:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


@pytest.fixture(scope="module")
def small_flame(tmp_path_factory):
    return write_synthetic_flame(tmp_path_factory.mktemp("small_flame"), seed=3, real=False)


def test_synthetic_model_is_real_format_and_loads(small_flame):
    raw = (small_flame / "generic_model.pkl").read_bytes()
    assert b"chumpy.ch" in raw and b"csc_matrix" in raw  # the real file's foreign classes
    assert b"numpy.core.multiarray" in raw and b"_codecs" not in raw  # Python-2 names and strings
    assert "chumpy" not in sys.modules and "chumpy.ch" not in sys.modules
    with pytest.raises(ModuleNotFoundError):  # a plain pickle.load needs chumpy
        pickle.loads(raw, encoding="latin1")
    ref = make_model_arrays(seed=3, real=False)["model"]
    m = load_flame_model(small_flame / "generic_model.pkl")
    n_v = ref["v_template"].shape[0]
    np.testing.assert_array_equal(m.v_template, ref["v_template"])
    np.testing.assert_array_equal(m.shapedirs, ref["shapedirs"])
    np.testing.assert_array_equal(m.posedirs, ref["posedirs"])
    np.testing.assert_array_equal(m.J_regressor, ref["J_regressor"])
    np.testing.assert_array_equal(m.weights, ref["weights"])
    np.testing.assert_array_equal(m.faces, ref["f"].astype(np.int64))
    assert m.shapedirs.shape == (n_v, 3, 400) and m.posedirs.shape == (n_v, 3, 36)
    assert m.J_regressor.shape == (5, n_v) and m.faces.dtype == np.int64
    assert m.kintree_table[0].tolist() == [-1, 0, 1, 1, 1]  # 2**32-1 root parent fixed


@pytest.mark.shared_data
def test_real_topology_synthetic(real_flame_dir):
    m = load_flame_model(real_flame_dir / "generic_model.pkl")
    assert m.v_template.shape == (5023, 3) and m.faces.shape == (9976, 3)


def test_refuses_os_system_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "generic_model.pkl"
    bad.write_bytes(pickle.dumps({"f": _System(f"touch {marker}")}, protocol=2))
    with pytest.raises(MICAError) as e:
        load_flame_model(bad)
    msg = str(e.value)
    assert str(bad) in msg and "system" in msg and "\n" not in msg
    assert not marker.exists()
    with pytest.raises(MICAError, match="eval"):
        safe_unpickle(pickle.dumps(_Eval()), "x.pkl")


def test_refuses_payload_hidden_in_chumpy_state(tmp_path, small_flame):
    """A global nested inside a Ch object's state is refused too."""
    marker = tmp_path / "pwned2"
    model = dict(make_model_arrays(seed=3, real=False)["model"])
    model["bs_style"] = _System(f"touch {marker}")
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(generic_model_bytes(model))
    with pytest.raises(MICAError, match="system"):
        load_flame_model(path)
    assert not marker.exists()


def test_refuses_in_masks_and_embedding(tmp_path):
    marker = tmp_path / "pwned3"
    masks = tmp_path / "FLAME_masks.pkl"
    masks.write_bytes(pickle.dumps({"face": _System(f"touch {marker}")}))
    with pytest.raises(MICAError, match="FLAME_masks.pkl"):
        load_flame_masks(masks)
    lmk = tmp_path / "landmark_embedding.npy"
    np.save(lmk, np.array({"x": _System(f"touch {marker}")}, dtype=object), allow_pickle=True)
    with pytest.raises(MICAError, match="system"):
        load_landmark_embedding(lmk)
    assert not marker.exists()


def test_missing_file_says_where_to_get_it(tmp_path):
    path = tmp_path / "data" / "generic_model.pkl"
    with pytest.raises(FileNotFoundError) as e:
        load_flame_model(path)
    assert str(path) in str(e.value) and FLAME_URL in str(e.value)
    with pytest.raises(FileNotFoundError, match="landmark_embedding"):
        load_landmark_embedding(tmp_path / "landmark_embedding.npy")
    with pytest.raises(FileNotFoundError, match="FLAME_masks"):
        load_flame_masks(tmp_path / "FLAME_masks.pkl")


@pytest.mark.parametrize("name", ["generic_model.pkl", "landmark_embedding.npy", "FLAME_masks.pkl"])
def test_truncated_files(tmp_path, small_flame, name):
    raw = (small_flame / name).read_bytes()
    path = tmp_path / name
    path.write_bytes(raw[: len(raw) // 2])
    loader = {"generic_model.pkl": load_flame_model, "landmark_embedding.npy": load_landmark_embedding,
              "FLAME_masks.pkl": load_flame_masks}[name]
    with pytest.raises(MICAError) as e:
        loader(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(MICAError, match=str(path)):
        loader(path)


def test_wrong_content(tmp_path):
    model = dict(make_model_arrays(seed=3, real=False)["model"])
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(pickle.dumps({k: v for k, v in model.items() if k != "shapedirs"}))
    with pytest.raises(MICAError, match="shapedirs"):
        load_flame_model(path)
    model["posedirs"] = model["posedirs"][:, :, :20]
    path.write_bytes(generic_model_bytes(model))
    with pytest.raises(MICAError, match=r"posedirs.*\(262, 3, 36\)|posedirs"):
        load_flame_model(path)
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(MICAError, match="dict"):
        load_flame_model(path)


@pytest.mark.shared_data
def test_real_landmark_embedding(flame_public_dir):
    path = flame_public_dir / "landmark_embedding.npy"
    emb = load_landmark_embedding(path)
    # Oracle: the trusted plain loader (needs torch for the dynamic entries).
    ref = np.load(path, allow_pickle=True, encoding="latin1")[()]
    for key in ("static_lmk_faces_idx", "static_lmk_bary_coords", "full_lmk_faces_idx", "full_lmk_bary_coords"):
        np.testing.assert_array_equal(getattr(emb, key), np.asarray(ref[key]))
    for key in ("dynamic_lmk_faces_idx", "dynamic_lmk_bary_coords"):
        assert isinstance(ref[key], torch.Tensor)
        np.testing.assert_array_equal(getattr(emb, key), ref[key].numpy())
    assert emb.static_lmk_faces_idx.shape == (51,) and emb.dynamic_lmk_faces_idx.shape == (79, 17)
    assert emb.dynamic_lmk_bary_coords.shape == (79, 17, 3) and emb.full_lmk_faces_idx.shape == (1, 68)
    # The inner 51 of the full 68 are the static landmarks.
    np.testing.assert_array_equal(emb.full_lmk_faces_idx[0, 17:], emb.static_lmk_faces_idx)
    np.testing.assert_allclose(emb.static_lmk_bary_coords.sum(1), 1.0, atol=1e-5)


@pytest.mark.shared_data
def test_real_masks(flame_public_dir):
    masks = load_flame_masks(flame_public_dir / "FLAME_masks.pkl")
    assert {k: len(v) for k, v in masks.items()} == MASK_SIZES
    assert all(v.dtype == np.int64 and v.max() < 5023 for v in masks.values())


def test_torch_global_other_than_tensor_rebuild_refused():
    class _TorchLoad:
        def __reduce__(self):
            return (torch.load, ("/nonexistent",))

    with pytest.raises(MICAError, match="torch.serialization.load|torch.load"):
        safe_unpickle(pickle.dumps(_TorchLoad()), "x.npy", TORCH_TENSORS)


def test_pickled_tensor_roundtrip():
    """A plain pickle of torch tensors (as in landmark_embedding.npy) loads as numpy."""
    t = torch.arange(12, dtype=torch.float32).view(3, 4)
    out = safe_unpickle(pickle.dumps({"t": t, "i": torch.tensor([5, 6])}, protocol=2), "x", TORCH_TENSORS)
    np.testing.assert_array_equal(out["t"], t.numpy())
    np.testing.assert_array_equal(out["i"], [5, 6])


@pytest.mark.parametrize("protocol", [0, 1])
def test_old_protocols_use_copy_reg(tmp_path, protocol):
    """Protocol 0/1 pickles rebuild objects through copy_reg._reconstructor (allowed for stand-ins only)."""
    ref = make_model_arrays(seed=4, real=False)["model"]
    raw = generic_model_bytes(ref, protocol=protocol)
    assert pickle_globals(raw) == FLAME_P2_GLOBALS | {"copy_reg._reconstructor", "__builtin__.object"}
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(raw)
    m = load_flame_model(path)
    np.testing.assert_array_equal(m.shapedirs, ref["shapedirs"])
    np.testing.assert_array_equal(m.J_regressor, ref["J_regressor"])

    class _Evil:
        def __reduce__(self):
            import copyreg
            return (copyreg._reconstructor, (_System, object, None))

    with pytest.raises(MICAError, match="_System|corrupt"):
        safe_unpickle(pickle.dumps(_Evil(), protocol=1), "x.pkl")


def test_resaved_python3_file(tmp_path):
    """A chumpy-free copy re-saved by Python 3 (plain arrays, protocol 5) also loads."""
    ref = make_model_arrays(seed=5, real=False)["model"]
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(pickle.dumps(dict(ref), protocol=5))
    m = load_flame_model(path)
    np.testing.assert_array_equal(m.weights, ref["weights"])
    np.testing.assert_array_equal(m.posedirs, ref["posedirs"])


class _Recorder:
    """Stands in for chumpy's Ch / old scipy's csc_matrix in a plain unpickler (the oracle)."""

    def __setstate__(self, state):
        self.state = state


class _RecordingUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in (("chumpy.ch", "Ch"), ("scipy.sparse.csc", "csc_matrix")):
            return type(name, (_Recorder,), {})
        if (module, name) == ("__builtin__", "set"):
            return set
        if (module, name) == ("copy_reg", "_reconstructor"):
            import copyreg
            return copyreg._reconstructor
        if (module, name) == ("__builtin__", "object"):
            return object
        return super().find_class(module, name)


@pytest.mark.parametrize("protocol", [2, 0])
def test_synthetic_model_names_exactly_the_real_globals(protocol):
    """The synthetic file carries what chumpy writes: the protocol-2 globals of MICA_FACTS (plus
    copy_reg._reconstructor and __builtin__.object at protocol 0), each Ch built with NEWOBJ (p2)
    and BUILD with chumpy's whole state; and the loader accepts it."""
    import pickletools

    ref = make_model_arrays(seed=6, real=False)["model"]
    raw = generic_model_bytes(ref, protocol=protocol)
    expected = FLAME_P2_GLOBALS if protocol == 2 else FLAME_P2_GLOBALS | {"copy_reg._reconstructor", "__builtin__.object"}
    assert pickle_globals(raw) == expected
    if protocol == 2:
        ops = [op.name for op, _, _ in pickletools.genops(raw)]
        assert ops.count("NEWOBJ") == 6 and ops.count("BUILD") >= 6  # 5 Ch + csc_matrix
    data = _RecordingUnpickler(__import__("io").BytesIO(raw), encoding="latin1").load()
    for key in ("v_template", "shapedirs", "posedirs", "weights", "J"):
        state = data[key].state
        assert set(state) == CHUMPY_STATE_KEYS, key
        assert state["_dirty_vars"] == {"x"} and state["_itr"] is None and state["_depends_on_deps"] == {}
        assert state["_make_dense"] is False and state["_make_sparse"] is False
        np.testing.assert_array_equal(state["x"], ref[key])
    assert set(data["J_regressor"].state) >= {"data", "indices", "indptr", "_shape"}
    path = __import__("pathlib").Path(__import__("tempfile").mkdtemp()) / "generic_model.pkl"
    path.write_bytes(raw)
    m = load_flame_model(path)
    np.testing.assert_array_equal(m.shapedirs, ref["shapedirs"])
    np.testing.assert_array_equal(m.J_regressor, ref["J_regressor"])


def test_set_and_frozenset_accepted_only_for_the_flame_model():
    payload = {"a": {"x"}, "b": frozenset({1, 2})}
    for protocol in (0, 2):
        for py2_names in (True, False):  # __builtin__.set / builtins.set
            raw = pickle.dumps(payload, protocol=protocol, fix_imports=py2_names)
            assert {"__builtin__.set", "__builtin__.frozenset"} <= pickle_globals(raw) if py2_names else \
                {"builtins.set", "builtins.frozenset"} <= pickle_globals(raw)
            assert safe_unpickle(raw, "m.pkl", FLAME_MODEL) == payload
    with pytest.raises(MICAError, match="refused to load the global '__builtin__.set'"):
        safe_unpickle(pickle.dumps(payload, protocol=2), "masks.pkl", NUMPY_DATA)
    # everything else stays refused in the FLAME format, builtins included
    for evil in (_Eval(), _System("true")):
        with pytest.raises(MICAError, match="refused"):
            safe_unpickle(pickle.dumps(evil, protocol=2), "m.pkl", FLAME_MODEL)

    class _GetAttr:
        def __reduce__(self):
            return (getattr, (set, "mro"))

    with pytest.raises(MICAError, match="getattr"):
        safe_unpickle(pickle.dumps(_GetAttr(), protocol=2), "m.pkl", FLAME_MODEL)


@pytest.mark.parametrize("key,value", [("v_template", np.nan), ("shapedirs", np.inf), ("J_regressor", np.nan),
                                       ("weights", -np.inf), ("posedirs", np.nan)])
def test_non_finite_model_array_is_named(tmp_path, key, value):
    model = dict(make_model_arrays(seed=3, real=False)["model"])
    arr = np.array(model[key], dtype=np.float64)
    arr.flat[7] = value
    model[key] = arr
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(generic_model_bytes(model))
    with pytest.raises(MICAError) as e:
        load_flame_model(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and f"'{key}'" in msg and "1 NaN or infinite" in msg


def _copy(a):
    return a.numpy().copy() if isinstance(a, torch.Tensor) else np.array(a)


@pytest.mark.parametrize("key,bad", [("static_lmk_faces_idx", "high"), ("full_lmk_faces_idx", "negative"),
                                     ("dynamic_lmk_faces_idx", "high")])
def test_landmark_face_index_out_of_range(tmp_path, key, bad):
    arrays = make_model_arrays(seed=3, real=False)
    n_faces = len(arrays["faces"])
    emb = dict(arrays["embedding"])
    a = _copy(emb[key])
    a.flat[3] = n_faces if bad == "high" else -2
    emb[key] = torch.from_numpy(a) if isinstance(emb[key], torch.Tensor) else a
    path = tmp_path / "landmark_embedding.npy"
    path.write_bytes(embedding_npy_bytes(emb))
    load_landmark_embedding(path)  # the file on its own parses ...
    with pytest.raises(MICAError) as e:  # ... but not against this mesh
        load_landmark_embedding(path, n_faces=n_faces)
    msg = str(e.value)
    assert str(path) in msg and key in msg and f"[0, {n_faces})" in msg and "\n" not in msg
    # FLAME.from_files checks against the model's triangle count
    from models.flame import FLAME
    folder = write_synthetic_flame(tmp_path / "flame", seed=3, real=False)
    with pytest.raises(MICAError, match=key):
        FLAME.from_files(folder / "generic_model.pkl", path, 300, 100)


def test_landmark_bary_shape_and_finite(tmp_path):
    emb = dict(make_model_arrays(seed=3, real=False)["embedding"])
    path = tmp_path / "landmark_embedding.npy"
    bad = dict(emb, static_lmk_bary_coords=np.asarray(emb["static_lmk_bary_coords"])[:, :2])
    path.write_bytes(embedding_npy_bytes(bad))
    with pytest.raises(MICAError, match=r"static_lmk_bary_coords' has shape \(51, 2\), expected \(51, 3\)"):
        load_landmark_embedding(path)
    b = _copy(emb["dynamic_lmk_bary_coords"])
    b[4, 5, 1] = np.nan
    path.write_bytes(embedding_npy_bytes(dict(emb, dynamic_lmk_bary_coords=torch.from_numpy(b))))
    with pytest.raises(MICAError, match="dynamic_lmk_bary_coords' holds 1 NaN or infinite"):
        load_landmark_embedding(path)


def test_mask_index_out_of_range(tmp_path):
    arrays = make_model_arrays(seed=3, real=False)
    n_v = len(arrays["model"]["v_template"])
    masks = dict(arrays["masks"])
    masks["nose"] = np.append(masks["nose"], n_v)
    path = tmp_path / "FLAME_masks.pkl"
    path.write_bytes(masks_pkl_bytes(masks))
    assert load_flame_masks(path)["nose"][-1] == n_v  # no vertex count, no range check
    with pytest.raises(MICAError) as e:
        load_flame_masks(path, n_vertices=n_v)
    msg = str(e.value)
    assert str(path) in msg and "'nose'" in msg and f"vertex {n_v}" in msg and f"[0, {n_v})" in msg


@pytest.mark.shared_data
def test_synthetic_masks_and_embedding_follow_the_real_files(flame_public_dir):
    """The random-topology generators write masks (Python 2, protocol 0) and the embedding
    (numpy-1 np.save, protocol 3) naming the same globals as the real public files."""
    from numpy.lib import format as npy_format

    def npy_pickle(raw):
        f = __import__("io").BytesIO(raw)
        npy_format.read_magic(f)
        npy_format.read_array_header_1_0(f)
        return raw[f.tell():]

    arrays = make_model_arrays(seed=3, real=False)
    real_masks = (flame_public_dir / "FLAME_masks.pkl").read_bytes()
    ours = masks_pkl_bytes(arrays["masks"])
    assert pickle_globals(ours) == pickle_globals(real_masks)
    assert ours[:1] != b"\x80" and real_masks[:1] != b"\x80"  # protocol 0, no PROTO opcode
    real_emb = npy_pickle((flame_public_dir / "landmark_embedding.npy").read_bytes())
    ours_emb = npy_pickle(embedding_npy_bytes(arrays["embedding"]))
    assert pickle_globals(ours_emb) == pickle_globals(real_emb)
    assert ours_emb[:2] == real_emb[:2] == b"\x80\x03"

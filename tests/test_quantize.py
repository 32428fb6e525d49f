"""Int8 ONNX (micalib.export.quantize): accuracy vs torch fp32, PReLU rewrite, dynamic batch, CLI, errors.

Bounds come from measurements on these random well-conditioned weights (iresnet18, uniform inputs):
identity-code cosine min 0.998 (codes of different inputs: cosine ~0.38), coefficient cosine
min 0.9998, mean vertex deviation 10-14% of the mean distance of vertices from their across-input
mean (iresnet100: bench/README.md, Encoder). Trained weights are not available here.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from micalib.export.cli import main
from micalib.export.quantize import (
    _ShapeAndCode,
    compare_with_torch,
    export_int8,
    load_calibration_folder,
    rewrite_batchnorm,
    rewrite_prelu,
    synthetic_calibration,
)
from micalib.mica import MICA
from micalib.predictor import Predictor
from models.flame import FLAME
from tests.synthetic_weights import random_arcface, random_mapping_network, write_random_mica_tar
from utils.errors import USER_ERRORS, MICAError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def nets():
    return random_arcface("iresnet18", 0), random_mapping_network(3, 300, 1)


@pytest.fixture(scope="module")
def int8_file(nets, tmp_path_factory) -> Path:
    arcface, regressor = nets
    return export_int8(arcface, regressor, tmp_path_factory.mktemp("int8") / "m.onnx", synthetic_calibration(16, 0),
                       with_code=True)


def test_int8_close_to_torch_fp32(nets, int8_file):
    arcface, regressor = nets
    model = onnx.load(str(int8_file))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and not ops & {"PRelu", "BatchNormalization"}
    assert {p.key: p.value for p in model.metadata_props}["mica_precision"] == "int8"
    # int8 weights: the file is about a quarter of the float one (iresnet18 fp32: 94 MiB)
    assert int8_file.stat().st_size < 35 * 2**20
    res = compare_with_torch(_ShapeAndCode(arcface, regressor).eval(), int8_file, synthetic_calibration(12, 7))
    shape_cos, code_cos = res["cosine"]
    assert code_cos.min() >= 0.995 and shape_cos.min() >= 0.999
    # quantised, not identical: a float model would give cosines of 1 - 1e-7
    assert code_cos.max() < 0.99999
    # the error is small against how much the codes differ between inputs
    codes = res["torch"][1]
    between = codes @ codes.T
    assert (1 - code_cos).mean() < 0.2 * (1 - between[~np.eye(len(codes), dtype=bool)]).mean()


def test_dynamic_batch_axis(int8_file):
    import onnxruntime as ort

    dim = onnx.load(str(int8_file)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param and not dim.dim_value
    sess = ort.InferenceSession(str(int8_file), providers=["CPUExecutionProvider"])
    x = synthetic_calibration(5, 3)
    full = sess.run(None, {"images": x})
    assert full[0].shape == (5, 300) and full[1].shape == (5, 512)
    one = sess.run(None, {"images": x[2:3]})[0]
    np.testing.assert_allclose(one[0], full[0][2], atol=1e-5)  # per-tensor static scales: batch-independent


def test_prelu_rewrite_is_exact(tmp_path):
    """Max(x, a x) == PReLU(x) for slopes in [0, 1]; other slopes are left as PRelu."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    def model(slope):
        g = helper.make_graph([helper.make_node("PRelu", ["x", "a"], ["y"], name="p")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4, 4])],
                              [numpy_helper.from_array(np.asarray(slope, np.float32).reshape(3, 1, 1), "a")])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    x = np.random.default_rng(0).normal(size=(2, 3, 4, 4)).astype(np.float32)
    slope = [0.0, 0.25, 1.0]
    m = model(slope)
    assert rewrite_prelu(m) == 1 and [n.op_type for n in m.graph.node] == ["Mul", "Max"]
    y = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    a = np.asarray(slope, np.float32).reshape(1, 3, 1, 1)
    np.testing.assert_array_equal(y, np.where(x > 0, x, a * x))  # PReLU by hand
    m = model([-0.5, 0.25, 1.5])
    assert rewrite_prelu(m) == 0 and [n.op_type for n in m.graph.node] == ["PRelu"]


def test_batchnorm_rewrite_matches_formula():
    """x * s + t with s = gamma / sqrt(var + eps), t = beta - mean * s, against BN by hand."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    gamma, beta, mean = (rng.normal(size=3).astype(np.float32) for _ in range(3))
    var = rng.uniform(0.5, 2, 3).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in zip((gamma, beta, mean, var), "gbmv", strict=True)]
    g = helper.make_graph([helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"], name="bn",
                                            epsilon=1e-3)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4, 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    assert rewrite_batchnorm(m) == ["bn_add"] and [n.op_type for n in m.graph.node] == ["Mul", "Add"]
    x = rng.normal(size=(2, 3, 4, 4)).astype(np.float32)
    y = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    c = lambda a: a.reshape(1, 3, 1, 1)  # noqa: E731
    np.testing.assert_allclose(y, (x - c(mean)) / np.sqrt(c(var) + 1e-3) * c(gamma) + c(beta), atol=1e-5)


def test_predictor_runs_int8_unchanged(nets, int8_file, synthetic_flame_dir):
    d = Path(synthetic_flame_dir)
    flame = FLAME.from_files(d / "generic_model.pkl", d / "landmark_embedding.npy", 300, 100)
    arcface, regressor = nets
    x = synthetic_calibration(6, 11)
    ref = Predictor(model=MICA(arcface, regressor, flame), device="cpu")(x)
    pred = Predictor(flame, onnx_path=int8_file, backend="onnxruntime", device="cpu", batch_size=4)
    assert pred.onnx_precision == "int8"
    got = pred(x)
    assert got["identity"].shape == (6, 300) and got["vertices"].shape == ref["vertices"].shape
    dev = np.linalg.norm(got["vertices"] - ref["vertices"], axis=-1).mean()
    spread = np.linalg.norm(ref["vertices"] - ref["vertices"].mean(0), axis=-1).mean()
    assert 0 < dev < 0.3 * spread  # measured 14%: int8 is far coarser than bf16 (2%)


def test_calibration_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="demo.py"):
        load_calibration_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MICAError, match="no .npy"):
        load_calibration_folder(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    np.save(bad / "a.npy", np.zeros((112, 112, 3), np.float32))
    with pytest.raises(MICAError, match=r"a\.npy has shape \(112, 112, 3\)"):
        load_calibration_folder(bad)
    np.save(bad / "a.npy", np.full((3, 112, 112), 200.0, np.float32))
    with pytest.raises(MICAError, match="outside"):
        load_calibration_folder(bad)
    (bad / "a.npy").write_bytes(b"not numpy")
    with pytest.raises(MICAError, match="cannot be read"):
        load_calibration_folder(bad)
    good = tmp_path / "good"
    good.mkdir()
    for i in range(3):
        np.save(good / f"{i}.npy", synthetic_calibration(1, i)[0])
    np.save(good / "batch.npy", synthetic_calibration(4, 9))
    x = load_calibration_folder(good, limit=5)
    assert x.shape == (5, 3, 112, 112) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0], synthetic_calibration(1, 0)[0])


@pytest.mark.slow
def test_cli_int8(tmp_path):
    tar = write_random_mica_tar(tmp_path / "mica.tar", arch="iresnet18", seed=2)
    calib = tmp_path / "arcface"
    calib.mkdir()
    for i, x in enumerate(synthetic_calibration(10, 4)):
        np.save(calib / f"img{i}.npy", x)
    out = tmp_path / "out" / "m8.onnx"
    assert main(["--cfg", str(ROOT / "configs/mica.yml"), "--onnx", str(out), "--checkpoint", str(tar), "--int8",
                 "--calib", str(calib), "model.arch", "iresnet18"]) == 0
    assert out.is_file() and not list(out.parent.glob(".*tmp*"))
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["shape"]
    assert sess.run(None, {"images": synthetic_calibration(3, 1)})[0].shape == (3, 300)
    # a bad calibration folder is one user error naming it, before any export
    with pytest.raises(USER_ERRORS, match="nowhere") as e:
        main(["--onnx", str(tmp_path / "x.onnx"), "--checkpoint", str(tar), "--int8", "--calib",
              str(tmp_path / "nowhere"), "model.arch", "iresnet18"])
    assert "calibration folder" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "x.onnx").exists()

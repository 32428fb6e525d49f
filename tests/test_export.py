"""ONNX export: onnxruntime matches torch (batch 1 and 4, dynamic axis); CLI and predictor backend."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from micalib.export.cli import main
from micalib.export.onnx_graph import export_onnx, validate_onnx
from micalib.mica import MICA
from micalib.predictor import Predictor
from models.flame import FLAME
from tests.synthetic_weights import random_arcface, random_mapping_network, write_random_mica_tar
from utils.errors import MICAError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def net():
    return MICA(random_arcface("iresnet18", 0), random_mapping_network(3, 300, 1), None).image_to_shape().eval()


@pytest.fixture(scope="module")
def onnx_file(net, tmp_path_factory) -> Path:
    return export_onnx(net, tmp_path_factory.mktemp("onnx") / "mica.onnx")


def test_onnx_matches_torch_batch_1_and_4(net, onnx_file):
    import onnxruntime as ort

    model = onnx.load(str(onnx_file))
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param and not dim.dim_value  # symbolic batch axis
    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    for b in (1, 4):
        x = torch.rand(b, 3, 112, 112, generator=torch.Generator().manual_seed(b)) * 2 - 1
        with torch.no_grad():
            ref = net(x).numpy()
        got = sess.run(None, {"images": x.numpy()})[0]
        assert got.shape == (b, 300)
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
    assert max(validate_onnx(net, onnx_file).values()) <= 1e-4


def test_validation_catches_a_wrong_model(net, onnx_file):
    other = MICA(random_arcface("iresnet18", 5), random_mapping_network(3, 300, 1), None).image_to_shape().eval()
    with pytest.raises(MICAError, match="differs from torch"):
        validate_onnx(other, onnx_file)


def test_predictor_onnxruntime_backend_matches_torch(net, onnx_file, synthetic_flame_dir):
    d = Path(synthetic_flame_dir)
    flame = FLAME.from_files(d / "generic_model.pkl", d / "landmark_embedding.npy", 300, 100)
    model = MICA(random_arcface("iresnet18", 0), random_mapping_network(3, 300, 1), flame)
    x = (torch.rand(3, 3, 112, 112, generator=torch.Generator().manual_seed(3)) * 2 - 1).numpy()
    a = Predictor(model=model, device="cpu")(x)
    b = Predictor(flame, onnx_path=onnx_file, backend="onnxruntime", device="cpu", batch_size=2)(x)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-4, rtol=0)
    with pytest.raises(MICAError, match="onnxruntime"):
        Predictor(flame, onnx_path=onnx_file, backend="onnxruntime", precision="bf16")
    with pytest.raises(FileNotFoundError, match="micalib.export"):
        Predictor(flame, onnx_path=onnx_file.parent / "none.onnx", backend="onnxruntime")


def test_batch_parallel_split_gives_the_same_result(onnx_file):
    """A batch split into small chunks (concurrent single-threaded runs) equals the images
    run one by one through the ordinary session, in order; single images are not split."""
    from micalib.predictor import OrtEncoder

    x = torch.rand(5, 3, 112, 112, generator=torch.Generator().manual_seed(5)) * 2 - 1
    split = OrtEncoder(onnx_file, "cpu", threads=3, batch_parallel=True)
    serial = OrtEncoder(onnx_file, "cpu", threads=3, batch_parallel=False)
    one_by_one = torch.cat([serial(x[i:i + 1]) for i in range(5)])
    got = split(x)
    assert split.last_chunks == min(5, 3 * OrtEncoder.CHUNKS_PER_THREAD) and got.shape == (5, 300)
    np.testing.assert_allclose(got.numpy(), one_by_one.numpy(), atol=1e-5, rtol=0)
    split(x[:1])
    assert split.last_chunks == 1
    serial(x)
    assert serial.last_chunks == 1
    assert OrtEncoder(onnx_file, "cpu", threads=1).batch_parallel is False  # nothing to split across


@pytest.mark.slow
def test_cli_writes_and_validates(tmp_path):
    tar = write_random_mica_tar(tmp_path / "mica.tar", arch="iresnet18", seed=2)
    out = tmp_path / "out" / "m.onnx"
    assert main(["--cfg", str(ROOT / "configs/mica.yml"), "--onnx", str(out), "--checkpoint", str(tar),
                 "model.arch", "iresnet18"]) == 0
    assert out.is_file() and not list(out.parent.glob(".*tmp*"))
    # no checkpoint: one user error naming the option
    with pytest.raises(MICAError, match="no checkpoint to export") as e:
        main(["--cfg", str(ROOT / "configs/mica.yml"), "--onnx", str(out)])
    assert "-m " in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow
def test_iresnet100_mica_tar_roundtrip_and_onnx(tmp_path):
    """The full-size network colleagues' end-to-end tests use: bit-exact reload, ONNX within 1e-4."""
    tar = write_random_mica_tar(tmp_path / "mica.tar", arch="iresnet100", seed=0)
    model = MICA(random_arcface("iresnet100", 1), random_mapping_network(3, 300, 5), None)
    model.load_checkpoint(tar)
    ref = random_arcface("iresnet100", 0).state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in model.arcface.state_dict().items())
    net = model.image_to_shape().eval()
    diffs = validate_onnx(net, export_onnx(net, tmp_path / "r100.onnx"), batches=(1, 4), atol=1e-4)
    assert set(diffs) == {1, 4}

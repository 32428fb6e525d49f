"""Int8 ONNX of the image -> shape-coefficients network: static QDQ quantisation for fast CPU inference.

    python -m micalib.export --onnx mica_int8.onnx --int8 --calib demo/arcface [--calib-count 64]

Steps (``export_int8``): the network with its BatchNorms folded (``models.arcface.fuse_for_inference``)
is exported to float32 ONNX (``micalib.export.cli.export_onnx``); every PReLU whose slopes lie in [0, 1]
is rewritten as ``Max(x, slope * x)`` (the same function; onnxruntime's PRelu kernel with per-channel
slopes is much slower than Mul + Max) and each remaining BatchNorm (the blocks' ``bn1``, which precede
a zero-padded convolution and cannot be folded) as ``x * s + t``, which needs no layout Transposes;
then onnxruntime's static quantiser puts int8 QDQ pairs around the convolutions and fully connected
layers (per-channel int8 weights, uint8 activations, MinMax ranges measured on the calibration
inputs). The residual additions, BatchNorm affines, PReLUs and the L2 normalisation stay float32. The file is an ordinary ONNX model
with the same input/output names and dynamic batch axis as the float export, so
``micalib.predictor.Predictor(onnx_path=...)`` runs it unchanged. Its metadata holds
``mica_precision = int8``.

Calibration inputs are the aligned network inputs ``demo.py`` writes (``demo/arcface/NAME.npy``,
float32 ``(3, 112, 112)``, (RGB - 127.5) / 127.5); use photos like the ones you will run. Accuracy
and speed on this machine: bench/README.md (Encoder).
"""
from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from loguru import logger
from torch import nn

from micalib.export.onnx_graph import DEFAULT_OPSET, export_onnx
from micalib.mica import ImageToShape
from models.arcface import fuse_for_inference
from utils.errors import MICAError, UserError, UserFileNotFound
from utils.io import atomic_save

__all__ = ["QUANTIZED_OPS", "PRECISION_KEY", "load_calibration_folder", "synthetic_calibration",
           "rewrite_prelu", "rewrite_batchnorm", "quantize_onnx", "export_int8", "compare_with_torch",
           "validate_int8", "DEFAULT_MIN_COSINE"]

# Node types that get int8 QDQ pairs. The residual Adds stay float: same speed, and the identity codes
# are closer to fp32 (iresnet100 code cosine min 0.9963 vs 0.9927 with int8 Adds). Mul/Max (the
# rewritten PReLU) stay float: quantising Mul made onnxruntime run the int8 convolutions slower (bench/README.md).
QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")
PRECISION_KEY = "mica_precision"
CALIBRATION_BATCH = 8
INPUT_SHAPE = (3, 112, 112)
# Network inputs are (RGB - 127.5) / 127.5: anything far outside [-1, 1] is not an aligned input.
INPUT_RANGE = 1.01
# Smallest tolerated per-image cosine of int8 vs torch fp32 coefficients (measured >= 0.9996 on random weights).
DEFAULT_MIN_COSINE = 0.99

PathLike = str | Path


def load_calibration_folder(folder: PathLike, limit: int = 64) -> np.ndarray:
    """Read up to ``limit`` aligned network inputs (``*.npy``, ``(3, 112, 112)`` or ``(N, 3, 112, 112)``
    float, values in [-1, 1]) from ``folder``, in name order.

    Returns:
        ``(N, 3, 112, 112)`` float32.

    Raises:
        FileNotFoundError: ``folder`` is not a folder.
        MICAError: no ``.npy`` file, or one that is unreadable or not an aligned input.
    """
    folder = Path(folder).expanduser()
    hint = "(demo.py writes aligned inputs to demo/arcface/*.npy; run it on a few photos first)"
    if not folder.is_dir():
        raise UserFileNotFound(f"calibration folder {folder} not found {hint}")
    files = sorted(folder.glob("*.npy"))
    if not files:
        raise MICAError(f"calibration folder {folder} holds no .npy network inputs {hint}")
    if limit < 1:
        raise UserError(f"calibration count must be >= 1, not {limit}")
    arrays, count = [], 0
    for f in files:
        try:
            a = np.load(f, allow_pickle=False)
        except Exception as e:  # numpy raises ValueError/OSError/EOFError/UnpicklingError for bad files
            raise MICAError(f"calibration input {f} cannot be read ({type(e).__name__}); delete it or run demo.py again") from None
        shape = a.shape
        if a.ndim == 3:
            a = a[None]
        if a.ndim != 4 or tuple(a.shape[1:]) != INPUT_SHAPE or not np.issubdtype(a.dtype, np.floating):
            raise MICAError(f"calibration input {f} has shape {shape} ({a.dtype}); expected float (3, 112, 112) "
                            f"network inputs as demo.py writes them to demo/arcface")
        if not np.isfinite(a).all() or np.abs(a).max() > INPUT_RANGE:
            raise MICAError(f"calibration input {f} has values outside [-1, 1]; expected (RGB - 127.5) / 127.5 "
                            f"network inputs as demo.py writes them")
        arrays.append(a[: limit - count].astype(np.float32))
        count += len(arrays[-1])
        if count >= limit:
            break
    logger.info(f"calibration: {count} inputs from {folder}")
    return np.ascontiguousarray(np.concatenate(arrays))


def synthetic_calibration(n: int = 32, seed: int = 0) -> np.ndarray:
    """``(n, 3, 112, 112)`` float32 uniform in [-1, 1] (for tests/benchmarks on random weights only)."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, *INPUT_SHAPE, generator=gen) * 2 - 1).numpy()


def rewrite_prelu(model) -> int:
    """Replace each PRelu whose slopes are a constant in [0, 1] by ``Max(x, Mul(x, slope))`` (in place).

    For ``0 <= a <= 1``: ``x >= 0`` gives ``a x <= x`` and ``x < 0`` gives ``a x >= x``, so the max is
    exactly PReLU. PReLUs with other slopes are left alone. Returns the number replaced.
    """
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    nodes, count = [], 0
    for node in model.graph.node:
        slope = numpy_helper.to_array(inits[node.input[1]]) if node.op_type == "PRelu" and node.input[1] in inits else None
        if slope is None or slope.size == 0 or slope.min() < 0 or slope.max() > 1:
            nodes.append(node)
            continue
        scaled = f"{node.output[0]}_scaled"
        nodes.append(helper.make_node("Mul", [node.input[0], node.input[1]], [scaled], name=f"{node.name}_mul"))
        nodes.append(helper.make_node("Max", [node.input[0], scaled], [node.output[0]], name=f"{node.name}_max"))
        count += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return count


def rewrite_batchnorm(model) -> list[str]:
    """Replace each inference BatchNormalization with constant statistics by ``Add(Mul(x, s), t)`` (in place).

    ``s = gamma / sqrt(var + eps)``, ``t = beta - mean * s``, shaped ``(C, 1, 1)``. Unlike
    BatchNormalization, Mul/Add run in onnxruntime's channels-last int8 layout without the two
    Transposes it needs around a BatchNormalization. Returns the names of the new Add nodes (to be
    kept float: a quantised Add here would add a requantisation for no speed gain).
    """
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    nodes, adds = [], []
    for node in model.graph.node:
        if node.op_type != "BatchNormalization" or len(node.output) != 1 or not all(i in inits for i in node.input[1:5]):
            nodes.append(node)
            continue
        gamma, beta, mean, var = (numpy_helper.to_array(inits[i]).astype(np.float64) for i in node.input[1:5])
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        scale = gamma / np.sqrt(var + eps)
        shift = beta - mean * scale
        names = [f"{node.name}_scale", f"{node.name}_shift", f"{node.output[0]}_scaled"]
        model.graph.initializer.extend([numpy_helper.from_array(scale.astype(np.float32).reshape(-1, 1, 1), names[0]),
                                        numpy_helper.from_array(shift.astype(np.float32).reshape(-1, 1, 1), names[1])])
        nodes.append(helper.make_node("Mul", [node.input[0], names[0]], [names[2]], name=f"{node.name}_mul"))
        nodes.append(helper.make_node("Add", [names[2], names[1]], [node.output[0]], name=f"{node.name}_add"))
        adds.append(f"{node.name}_add")
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    _drop_unused_initializers(model)
    return adds


def _drop_unused_initializers(model) -> None:
    used = {i for n in model.graph.node for i in n.input}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


class _Reader:
    """onnxruntime CalibrationDataReader over an ``(N, 3, 112, 112)`` array in batches."""

    def __init__(self, images: np.ndarray, input_name: str, batch: int = CALIBRATION_BATCH) -> None:
        self._batches: Iterator[dict[str, np.ndarray]] = iter(
            [{input_name: images[i:i + batch]} for i in range(0, len(images), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_onnx(fp32_path: PathLike, out_path: PathLike, calibration: np.ndarray,
                  ops: Sequence[str] = QUANTIZED_OPS, exclude: Sequence[str] = ()) -> Path:
    """Static int8 QDQ quantisation of a float32 ONNX file (written atomically to ``out_path``).

    Args:
        fp32_path: float32 model (``images (B, 3, 112, 112)`` input).
        out_path: the int8 model.
        calibration: ``(N, 3, 112, 112)`` float32 inputs whose activation ranges set the scales.
        ops: node types to quantise.
        exclude: node names to keep in float.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calibration = np.ascontiguousarray(calibration, dtype=np.float32)
    if calibration.ndim != 4 or tuple(calibration.shape[1:]) != INPUT_SHAPE or len(calibration) == 0:
        raise UserError(f"calibration inputs must have shape (N, 3, 112, 112), got {calibration.shape}")
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(prefix="mica_int8_") as tmp:
        model = onnx.load(str(fp32_path))
        n = rewrite_prelu(model)
        exclude = list(exclude) + rewrite_batchnorm(model)
        rewritten, prepared = Path(tmp) / "rewritten.onnx", Path(tmp) / "prepared.onnx"
        onnx.save(model, str(rewritten))
        input_name = model.graph.input[0].name
        del model
        quant_pre_process(str(rewritten), str(prepared))

        class Reader(_Reader, CalibrationDataReader):
            pass

        def write(target: Path) -> None:
            quantize_static(str(prepared), str(target), Reader(calibration, input_name),
                            quant_format=QuantFormat.QDQ, op_types_to_quantize=list(ops), per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=exclude or None)
            quantized = onnx.load(str(target))
            onnx.helper.set_model_props(quantized, {PRECISION_KEY: "int8"})
            onnx.save(quantized, str(target))

        atomic_save(out_path, write)
    logger.info(f"wrote {out_path} ({out_path.stat().st_size / 2**20:.1f} MiB int8, {len(calibration)} calibration "
                f"inputs, {n} PReLUs as Max)")
    return out_path


class _ShapeAndCode(nn.Module):
    """``images -> (shape (B, n_shape), code (B, 512) L2-normalised)`` for accuracy measurements."""

    def __init__(self, arcface: nn.Module, regressor: nn.Module) -> None:
        super().__init__()
        self.arcface, self.regressor = arcface, regressor

    def forward(self, images: torch.Tensor):
        code = torch.nn.functional.normalize(self.arcface(images), dim=1)
        return self.regressor(code), code


def export_int8(arcface: nn.Module, regressor: nn.Module, out_path: PathLike, calibration: np.ndarray,
                opset: int = DEFAULT_OPSET, with_code: bool = False, exclude: Sequence[str] = ()) -> Path:
    """ArcFace + mapping network -> int8 ONNX at ``out_path`` (atomic).

    ``with_code`` adds a second output ``code (B, 512)`` (the L2-normalised identity code) for
    measurements; the CLI's file has the single output ``shape`` like the float export.
    """
    fused = fuse_for_inference(arcface.float().cpu().eval())
    net = _ShapeAndCode(fused, regressor) if with_code else ImageToShape(fused, regressor)
    with tempfile.TemporaryDirectory(prefix="mica_fp32_") as tmp:
        fp32 = export_onnx(net.float().cpu().eval(), Path(tmp) / "fp32.onnx", opset,
                           output_names=("shape", "code") if with_code else None)
        return quantize_onnx(fp32, out_path, calibration, exclude=exclude)


def compare_with_torch(net: nn.Module, onnx_path: PathLike, images: np.ndarray, batch: int = 16) -> dict[str, np.ndarray]:
    """Run ``images`` through the ONNX file (onnxruntime CPU) and through ``net`` (torch fp32).

    Returns:
        dict of ``onnx`` and ``torch`` lists of output arrays (one entry per model output) and
        ``cosine``: per-image cosine similarity of each output, ``(n_outputs, N)``.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    got, ref = [], []
    for i in range(0, len(images), batch):
        x = np.ascontiguousarray(images[i:i + batch], dtype=np.float32)
        got.append(session.run(None, {name: x}))
        with torch.no_grad():
            out = net(torch.from_numpy(x))
        ref.append([o.numpy() for o in (out if isinstance(out, (tuple, list)) else (out,))])
    got = [np.concatenate([g[k] for g in got]) for k in range(len(got[0]))]
    ref = [np.concatenate([r[k] for r in ref]) for k in range(len(ref[0]))]
    cos = np.stack([(a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
                    for a, b in zip(got, ref, strict=True)])
    return {"onnx": got, "torch": ref, "cosine": cos}


def validate_int8(net: nn.Module, path: str | Path, images: np.ndarray,
                  min_cosine: float = DEFAULT_MIN_COSINE, count: int = 8) -> float:
    """Check an int8 model against ``net`` (torch fp32) on up to ``count`` of ``images``, at batch 1 and
    the rest together (dynamic axis); returns the smallest per-image cosine of the coefficients.

    Raises:
        MICAError: a cosine below ``min_cosine`` or a wrong output shape.
    """
    images = images[:count]
    worst = 1.0
    for chunk in (images[:1], images[1:]):
        if len(chunk) == 0:
            continue
        res = compare_with_torch(net, path, chunk, batch=len(chunk))
        if res["onnx"][0].shape != res["torch"][0].shape:
            raise MICAError(f"int8 model {path}: batch {len(chunk)} gives shape {res['onnx'][0].shape}, "
                            f"torch {res['torch'][0].shape} - export again")
        worst = min(worst, float(res["cosine"][0].min()))
    if not worst >= min_cosine:
        raise MICAError(f"int8 model {path} is inaccurate: coefficient cosine to torch {worst:.4f} < {min_cosine} - "
                        f"calibrate on more (and typical) inputs with --calib, or use the float export")
    logger.info(f"int8 vs torch fp32: smallest coefficient cosine {worst:.5f} on {len(images)} calibration inputs")
    return worst

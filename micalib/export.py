"""Export MICA's image -> FLAME shape-coefficients network to ONNX and validate it.

    python -m micalib.export --onnx mica.onnx [--cfg CFG] [-m data/pretrained/mica.tar]
                             [--opset 17] [--no-validate] [KEY VALUE ...]
    python -m micalib.export --onnx mica_int8.onnx --int8 --calib demo/arcface [--calib-count 64]

The graph takes ``images (batch, 3, 112, 112)`` float32 ((RGB - 127.5) / 127.5) and returns
``shape (batch, n_shape)`` float32; the batch axis is dynamic. The ONNX file is written atomically,
then run with onnxruntime (CPU) on batches of 1 and 4 and compared with torch; a difference above
``--atol`` is an error. FLAME is not part of the graph (``micalib.predictor`` decodes after it).
``--int8`` writes a statically quantised model instead (``micalib.quantize``; calibration inputs from
``--calib``), validated by the cosine of its coefficients to torch's (``--min-cosine``).
"""
from __future__ import annotations

import argparse
import io
import sys
import warnings
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import numpy as np
import torch
from loguru import logger
from torch import nn

from utils.errors import MICAError, run_main
from utils.io import atomic_write_bytes

__all__ = ["export_onnx", "validate_onnx", "validate_int8", "main"]

INPUT_NAME = "images"
OUTPUT_NAME = "shape"
DEFAULT_OPSET = 17
# Largest tolerated |onnxruntime - torch| of the fp32 coefficients.
DEFAULT_ATOL = 1e-4
VALIDATION_BATCHES = (1, 4)
# Smallest tolerated per-image cosine of int8 vs torch fp32 coefficients (measured >= 0.9996 on random weights).
DEFAULT_MIN_COSINE = 0.99


def export_onnx(net: nn.Module, path: Union[str, Path], opset: int = DEFAULT_OPSET,
                output_names: Optional[Sequence[str]] = None) -> Path:
    """Write ``net`` (images -> coefficients) to ``path`` as ONNX with a dynamic batch axis.

    ``output_names`` names the outputs of a net that returns several (default: one, ``shape``).

    Uses the TorchScript-based exporter (``dynamo=False``) and falls back to the dynamo exporter
    (onnxscript) if that fails. The model is exported on the CPU in float32, in eval mode.
    """
    path = Path(path)
    net = net.float().cpu().eval()
    outputs = list(output_names or [OUTPUT_NAME])
    example = torch.zeros(2, 3, 112, 112)
    buf = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter announces its removal
            torch.onnx.export(net, (example,), buf, dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=outputs,
                              dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME] + outputs})
        data = buf.getvalue()
    except Exception as e:  # exporter internals raise many types; try the other exporter once
        logger.warning(f"TorchScript ONNX export failed ({str(e).splitlines()[0][:100]}); trying dynamo=True")
        batch = torch.export.Dim("batch", min=1, max=1024)
        with torch.no_grad():
            program = torch.onnx.export(net, (example,), dynamo=True, opset_version=max(opset, 18),
                                        input_names=[INPUT_NAME], output_names=outputs,
                                        dynamic_shapes={"images": {0: batch}})
        data = program.model_proto.SerializeToString()
    atomic_write_bytes(path, data)
    logger.info(f"wrote {path} ({len(data) / 2**20:.1f} MiB, opset {opset})")
    return path


def validate_onnx(net: nn.Module, path: Union[str, Path], batches: Sequence[int] = VALIDATION_BATCHES,
                  atol: float = DEFAULT_ATOL, seed: int = 0) -> Dict[int, float]:
    """Run the ONNX file with onnxruntime (CPU) and compare with ``net`` in torch fp32.

    Returns:
        ``{batch: max |ort - torch|}``.

    Raises:
        MICAError: a difference above ``atol`` or a wrong output shape.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(seed)
    net = net.float().cpu().eval()
    diffs: Dict[int, float] = {}
    for b in batches:
        x = torch.rand(b, 3, 112, 112, generator=gen) * 2 - 1
        with torch.no_grad():
            ref = net(x).numpy()
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        if got.shape != ref.shape:
            raise MICAError(f"ONNX model {path}: batch {b} gives shape {got.shape}, torch {ref.shape} - export again")
        diffs[b] = float(np.abs(got - ref).max())
        if not diffs[b] <= atol:
            raise MICAError(f"ONNX model {path} differs from torch by {diffs[b]:.2e} at batch {b} (> {atol:g}); "
                            f"try another --opset")
    logger.info("onnxruntime vs torch, max |diff| per batch: " + ", ".join(f"{b}: {d:.2e}" for b, d in diffs.items()))
    return diffs


def validate_int8(net: nn.Module, path: Union[str, Path], images: np.ndarray,
                  min_cosine: float = DEFAULT_MIN_COSINE, count: int = 8) -> float:
    """Check an int8 model against ``net`` (torch fp32) on up to ``count`` of ``images``, at batch 1 and
    the rest together (dynamic axis); returns the smallest per-image cosine of the coefficients.

    Raises:
        MICAError: a cosine below ``min_cosine`` or a wrong output shape.
    """
    from micalib.quantize import compare_with_torch

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


def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m micalib.export", description=__doc__.splitlines()[0])
    p.add_argument("--cfg", default=None,
                   help="YAML config merged over the defaults (default: none; the defaults read data/pretrained/mica.tar)")
    p.add_argument("--onnx", required=True, help="output ONNX file")
    p.add_argument("-m", "--model", "--checkpoint", dest="model", default="",
                   help="MICA checkpoint to export (default: the config's pretrained_model_path)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--atol", type=float, default=DEFAULT_ATOL, help=f"validation tolerance (default {DEFAULT_ATOL:g})")
    p.add_argument("--no-validate", action="store_true", help="skip the onnxruntime comparison")
    p.add_argument("--int8", action="store_true", help="write an int8-quantised model (fast CPU path, micalib.quantize)")
    p.add_argument("--calib", default="demo/arcface",
                   help="--int8: folder of aligned network inputs (*.npy as demo.py writes them; default demo/arcface)")
    p.add_argument("--calib-count", type=int, default=64, help="--int8: calibration inputs to use (default 64)")
    p.add_argument("--min-cosine", type=float, default=DEFAULT_MIN_COSINE,
                   help=f"--int8: smallest accepted cosine of coefficients vs torch (default {DEFAULT_MIN_COSINE})")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry; returns the exit code."""
    from configs.config import load_cfg
    from micalib.mica import MICA

    args = _parse(argv)
    cfg = load_cfg(args.cfg, args.opts)
    checkpoint = args.model or cfg.pretrained_model_path
    if not checkpoint:
        raise MICAError(f"no checkpoint to export: {args.cfg or 'the config'} sets no pretrained_model_path - pass "
                        f"-m data/pretrained/mica.tar")
    calibration = None
    if args.int8:  # read the calibration inputs first: a bad folder should fail before the slow export
        from micalib.quantize import load_calibration_folder

        calibration = load_calibration_folder(args.calib, args.calib_count)
    model = MICA.from_config(cfg, device="cpu", with_flame=False, checkpoint=checkpoint)
    net = model.image_to_shape().eval()
    if calibration is not None:
        from micalib.quantize import export_int8

        out = export_int8(model.arcface, model.regressor, args.onnx, calibration, args.opset)
        if not args.no_validate:
            validate_int8(net, out, calibration, args.min_cosine)
        return 0
    out = export_onnx(net, args.onnx, args.opset)
    if not args.no_validate:
        validate_onnx(net, out, atol=args.atol)
    return 0


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))

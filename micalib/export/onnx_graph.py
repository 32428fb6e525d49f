"""Float32 ONNX of MICA's image -> FLAME shape-coefficients network, and its check against torch.

The graph takes ``images (batch, 3, 112, 112)`` float32 ((RGB - 127.5) / 127.5) and returns
``shape (batch, n_shape)`` float32; the batch axis is dynamic. FLAME is not part of the graph
(``micalib.predictor`` decodes after it). The command line is ``python -m micalib.export``; the int8
variant is built from this export by ``micalib.export.quantize``.
"""
from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from loguru import logger
from torch import nn

from utils.errors import MICAError
from utils.io import atomic_write_bytes

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "DEFAULT_OPSET", "DEFAULT_ATOL", "export_onnx", "validate_onnx"]

INPUT_NAME = "images"
OUTPUT_NAME = "shape"
DEFAULT_OPSET = 17
# Largest tolerated |onnxruntime - torch| of the fp32 coefficients.
DEFAULT_ATOL = 1e-4
VALIDATION_BATCHES = (1, 4)


def export_onnx(net: nn.Module, path: str | Path, opset: int = DEFAULT_OPSET,
                output_names: Sequence[str] | None = None) -> Path:
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


def validate_onnx(net: nn.Module, path: str | Path, batches: Sequence[int] = VALIDATION_BATCHES,
                  atol: float = DEFAULT_ATOL, seed: int = 0) -> dict[int, float]:
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
    diffs: dict[int, float] = {}
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

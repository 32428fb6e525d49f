"""Export MICA's image -> FLAME shape-coefficients network to ONNX and validate it.

    python -m micalib.export --onnx mica.onnx [--cfg CFG] [-m data/pretrained/mica.tar]
                             [--opset 17] [--no-validate] [KEY VALUE ...]
    python -m micalib.export --onnx mica_int8.onnx --int8 --calib demo/arcface [--calib-count 64]

The graph takes ``images (batch, 3, 112, 112)`` float32 ((RGB - 127.5) / 127.5) and returns
``shape (batch, n_shape)`` float32; the batch axis is dynamic. The ONNX file is written atomically,
then run with onnxruntime (CPU) on batches of 1 and 4 and compared with torch; a difference above
``--atol`` is an error. FLAME is not part of the graph (``micalib.predictor`` decodes after it).
``--int8`` writes a statically quantised model instead (``micalib.export.quantize``; calibration inputs from
``--calib``), validated by the cosine of its coefficients to torch's (``--min-cosine``).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from micalib.export.onnx_graph import DEFAULT_ATOL, DEFAULT_OPSET, export_onnx, validate_onnx
from micalib.export.quantize import DEFAULT_MIN_COSINE, export_int8, load_calibration_folder, validate_int8
from utils.errors import MICAError, run_main
from utils.log_setup import setup_logging

__all__ = ["main"]


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m micalib.export", description=__doc__.splitlines()[0])
    p.add_argument("--cfg", default=None,
                   help="YAML config merged over the defaults (default: none; the defaults read data/pretrained/mica.tar)")
    p.add_argument("--onnx", required=True, help="output ONNX file")
    p.add_argument("-m", "--model", "--checkpoint", dest="model", default="",
                   help="MICA checkpoint to export (default: the config's pretrained_model_path)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--atol", type=float, default=DEFAULT_ATOL, help=f"validation tolerance (default {DEFAULT_ATOL:g})")
    p.add_argument("--no-validate", action="store_true", help="skip the onnxruntime comparison")
    p.add_argument("--int8", action="store_true", help="write an int8-quantised model (fast CPU path, micalib.export.quantize)")
    p.add_argument("--calib", default="demo/arcface",
                   help="--int8: folder of aligned network inputs (*.npy as demo.py writes them; default demo/arcface)")
    p.add_argument("--calib-count", type=int, default=64, help="--int8: calibration inputs to use (default 64)")
    p.add_argument("--min-cosine", type=float, default=DEFAULT_MIN_COSINE,
                   help=f"--int8: smallest accepted cosine of coefficients vs torch (default {DEFAULT_MIN_COSINE})")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry; returns the exit code."""
    from configs.config import load_cfg
    from micalib.mica import MICA
    from utils.io import prepare_output_dir

    args = _parse(argv)
    cfg = load_cfg(args.cfg, args.opts)
    if Path(args.onnx).is_dir():
        raise MICAError(f"--onnx {args.onnx} is a folder; pass a file name such as {Path(args.onnx) / 'mica.onnx'}")
    prepare_output_dir(Path(args.onnx).expanduser().parent, "folder of --onnx", recursive=False)
    checkpoint = args.model or cfg.pretrained_model_path
    if not checkpoint:
        raise MICAError(f"no checkpoint to export: {args.cfg or 'the config'} sets no pretrained_model_path - pass "
                        f"-m data/pretrained/mica.tar")
    calibration = None
    if args.int8:  # read the calibration inputs first: a bad folder should fail before the slow export
        calibration = load_calibration_folder(args.calib, args.calib_count)
    model = MICA.from_config(cfg, device="cpu", with_flame=False, checkpoint=checkpoint)
    net = model.image_to_shape().eval()
    if calibration is not None:
        out = export_int8(model.arcface, model.regressor, args.onnx, calibration, args.opset)
        if not args.no_validate:
            validate_int8(net, out, calibration, args.min_cosine)
        return 0
    out = export_onnx(net, args.onnx, args.opset)
    if not args.no_validate:
        validate_onnx(net, out, atol=args.atol)
    return 0


if __name__ == "__main__":
    setup_logging()
    run_main(lambda: main(sys.argv[1:]))

"""Batched inference for demo.py / test.py: aligned 112x112 inputs -> identity, mesh, landmarks.

Two small encoder classes behind one interface (``encoder(x) -> identity (B, n_shape)`` float32
torch tensor, with ``device``, ``dtype``, ``precision_label``), and one ``Predictor`` around either:

- ``TorchEncoder``: the MICA network on ``device`` (auto/cpu/cuda/mps) at ``precision``
  (fp32|bf16|fp16|auto, see ``utils.device``). ArcFace runs under autocast (channels-last memory
  layout for reduced precision, where oneDNN/cuDNN are fastest); the mapping network always runs in
  float32.
- ``OrtEncoder``: the exported image -> identity network (``micalib.export``; its ONNX output keeps
  the name ``shape``) on onnxruntime's CPU or CUDA provider (float32). An int8 model
  (``python -m micalib.export --int8``, the fast CPU path) runs the same way; ``precision`` tells
  which one was loaded.

``Predictor.decode`` is the one decode: FLAME in float32 on the encoder's device, returning
``identity (B, n_shape)``, ``vertices (B, V, 3)`` metres, ``landmarks68 (B, 68, 3)`` and
``landmarks7 (B, 7, 3)`` metres as float32 numpy arrays.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from loguru import logger
from torch import nn

from micalib.mica import MICA
from models.arcface import fuse_for_inference
from utils.device import autocast, cpu_supports_bf16, resolve_device, resolve_precision
from utils.errors import MICAError

__all__ = ["Predictor", "TorchEncoder", "OrtEncoder", "BACKENDS", "INPUT_SHAPE"]

BACKENDS = ("torch", "onnxruntime")
INPUT_SHAPE = (3, 112, 112)
ArrayLike = Union[np.ndarray, torch.Tensor]


def _as_batch(images: ArrayLike) -> torch.Tensor:
    """``(B, 3, 112, 112)`` or ``(3, 112, 112)`` array/tensor -> float32 CPU-or-device tensor."""
    x = images if torch.is_tensor(images) else torch.from_numpy(np.ascontiguousarray(images))
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or tuple(x.shape[1:]) != INPUT_SHAPE:
        raise ValueError(f"network inputs must have shape (B, 3, 112, 112) (aligned ArcFace crops, "
                         f"(RGB - 127.5) / 127.5), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"network inputs must be float ((RGB - 127.5) / 127.5), got {x.dtype}")
    return x.float()


class OrtEncoder:
    """onnxruntime session of the exported image -> identity graph.

    On the CPU provider a batch of several images is split into small contiguous chunks run
    concurrently, one per thread at a time, through a second, single-threaded session
    (``batch_parallel``): per-image parallelism keeps every core busy through the many small
    element-wise steps between the convolutions, where onnxruntime's intra-op threads partly wait
    (bench/README.md). Single images use the ordinary multi-threaded session. Results do not depend
    on the split: every image is computed alone.
    """

    # Several small chunks per thread balance the load when another thread of the process (the
    # demo's prefetching) takes a core for a while; small chunks run as fast as large ones (bench/README.md).
    CHUNKS_PER_THREAD = 4

    def __init__(self, onnx_path: Union[str, Path], device: str = "auto", threads: int = 0,
                 batch_parallel: Optional[bool] = None) -> None:
        import onnxruntime as ort

        path = Path(onnx_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model {path} not found (create it with python -m micalib.export --onnx {path})")
        available = ort.get_available_providers()
        if device in ("cuda", "auto") and "CUDAExecutionProvider" in available:
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        elif device == "cuda":
            raise MICAError("onnxruntime has no CUDA provider here (install onnxruntime-gpu, or use --device cpu)")
        else:
            providers = ["CPUExecutionProvider"]
        self.path, self.threads = path, int(threads) if threads else torch.get_num_threads()
        self.session = self._open(providers, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.providers = self.session.get_providers()
        # "int8" for a model from ``python -m micalib.export --int8`` (micalib.export.quantize), else fp32.
        self.precision = self.session.get_modelmeta().custom_metadata_map.get("mica_precision", "fp32")
        self.device, self.dtype = torch.device("cpu"), torch.float32  # outputs come back to the CPU
        on_cpu = self.providers[0] == "CPUExecutionProvider"
        self.batch_parallel = (on_cpu and self.threads > 1) if batch_parallel is None else bool(batch_parallel and on_cpu)
        self._single: Optional["ort.InferenceSession"] = None  # the single-threaded session, made on first use
        self._pool: Optional[ThreadPoolExecutor] = None
        self.last_chunks = 0  # chunks the last call was split into (1 = not split)

    def _open(self, providers: List[str], threads: int):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            return ort.InferenceSession(str(self.path), sess_options=opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for unreadable models
            raise MICAError(f"ONNX model {self.path} cannot be loaded ({str(e).splitlines()[0][:120]}); "
                            f"export it again with python -m micalib.export") from None

    @property
    def plan(self) -> Dict[str, object]:
        """How this encoder runs, for the run's record (see ``TorchEncoder.plan``)."""
        return {"backend": "onnxruntime", "device": self.providers[0], "precision": self.precision,
                "batch_parallel": self.batch_parallel, "threads": self.threads}

    def _run(self, session, x: np.ndarray) -> np.ndarray:
        return session.run(None, {self.input_name: x})[0]

    @property
    def precision_label(self) -> str:
        return self.precision

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, 112, 112)`` float32 -> ``(B, n_shape)`` identity (CPU tensor)."""
        x = np.ascontiguousarray(images.detach().cpu().numpy())
        chunks = min(self.threads * self.CHUNKS_PER_THREAD, x.shape[0]) if self.batch_parallel else 1
        self.last_chunks = chunks
        if chunks < 2:
            return torch.from_numpy(self._run(self.session, x))
        if self._single is None:
            self._single = self._open(["CPUExecutionProvider"], 1)
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="mica-ort")
        parts = [np.ascontiguousarray(c) for c in np.array_split(x, chunks)]
        outs = list(self._pool.map(lambda c: self._run(self._single, c), parts))
        return torch.from_numpy(np.concatenate(outs))


def encoder_layout(dtype: torch.dtype) -> bool:
    """The memory layout of ArcFace for ``dtype``: channels-last for reduced precision (oneDNN's and
    cuDNN's fastest bf16/fp16 convolutions), contiguous for fp32 (channels-last fp32 measured slower
    on the AMD machines, bench/README.md). A fixed rule of the precision (and through ``auto`` of the
    CPU's features), never a timing at run time: the same inputs give the same numbers on every run."""
    return dtype != torch.float32


class TorchEncoder:
    """The MICA network in torch: ``(B, 3, 112, 112)`` -> ``(B, n_shape)`` identity on ``device``.

    Args:
        model: the MICA network (moved to ``device``, eval mode).
        device, precision: see ``utils.device``.
        channels_last: memory layout of ArcFace; None = channels-last for reduced precision only
            (measured faster for bf16 on CPU, slower for fp32: see bench/README.md).
        fuse: run a copy of ArcFace with its BatchNorms folded into the convolutions
            (``models.arcface.fuse_for_inference``; same result up to float rounding, faster).
        compile: wrap ArcFace in ``torch.compile`` (slow first call).
    """

    def __init__(self, model: MICA, device: str = "auto", precision: str = "fp32",
                 channels_last: Optional[bool] = None, fuse: bool = True, compile: bool = False) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_precision(precision, self.device)
        self.model = model.to(self.device).eval()
        self.channels_last = encoder_layout(self.dtype) if channels_last is None else bool(channels_last)
        self.fuse = bool(fuse)
        arcface = fuse_for_inference(self.model.arcface) if fuse else self.model.arcface
        if self.channels_last:
            arcface = arcface.to(memory_format=torch.channels_last)
        self._arcface = torch.compile(arcface) if compile else arcface

    @property
    def precision_label(self) -> str:
        return str(self.dtype).replace("torch.", "")

    @property
    def plan(self) -> Dict[str, object]:
        """How this encoder runs, for the run's record: chosen from the precision and the CPU's
        features only (``encoder_layout``), never from timings, so results never depend on a race."""
        return {"backend": "torch", "device": str(self.device), "precision": self.precision_label,
                "fuse_bn": self.fuse, "channels_last": self.channels_last, "native_bf16": cpu_supports_bf16()}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.dtype):
            code = F.normalize(self._arcface(x).float(), dim=1)
        return self.model.identity(code.float())


class Predictor:
    """Images -> identity, vertices and landmarks through a ``TorchEncoder`` or an ``OrtEncoder``.

    Args:
        flame: the FLAME module used to decode (``models.flame.FLAME``); for the torch backend
            ``model.flame`` is used when this is None.
        model: MICA network (torch backend).
        onnx_path: exported ONNX file (onnxruntime backend).
        backend: ``torch`` or ``onnxruntime``.
        device: ``auto``, ``cpu``, ``cuda[:N]`` or ``mps`` (onnxruntime: cpu/cuda/auto).
        precision: ``fp32`` (default), ``bf16``, ``fp16`` or ``auto``; onnxruntime runs fp32 only.
        batch_size: largest batch sent through the network at once.
        channels_last, fuse, compile: see ``TorchEncoder``.
        batch_parallel: onnxruntime on the CPU: run a batch as small chunks, one per thread at a
            time, through a single-threaded session (None = yes when more than one thread; see
            ``OrtEncoder``).
    """

    def __init__(self, flame: Optional[nn.Module] = None, *, model: Optional[MICA] = None,
                 onnx_path: Optional[Union[str, Path]] = None, backend: str = "torch", device: str = "auto",
                 precision: str = "fp32", batch_size: int = 16, channels_last: Optional[bool] = None,
                 fuse: bool = True, compile: bool = False, batch_parallel: Optional[bool] = None) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend '{backend}' (use {' or '.join(BACKENDS)})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}")
        self.backend, self.batch_size = backend, int(batch_size)
        if backend == "torch":
            if model is None:
                raise ValueError("the torch backend needs a MICA model")
            self.encoder = TorchEncoder(model, device, precision, channels_last, fuse, compile)
            flame = flame if flame is not None else model.flame
        else:
            if onnx_path is None:
                raise ValueError("the onnxruntime backend needs onnx_path (python -m micalib.export)")
            if precision not in ("fp32", "auto"):
                raise MICAError(f"precision {precision} is not available with the onnxruntime backend "
                                f"(it runs fp32; run without --onnx for bf16/fp16)")
            self.encoder = OrtEncoder(onnx_path, "auto" if device == "auto" else str(device).split(":")[0],
                                      batch_parallel=batch_parallel)
        if flame is None:
            raise ValueError("Predictor needs a FLAME module to decode the identity")
        self.flame = flame.to(self.device).eval()
        logger.debug(f"Predictor: {type(self.encoder).__name__}, device={self.device}, {self.encoder.precision_label}")

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.dtype

    @property
    def model(self) -> Optional[MICA]:
        """The MICA network (torch backend; None on onnxruntime)."""
        return getattr(self.encoder, "model", None)

    @property
    def plan(self) -> Dict[str, object]:
        """The encoder's plan plus the batch size: what ``.mica/encoder.json`` of a demo run records."""
        return {**self.encoder.plan, "batch_size": self.batch_size}

    @property
    def channels_last(self) -> bool:
        return bool(getattr(self.encoder, "channels_last", False))

    @property
    def onnx_precision(self) -> Optional[str]:
        """onnxruntime backend: "fp32" or "int8" (the file's metadata); None on torch."""
        return self.encoder.precision if isinstance(self.encoder, OrtEncoder) else None

    @classmethod
    def from_config(cls, cfg, backend: Optional[str] = None, onnx_path: Optional[Union[str, Path]] = None,
                    checkpoint: Optional[Union[str, Path]] = None, device: Optional[str] = None,
                    precision: Optional[str] = None, batch_size: int = 16) -> "Predictor":
        """Build from the config (weights: ``checkpoint`` or ``cfg.pretrained_model_path``).

        ``backend`` None = onnxruntime when ``onnx_path`` is given, else torch.
        """
        if backend is None:
            backend = "onnxruntime" if onnx_path else "torch"
        device = device or cfg.device
        precision = precision or cfg.precision
        if backend == "torch":
            weights = checkpoint or cfg.pretrained_model_path
            if not weights:
                raise MICAError("no MICA checkpoint configured: set pretrained_model_path (e.g. data/pretrained/mica.tar) "
                                "or pass -m/--model")
            model = MICA.from_config(cfg, device="cpu", checkpoint=weights)
            return cls(model=model, backend="torch", device=device, precision=precision, batch_size=batch_size)
        from models.flame import FLAME

        return cls(FLAME.from_config(cfg), onnx_path=onnx_path, backend=backend, device=device,
                   precision=precision, batch_size=batch_size)

    @torch.inference_mode()
    def encode(self, images: ArrayLike) -> torch.Tensor:
        """``(B, 3, 112, 112)`` network inputs -> ``(B, n_shape)`` float32 identity, in chunks of ``batch_size``."""
        x = _as_batch(images)
        return torch.cat([self.encoder(x[start:start + self.batch_size])
                          for start in range(0, x.shape[0], self.batch_size)]).float()

    def predict_identity(self, images: ArrayLike) -> np.ndarray:
        """``(B, 3, 112, 112)`` network inputs -> ``(B, n_shape)`` float32 identity coefficients."""
        return self.encode(images).cpu().numpy()

    @property
    def faces(self) -> np.ndarray:
        """``(F, 3)`` int64 triangle indices of the FLAME mesh."""
        return self.flame.faces.detach().cpu().numpy().astype(np.int64)

    @torch.inference_mode()
    def decode(self, identity: ArrayLike) -> Dict[str, np.ndarray]:
        """``(B, n_shape)`` identity (numpy or torch) -> dict of numpy arrays (metres), FLAME in float32."""
        identity = identity if torch.is_tensor(identity) else torch.from_numpy(np.asarray(identity, dtype=np.float32))
        if identity.dim() == 1:
            identity = identity.unsqueeze(0)
        identity = identity.to(self.device, torch.float32)
        vertices = self.flame.canonical(identity)
        out = {
            "identity": identity,
            "vertices": vertices,
            "landmarks68": self.flame.landmarks68(vertices),
            "landmarks7": self.flame.landmarks7(vertices),
        }
        return {k: v.float().cpu().numpy() for k, v in out.items()}

    def __call__(self, images: ArrayLike) -> Dict[str, np.ndarray]:
        """Network inputs ``(B, 3, 112, 112)`` float32 ((RGB - 127.5) / 127.5) -> ``identity (B, n_shape)``,
        ``vertices (B, V, 3)``, ``landmarks68 (B, 68, 3)``, ``landmarks7 (B, 7, 3)`` (metres, float32)."""
        return self.decode(self.encode(images))

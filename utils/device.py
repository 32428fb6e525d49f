"""Device and precision selection (CPU, CUDA, MPS), shared by demo, training and tests."""
from __future__ import annotations

import contextlib
from typing import ContextManager

import torch
from loguru import logger

from utils.errors import MICAError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda if available, else mps, else cpu; explicit names are checked.

    Raises:
        MICAError: the requested device is not available on this machine.
    """
    name = str(name or "auto")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise MICAError(f"unknown device '{name}' (use auto, cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MICAError(f"device '{name}' requested but CUDA is not available (use --device cpu or auto)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise MICAError(f"device '{name}' requested but only {torch.cuda.device_count()} GPU(s) exist")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise MICAError(f"device '{name}' requested but MPS is not available (use --device cpu or auto)")
    return dev


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AMX-BF16 or AVX512-BF16)."""
    try:
        flags = open("/proc/cpuinfo", encoding="utf-8").read()
    except OSError:
        return False
    return any(f in flags for f in (" amx_bf16", " avx512_bf16"))


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """Map ``fp32|bf16|fp16|auto`` to the autocast dtype for ``device`` (float32 = no autocast)."""
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        if device.type == "cpu" and not cpu_supports_bf16():
            logger.warning("precision bf16 on a CPU without native bf16 (no AMX-BF16 / AVX512-BF16): it is "
                           "emulated and usually slower than fp32; use --precision auto or fp32 here")
        return torch.bfloat16
    if precision == "fp16":
        if device.type == "cpu":
            raise MICAError("precision fp16 is not supported on CPU (use bf16 or fp32)")
        return torch.float16
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and cpu_supports_bf16():
            return torch.bfloat16
        return torch.float32
    raise MICAError(f"unknown precision '{precision}' (use fp32, bf16, fp16 or auto)")


def autocast(device: torch.device, dtype: torch.dtype) -> ContextManager:
    """Autocast context for ``dtype`` on ``device``; a no-op for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)

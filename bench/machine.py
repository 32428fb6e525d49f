"""The machine a benchmark ran on, in one line (for its printout and bench/README.md)."""
from __future__ import annotations

import os
import platform

__all__ = ["cpu_description"]


def cpu_description() -> str:
    """CPU model, family/model numbers and the ISA extensions that decide the reduced-precision speed
    (machines of the same name differ: AMD family 25 is Zen 4, 26 is Zen 5)."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return platform.processor() or platform.machine()
    fields = dict(line.split(":", 1) for line in text.split("\n\n")[0].splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    isa = [f for f in ("avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8") if f in flags]
    return (f"{fields.get('model name', platform.machine())} (family {fields.get('cpu family', '?')}, "
            f"model {fields.get('model', '?')}), {os.cpu_count()} cores, {' '.join(isa) or 'no AVX-512'}")

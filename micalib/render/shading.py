"""Shading of a Lambertian surface: ``shade`` (the headlight of the previews and of the tracking
overlay) and real spherical harmonics of bands 0-2 (9 functions, the photometric stage's lighting).

Normals are in the rasteriser's camera frame (``micalib.render.raster``: x right, y down, z forward,
the camera looking along +z).

Spherical harmonics: basis order and normalisation (orthonormal on the unit sphere, no
Condon-Shortley phase), for a unit normal n = (x, y, z):
    Y00 = 1/(2 sqrt(pi)),
    Y1-1 = c1 y, Y10 = c1 z, Y11 = c1 x,                     c1 = sqrt(3/(4 pi)),
    Y2-2 = c2 xy, Y2-1 = c2 yz, Y21 = c2 xz,                 c2 = sqrt(15/(4 pi)),
    Y20 = sqrt(5/(16 pi)) (3 z^2 - 1), Y22 = sqrt(15/(16 pi)) (x^2 - y^2).
The shading of a normal is ``sh_basis(n) @ sh`` with ``sh`` (9, 3): one column per colour channel.
``directional_sh`` gives the coefficients of a distant light convolved with the clamped cosine
(Ramamoorthi & Hanrahan's band factors pi, 2 pi / 3, pi / 4). Our ``sh`` follows this basis; it is
not guaranteed to be interchangeable with the ``sh`` entries of the original tracker's checkpoints.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["SH_BAND_FACTORS", "directional_sh", "shade", "sh_basis", "sh_shading"]

_C0 = 0.5 / math.sqrt(math.pi)
_C1 = math.sqrt(3.0 / (4.0 * math.pi))
_C2 = math.sqrt(15.0 / (4.0 * math.pi))
_C20 = math.sqrt(5.0 / (16.0 * math.pi))
_C22 = math.sqrt(15.0 / (16.0 * math.pi))
# Clamped-cosine (Lambert) convolution factor of each of the 9 coefficients.
SH_BAND_FACTORS = (math.pi,) + (2.0 * math.pi / 3.0,) * 3 + (math.pi / 4.0,) * 5


def shade(normals: torch.Tensor, ambient: float, two_sided: bool = False) -> torch.Tensor:
    """Lambertian intensity under a headlight (a distant light at the camera, shining along +z):
    ``ambient + (1 - ambient) * max(0, n . l)`` with l = (0, 0, -1) towards the light, or
    ``|n . l|`` when ``two_sided`` (a surface seen from behind is lit like its front). ``normals``
    (..., 3) unit, camera frame; returns (...) intensities in [ambient, 1]."""
    cos = -normals[..., 2]
    return ambient + (1.0 - ambient) * (cos.abs() if two_sided else cos.clamp_min(0.0))


def sh_basis(normals: torch.Tensor) -> torch.Tensor:
    """(..., 3) unit normals -> (..., 9) basis values (differentiable)."""
    x, y, z = normals.unbind(-1)
    return torch.stack([
        torch.full_like(x, _C0),
        _C1 * y, _C1 * z, _C1 * x,
        _C2 * x * y, _C2 * y * z, _C20 * (3.0 * z * z - 1.0), _C2 * x * z, _C22 * (x * x - y * y),
    ], dim=-1)


def sh_shading(normals: torch.Tensor, sh: torch.Tensor) -> torch.Tensor:
    """(..., 3) unit normals and (9, C) coefficients -> (..., C) shading."""
    return sh_basis(normals) @ sh


def directional_sh(direction: Sequence[float] | torch.Tensor, intensity: float = 1.0, ambient: float = 0.0,
                   channels: int = 3) -> torch.Tensor:
    """(9, channels) coefficients whose shading approximates ``ambient + intensity * max(0, n . d)``
    (d = the unit direction towards the light; the band-2 truncation errs by up to ~0.1 of intensity)."""
    d = torch.as_tensor(direction, dtype=torch.float64)
    d = d / d.norm()
    coef = torch.tensor(SH_BAND_FACTORS, dtype=torch.float64) * sh_basis(d) * float(intensity)
    coef[0] += float(ambient) / _C0
    return coef[:, None].repeat(1, channels).float()

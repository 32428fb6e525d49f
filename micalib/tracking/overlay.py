"""Tracking overlay: a gray headlight shading of the fitted mesh, landmark dots, the side-by-side
frame (input | landmarks | mesh over the input) and an atomic MPEG-4 video writer.

Everything works on OpenCV pixel coordinates ((0, 0) = centre of the top-left pixel) and RGB uint8
images; the rasteriser is ``micalib.render.raster`` (fast enough for a real-time overlay: bench/README.md).
Unlike the original tracker (``video.avi`` in DIVX with the photometric render), the video is
``mp4v`` (MPEG-4 Part 2, what the pinned OpenCV wheel writes into an .mp4) and shows a gray mesh.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch

from micalib.render.raster import Fragments, rasterize, vertex_normals
from utils.errors import MICAError
from utils.io import atomic_path

__all__ = ["AMBIENT", "LANDMARK_COLORS", "VideoWriter", "compose_overlay", "draw_landmarks", "shade"]

# Share of light that does not depend on the surface direction, and the mesh's gray level.
AMBIENT = 0.2
MESH_GRAY = 0.85
# Default dot colours (RGB) of the landmark sets the tracker draws; other sets cycle through _PALETTE.
LANDMARK_COLORS: Dict[str, Tuple[int, int, int]] = {
    "mediapipe": (0, 220, 0),
    "ibug68": (255, 60, 60),
    "iris": (0, 200, 255),
    "fitted": (255, 255, 0),
    # the tracker's overlay, as the original's: detected landmarks green, the fitted model's red
    "detected": (0, 220, 0),
    "model": (255, 0, 0),
}
_PALETTE = ((255, 0, 255), (255, 160, 0), (120, 120, 255), (255, 255, 255))

ArrayLike = Union[np.ndarray, torch.Tensor]


def _np(x: ArrayLike, dtype=np.float32) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=dtype)


def _mesh_gray(verts_screen: ArrayLike, faces: ArrayLike, height: int, width: int,
               normals: Optional[ArrayLike], cull_backfaces: bool,
               fragments: Optional[Fragments] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Flat indices of the covered pixels (ascending) and their gray level (float, 0..255).

    ``fragments``: a rasterisation of ``faces`` followed by further triangles (the depth's mouth
    triangles); pixels won by those further triangles are left out."""
    v = torch.as_tensor(_np(verts_screen))
    f = torch.as_tensor(_np(faces, np.int64))
    frags = rasterize(v, f, height, width, cull_backfaces=cull_backfaces) if fragments is None else fragments
    if normals is None:
        finite = v[torch.isfinite(v).all(1)]
        ext = (finite.amax(0) - finite.amin(0)).clamp_min(1e-12) if len(finite) else torch.ones(3)
        scale = 0.5 * float(ext[0] + ext[1]) / float(ext[2])
        normals = vertex_normals(v * torch.tensor([1.0, 1.0, scale]), f)
    n_z = torch.as_tensor(_np(normals))[:, 2].nan_to_num(0.0)
    # headlight along -z, lit from both sides; gray level per vertex, interpolated (Gouraud)
    level = (AMBIENT + (1.0 - AMBIENT) * n_z.abs()) * (MESH_GRAY * 255.0)
    pix = frags.covered_index()
    if len(pix) == 0:
        return pix, level[:0]
    tri = frags.tri_id.view(-1).index_select(0, pix)
    w = frags.covered_bary
    if fragments is not None:
        own = tri < len(f)
        if not bool(own.all()):
            pix, tri, w = pix[own], tri[own], w[own]
    corners = f.t().contiguous().index_select(1, tri)  # (3, P)
    gray = level.index_select(0, corners[0]) * w[:, 0]
    gray += level.index_select(0, corners[1]) * w[:, 1]
    gray += level.index_select(0, corners[2]) * w[:, 2]
    return pix, gray


def shade(verts_screen: ArrayLike, faces: ArrayLike, height: int, width: int,
          normals: Optional[ArrayLike] = None, cull_backfaces: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """Gray Lambertian shading of a mesh lit from the camera (headlight, two-sided), Gouraud-smooth.

    Args:
        verts_screen: (V, 3) x pixels, y pixels (down), depth > 0 (see ``raster.rasterize``).
        faces: (F, 3) vertex indices.
        height, width: image size.
        normals: (V, 3) unit vertex normals in the camera frame (x right, y down, z forward), e.g.
            ``vertex_normals(R X + t, faces)``. When None they are estimated from the screen
            vertices with the depth scaled so that its extent equals the mean of the x and y extents
            (right for a head-shaped mesh to about 20%; only the contrast of the shading depends on it).
        cull_backfaces: draw only camera-facing triangles (``raster.rasterize``; right for FLAME under
            an OpenCV camera, faster); False draws both sides.

    Returns:
        rgb (H, W, 3) uint8 (black background) and mask (H, W) bool of the covered pixels.
    """
    pix, gray = _mesh_gray(verts_screen, faces, height, width, normals, cull_backfaces)
    g = torch.zeros(height * width, dtype=torch.uint8)
    g.index_copy_(0, pix, gray.round_().clamp_(0, 255).to(torch.uint8))
    mask = torch.zeros(height * width, dtype=torch.bool)
    mask[pix] = True
    return cv2.cvtColor(g.view(height, width).numpy(), cv2.COLOR_GRAY2RGB), mask.view(height, width).numpy()


def draw_landmarks(rgb: np.ndarray, points_by_set: Mapping[str, ArrayLike],
                   colors: Optional[Mapping[str, Sequence[int]]] = None, radius: Optional[int] = None) -> np.ndarray:
    """A copy of ``rgb`` (uint8) with each set's points drawn as filled dots; NaN points are skipped.

    Args:
        rgb: (H, W, 3) uint8.
        points_by_set: name -> (N, 2) pixel coordinates (OpenCV: (0, 0) = centre of the top-left pixel).
        colors: name -> RGB; default ``LANDMARK_COLORS`` then a fixed palette.
        radius: dot radius in pixels; default 1 per 256 pixels of the image width (at least 1).
    """
    out = np.array(rgb, dtype=np.uint8, copy=True, order="C")
    h, w = out.shape[:2]
    r = max(1, round(w / 256)) if radius is None else int(radius)
    extra = 0
    for name, pts in points_by_set.items():
        if pts is None:
            continue
        if colors is not None and name in colors:
            color = colors[name]
        elif name in LANDMARK_COLORS:
            color = LANDMARK_COLORS[name]
        else:
            color = _PALETTE[extra % len(_PALETTE)]
            extra += 1
        p = _np(pts, np.float64).reshape(-1, 2)
        ok = np.isfinite(p).all(1) & (p[:, 0] > -r) & (p[:, 0] < w + r) & (p[:, 1] > -r) & (p[:, 1] < h + r)
        color = tuple(int(c) for c in color)
        for x, y in np.rint(p[ok] * 16).astype(np.int64).tolist():  # 4 fractional bits
            cv2.circle(out, (x, y), r * 16, color, -1, cv2.LINE_8, 4)
    return out


def compose_overlay(crop_rgb: np.ndarray, landmarks_by_set: Mapping[str, ArrayLike], verts_screen: ArrayLike,
                    faces: ArrayLike, mesh_alpha: float = 0.6, normals: Optional[ArrayLike] = None,
                    colors: Optional[Mapping[str, Sequence[int]]] = None, cull_backfaces: bool = True,
                    fragments: Optional[Fragments] = None) -> np.ndarray:
    """One video frame: input | input with the landmarks | the shaded mesh blended over the input.

    Args:
        crop_rgb: (H, W, 3) uint8 frame the camera refers to.
        landmarks_by_set: name -> (N, 2) pixel coordinates (see ``draw_landmarks``).
        verts_screen, faces, normals, cull_backfaces: the mesh (see ``shade``).
        mesh_alpha: opacity of the mesh over the input.
        fragments: the frame's rasterisation when already done (``depth.rasterize_frame``: ``faces``
            then the mouth triangles, which the overlay does not draw); else rasterised here.

    Returns:
        (H, 3 W, 3) uint8 RGB.
    """
    crop = np.ascontiguousarray(crop_rgb, dtype=np.uint8)
    h, w = crop.shape[:2]
    out = np.empty((h, 3 * w, 3), np.uint8)
    out[:, :w] = crop
    out[:, w:2 * w] = draw_landmarks(crop, landmarks_by_set, colors)
    right = out[:, 2 * w:]
    right[:] = crop
    pix, gray = _mesh_gray(verts_screen, faces, h, w, normals, cull_backfaces, fragments)
    if len(pix):
        # whole-image OpenCV blend of the gray render, copied under the covered pixels
        idx = pix.numpy()
        level = np.zeros(h * w, np.uint8)
        level[idx] = gray.round_().clamp_(0, 255).to(torch.uint8).numpy()
        mask = np.zeros(h * w, np.uint8)
        mask[idx] = 255
        a = float(mesh_alpha)
        blend = cv2.addWeighted(crop, 1.0 - a, cv2.cvtColor(level.reshape(h, w), cv2.COLOR_GRAY2RGB), a, 0.0)
        cv2.copyTo(blend, mask.reshape(h, w), right)
    return out


class VideoWriter:
    """MPEG-4 (``mp4v``) video written to a temporary file beside ``path`` and renamed onto ``path``
    by ``close()``, so an interrupted run never leaves a truncated video under the final name.

    Use as a context manager; ``write(rgb)`` takes (height, width, 3) uint8 RGB frames. On an
    exception inside the ``with`` block (or ``abort()``) the temporary file is removed.
    """

    FOURCC = "mp4v"

    def __init__(self, path: Union[str, os.PathLike], fps: float, size: Tuple[int, int]):
        self.path = Path(path)
        self.width, self.height = int(size[0]), int(size[1])
        self.frames = 0
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_path(self.path, fsync=False))
        self._writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*self.FOURCC), float(fps),
                                       (self.width, self.height))
        if not self._writer.isOpened():
            err = MICAError(f"cannot write the video {self.path}: OpenCV could not open the '{self.FOURCC}' "
                            f"codec for {self.width}x{self.height} at {fps} fps; reinstall opencv-python-headless "
                            "from requirements.txt or skip the video (--no-video)")
            self._writer.release()
            self._writer = None
            self._stack.__exit__(type(err), err, None)  # removes the temporary file
            raise err

    def write(self, rgb: np.ndarray) -> None:
        if self._writer is None:
            raise ValueError(f"VideoWriter for {self.path} is closed")
        if rgb.shape != (self.height, self.width, 3) or rgb.dtype != np.uint8:
            raise ValueError(f"VideoWriter for {self.path}: expected a ({self.height}, {self.width}, 3) uint8 "
                             f"frame, got {rgb.shape} {rgb.dtype}")
        self._writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self) -> None:
        """Finish the file and rename it onto ``path``."""
        if self._writer is None:
            return
        self._writer.release()
        self._writer = None
        self._stack.close()

    def abort(self) -> None:
        """Drop the video: release the writer and remove the temporary file."""
        if self._writer is None:
            return
        self._writer.release()
        self._writer = None
        err = RuntimeError("video aborted")
        self._stack.__exit__(type(err), err, None)  # removes the temporary file

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False

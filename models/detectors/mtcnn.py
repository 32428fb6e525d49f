"""MTCNN (Zhang et al. 2016): our own P-Net/R-Net/O-Net cascade (torch) running the MIT-licensed
weights shipped in the ``facenet-pytorch`` package (installed with ``--no-deps``; the package itself
is never imported, it needs torchvision). It works on a fresh install with nothing to download.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import pickle
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from models.detectors.face import Face, check_image
from models.detectors.nms import nms
from utils.errors import MICAError

PathLike = str | os.PathLike

__all__ = ["MTCNN", "PNet", "RNet", "ONet", "find_mtcnn_weights", "shrink_area"]


# ------------------------------------------------------------------------------------------------
# MTCNN (Zhang et al. 2016) with facenet-pytorch's converted weights
# ------------------------------------------------------------------------------------------------
class PNet(nn.Module):
    """Proposal net: fully convolutional, 12x12 receptive field, stride 2.
    forward (B,3,H,W) -> (box regression (B,4,h,w), face probability (B,2,h,w))."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, 3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, 3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, 3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor, sizes: Sequence[tuple[int, int]] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``sizes``: per batch item the (height, width) of the image at the top-left of a larger
        canvas; outputs within :meth:`output_size` of it then equal those of the image alone
        (the ceil-mode pooling sees no canvas pixels)."""
        x = self.prelu1(self.conv1(x))
        if sizes is not None:
            keep = torch.zeros((x.shape[0], 1, x.shape[2], x.shape[3]), dtype=torch.bool, device=x.device)
            for k, (h, w) in enumerate(sizes):
                keep[k, :, :h - 2, :w - 2] = True
            x = x.masked_fill(~keep, float("-inf"))
        x = self.pool1(x)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)

    @staticmethod
    def output_size(h: int, w: int) -> tuple[int, int]:
        """Output map size for an (h, w) input: 3x3 conv, ceil-mode 2x2 pooling, two 3x3 convs."""
        return -(-(h - 2) // 2) - 4, -(-(w - 2) // 2) - 4


def _flatten_transposed(x: torch.Tensor) -> torch.Tensor:
    """Flatten (B,C,H,W) in (W,H,C) order: the dense weights come from a model trained on
    transposed images, so its flatten order is width-major."""
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class RNet(nn.Module):
    """Refine net: (B,3,24,24) -> (box regression (B,4), face probability (B,2))."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, 3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, 3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, 2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(_flatten_transposed(x)))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)


class ONet(nn.Module):
    """Output net: (B,3,48,48) -> (box regression (B,4), landmarks (B,10) = 5 x then 5 y in
    [0,1] box units, face probability (B,2))."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, 3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, 2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(_flatten_transposed(x)))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)


def find_mtcnn_weights() -> Path:
    """Folder holding pnet.pt, rnet.pt, onet.pt of the installed facenet-pytorch (not imported).

    Raises:
        MICAError: the package (or its data files) is not installed.
    """
    candidates = []
    spec = importlib.util.find_spec("facenet_pytorch")  # top-level: locates without importing
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "data" for p in spec.submodule_search_locations]
    try:
        dist = importlib.metadata.distribution("facenet-pytorch")
        candidates.append(Path(dist.locate_file("facenet_pytorch/data")))
    except importlib.metadata.PackageNotFoundError:
        pass
    for folder in candidates:
        if all((folder / f"{n}.pt").is_file() for n in ("pnet", "rnet", "onet")):
            return folder
    raise MICAError("MTCNN weights (facenet_pytorch/data/{pnet,rnet,onet}.pt) not found; install them with "
                    "`pip install --no-deps facenet-pytorch==2.6.0` (bash install.sh does this)")


def shrink_area(image: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """``image`` shrunk by area averaging so that its longer side is ``max_side`` pixels.

    Halves by 2x2 block means (OpenCV's fast integer path) while the image is at least eight times
    the target size, then one area resampling to the target: several times faster on camera photos
    than one area resampling (bench/README.md, Detection), nearly the same pixels; photos under eight
    times the target get exactly OpenCV's area resampling. (Halving further down moved MTCNN's
    keypoints noticeably on a test photo: MTCNN reacts to small pixel changes.) A halving drops
    an odd last row/column, so at most 2^k - 1 pixels at the right and bottom edge are not looked
    at. Returns the image and ``(sx, sy)``, the factors that map original pixel-edge coordinates
    onto it. An image no larger than ``max_side`` is returned as it is.
    """
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image, np.ones(2, dtype=np.float32)
    scale = max_side / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    factor = 1
    while image.shape[1] >= 8 * nw and image.shape[0] >= 8 * nh:
        ih, iw = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
        image = cv2.resize(image[:ih, :iw], (iw // 2, ih // 2), interpolation=cv2.INTER_AREA)
        factor *= 2
    used_w, used_h = image.shape[1] * factor, image.shape[0] * factor  # original pixels covered
    image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    return image, np.array([nw / used_w, nh / used_h], dtype=np.float32)


class MTCNN:
    """Three-stage MTCNN cascade (image pyramid -> P-Net -> R-Net -> O-Net) with 5 landmarks.

    Args:
        weights_dir: folder with pnet.pt / rnet.pt / onet.pt (default: the installed facenet-pytorch).
        min_face_size: smallest face searched for, in pixels.
        thresholds: face-probability thresholds of the three stages.
        factor: pyramid scale step.
        threshold: extra minimum final score (the O-Net probability) applied to the output.
        max_side: photos whose longer side exceeds this many pixels are detected on a copy shrunk
            to it (results mapped back), which bounds the run time on camera-size photos; faces
            smaller than ``min_face_size`` x (longer side / max_side) are then missed. The default
            (320 px, faces down to ~6% of the longer side) finds what MICA's SCRFD finds at its
            224x224 detection size. None or 0 = search the photo at its own size.
        min_face: smallest face searched for as a fraction of the photo's longer side (0 = down to
            ``min_face_size`` pixels of the searched image, MTCNN's own search). The pyramid levels
            for smaller faces are skipped (:meth:`_first_level`); the others are the same levels,
            and faces of at least this size were found as with the full search on every test photo
            and video frame. A photo in which nothing is found, or a face smaller than this, is
            searched again with every level: its result is the full search's. What min_face can
            miss: small faces beside a large one that the coarser levels alone do not find (pass 0
            for group photos). The finest levels are the costliest (bench/README.md, Demo).
        device: torch device for the networks (default cpu).
    """

    def __init__(self, weights_dir: PathLike | None = None, min_face_size: int = 20,
                 thresholds: Sequence[float] = (0.6, 0.7, 0.7), factor: float = 0.709, threshold: float = 0.0,
                 max_side: int | None = 320, min_face: float = 0.0, device: str | torch.device = "cpu") -> None:
        folder = Path(weights_dir).expanduser() if weights_dir is not None else find_mtcnn_weights()
        self.device = torch.device(device)
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()
        for name, net in (("pnet", self.pnet), ("rnet", self.rnet), ("onet", self.onet)):
            path = folder / f"{name}.pt"
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
                net.load_state_dict(state, strict=True)
            except FileNotFoundError:
                raise MICAError(f"MTCNN weights {path} not found; reinstall with "
                                f"`pip install --no-deps facenet-pytorch==2.6.0`") from None
            except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as e:
                raise MICAError(f"MTCNN weights {path} are corrupt or of another format "
                                f"({str(e).splitlines()[0]}); reinstall facenet-pytorch==2.6.0 --no-deps") from None
            net.to(self.device).eval()
            net.requires_grad_(False)
        # P-Net runs on whole pyramid levels: NHWC convolutions/pooling are faster on CPU
        self.pnet.to(memory_format=torch.channels_last)
        self.min_face_size = float(min_face_size)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = float(factor)
        self.threshold = float(threshold)
        self.max_side = int(max_side) if max_side else None
        if not 0.0 <= float(min_face) <= 0.9:
            raise MICAError(f"MTCNN min_face is a fraction of the photo's longer side in 0..0.9, not {min_face}")
        self.min_face = float(min_face)
        # ``timer(stage)`` -> context manager: where the time goes (bench/demo.py sets a StageTimer);
        # stages det:shrink, det:pyramid, det:pnet, det:nms, det:rnet, det:onet. None = not timed.
        self.timer: Callable[[str], AbstractContextManager] | None = None

    def _timed(self, stage: str) -> AbstractContextManager:
        return self.timer(stage) if self.timer is not None else contextlib.nullcontext()

    # -- helpers (boxes are (N,4) float64 numpy in MTCNN's 1-based inclusive pixel convention) --
    @staticmethod
    def _normalise(x: torch.Tensor) -> torch.Tensor:
        return (x - 127.5) * 0.0078125

    @staticmethod
    def _square(boxes: np.ndarray) -> np.ndarray:
        """Grow each box to a square of side max(w, h) around its centre."""
        w = boxes[:, 2] - boxes[:, 0]
        h = boxes[:, 3] - boxes[:, 1]
        side = np.maximum(w, h)
        x1 = boxes[:, 0] + w * 0.5 - side * 0.5
        y1 = boxes[:, 1] + h * 0.5 - side * 0.5
        return np.stack([x1, y1, x1 + side, y1 + side], axis=1)

    @staticmethod
    def _regress(boxes: np.ndarray, reg: np.ndarray, plus_one: bool = True) -> np.ndarray:
        """Apply box regression offsets (fractions of the box width/height)."""
        w = boxes[:, 2] - boxes[:, 0] + (1 if plus_one else 0)
        h = boxes[:, 3] - boxes[:, 1] + (1 if plus_one else 0)
        return boxes + reg * np.stack([w, h, w, h], axis=1)

    def _crops(self, img: np.ndarray, boxes: np.ndarray, size: int) -> torch.Tensor:
        """(N,3,size,size) normalised crops of ``boxes`` (1-based inclusive, truncated to ints) of
        the (H,W,3) float32 photo; parts outside the photo are zero-padded as in the original MTCNN."""
        h, w = img.shape[:2]
        b = np.trunc(boxes).astype(np.int64)
        out = np.empty((len(b), size, size, 3), dtype=np.float32)
        for k, (x1, y1, x2, y2) in enumerate(b.tolist()):
            if x1 >= 1 and y1 >= 1 and x2 <= w and y2 <= h and x2 >= x1 and y2 >= y1:
                patch = img[y1 - 1:y2, x1 - 1:x2]  # inside the photo: no padded copy needed
            else:
                bw, bh = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
                patch = np.zeros((bh, bw, 3), dtype=np.float32)
                sx1, sy1 = max(x1 - 1, 0), max(y1 - 1, 0)
                sx2, sy2 = min(x2, w), min(y2, h)  # exclusive, 0-based
                if sx2 > sx1 and sy2 > sy1:
                    dx, dy = sx1 - (x1 - 1), sy1 - (y1 - 1)
                    patch[dy:dy + sy2 - sy1, dx:dx + sx2 - sx1] = img[sy1:sy2, sx1:sx2]
            out[k] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
        return self._normalise(torch.from_numpy(out).to(self.device).permute(0, 3, 1, 2))

    @staticmethod
    def _batched(net: nn.Module, x: torch.Tensor, batch: int = 512) -> list[np.ndarray]:
        outs = [net(x[i:i + batch]) for i in range(0, len(x), batch)]
        return [torch.cat(o).float().cpu().numpy().astype(np.float64) for o in zip(*outs, strict=True)]

    def _scales(self, h: int, w: int) -> list[float]:
        """The pyramid of an (h, w) image: MTCNN's scales, from the one that maps ``min_face_size``
        onto P-Net's 12 px window down to the one whose level's shorter side is still 12 px."""
        m = 12.0 / self.min_face_size
        minl = min(h, w) * m
        scales = []
        while minl >= 12:
            scales.append(m)
            m *= self.factor
            minl *= self.factor
        return scales

    def _first_level(self, scales: Sequence[float], h: int, w: int) -> int:
        """How many of the finest ``scales`` an (h, w) image skips under ``min_face``: the levels
        whose window (12 / scale image pixels) is under ``factor``^2 x the smallest face
        (``min_face`` x the longer side). The levels searched are those of the full pyramid, pixel
        for pixel. The margin of two pyramid steps is measured, not proven: P-Net windows grow by
        the box regression, and on the test photos a 38 px face's final box and keypoints came
        from the 20 px level (0.53 x its size); one step of margin moved them by 4.6% of the face
        width (bench/README.md, Demo)."""
        if not self.min_face:
            return 0
        smallest = self.factor ** 2 * self.min_face * max(h, w)
        return next((i for i, s in enumerate(scales) if 12.0 / s >= smallest), len(scales))

    @torch.inference_mode()
    def detect(self, image_rgb: np.ndarray) -> list[Face]:
        """Faces in ``image_rgb`` (H, W, 3) uint8 RGB, highest score first."""
        return self.detect_batch([image_rgb])[0]

    @torch.inference_mode()
    def detect_batch(self, images_rgb: Sequence[np.ndarray]) -> list[list[Face]]:
        """Faces of several photos, each list highest score first; the networks run once per pyramid
        scale (P-Net) and once per stage (R-Net, O-Net) for all photos together.

        Each photo is searched exactly as alone: its own shrunk copy (``max_side``) and pyramid
        levels (OpenCV's area resampling), placed at the top-left of a zero canvas as large as the
        largest photo's level at that scale. P-Net has no padding, so the output at a window that lies
        inside the photo's level is the one the photo alone gives; windows reaching into the canvas
        are dropped. One call instead of one per photo and scale is what keeps a GPU busy
        (detection of a batch of 64 photos: 3 + ~10 launches of each layer instead of ~800).
        """
        rgbs = [check_image(im) for im in images_rgb]
        small, factors = [], []
        for rgb in rgbs:
            if self.max_side is None or max(rgb.shape[:2]) <= self.max_side:
                small.append(rgb.astype(np.float32))
                factors.append(None)
            else:
                with self._timed("det:shrink"):
                    s, sxy = shrink_area(rgb, self.max_side)
                small.append(s.astype(np.float32))
                factors.append(sxy)
        found = self._cascade(small, full=not self.min_face)
        again = [k for k, faces in enumerate(found) if self.min_face and not self._all_large(faces, small[k].shape)]
        if again:  # no face, or one smaller than min_face: the full search, as without min_face
            for k, faces in zip(again, self._cascade([small[k] for k in again], full=True), strict=True):
                found[k] = faces
        return [faces if sxy is None else [Face(f.box / np.tile(sxy, 2), f.kps / sxy, f.score) for f in faces]
                for faces, sxy in zip(found, factors, strict=True)]

    def _all_large(self, faces: Sequence[Face], shape: Sequence[int]) -> bool:
        """Whether ``faces`` (in a searched image of ``shape``) are some, each at least ``min_face``
        x its longer side wide or high: only then is the result of the reduced pyramid kept. A
        smaller face found from the coarser levels alone can sit several % of its width away from
        where the full search puts it (a 1080p video frame with an 8% face: 2-9%)."""
        side = self.min_face * max(shape[:2])
        return bool(faces) and all(max(f.box[2] - f.box[0], f.box[3] - f.box[1]) >= side for f in faces)

    def _pnet_candidates(self, imgs: Sequence[np.ndarray], full: bool) -> list[np.ndarray]:
        """Stage 1 for every photo: P-Net over the pyramid (without the levels ``min_face`` skips
        unless ``full``), per-scale NMS 0.5, then NMS 0.7 across scales; returns per photo the
        ``(N, 9)`` candidates (box, score, regression)."""
        sizes = [img.shape[:2] for img in imgs]
        n_levels = [len(self._scales(h, w)) for h, w in sizes]  # every photo's pyramid is a prefix of the longest
        scales = self._scales(*sizes[int(np.argmax(n_levels))]) if sizes else []
        firsts = [0 if full else self._first_level(scales[:n], h, w) for n, (h, w) in zip(n_levels, sizes, strict=True)]
        cands: list[list[np.ndarray]] = [[] for _ in imgs]
        for s_idx, scale in enumerate(scales):
            levels = {}
            with self._timed("det:pyramid"):
                for k, (img, (h, w)) in enumerate(zip(imgs, sizes, strict=True)):
                    if firsts[k] <= s_idx < n_levels[k]:
                        levels[k] = cv2.resize(img, (int(w * scale + 1), int(h * scale + 1)),
                                               interpolation=cv2.INTER_AREA)
            if not levels:
                continue
            lh = max(lv.shape[0] for lv in levels.values())
            lw = max(lv.shape[1] for lv in levels.values())
            order = list(levels)
            level_sizes = [levels[k].shape[:2] for k in order]
            if len(order) == 1:  # no canvas needed
                batch, canvas_sizes = torch.from_numpy(levels[order[0]])[None], None
            else:
                canvas = np.zeros((len(order), lh, lw, 3), dtype=np.float32)
                for j, k in enumerate(order):
                    lv = levels[k]
                    canvas[j, :lv.shape[0], :lv.shape[1]] = lv
                batch, canvas_sizes = torch.from_numpy(canvas), level_sizes
            with self._timed("det:pnet"):
                x = self._normalise(batch.to(self.device).permute(0, 3, 1, 2))
                reg_all, prob_all = self.pnet(x.contiguous(memory_format=torch.channels_last), canvas_sizes)
                prob_all = prob_all[:, 1].float().cpu().numpy()
                reg_all = reg_all.float().cpu().numpy()
            for j, k in enumerate(order):
                vh, vw = PNet.output_size(*level_sizes[j])  # this photo's windows
                prob = prob_all[j, :vh, :vw]
                ys, xs = np.nonzero(prob >= self.thresholds[0])
                if len(ys) == 0:
                    continue
                pos = np.stack([xs, ys], axis=1).astype(np.float64)
                q1 = np.floor((2 * pos + 1) / scale)
                q2 = np.floor((2 * pos + 12) / scale)
                c = np.concatenate([q1, q2, prob[ys, xs][:, None].astype(np.float64),
                                    reg_all[j][:, ys, xs].T.astype(np.float64)], axis=1)
                with self._timed("det:nms"):
                    cands[k].append(c[nms(c[:, :4], c[:, 4], 0.5)])
        out = []
        with self._timed("det:nms"):
            for cs in cands:
                c = np.concatenate(cs) if cs else np.zeros((0, 9))
                out.append(c[nms(c[:, :4], c[:, 4], 0.7)] if len(c) else c)
        return out

    def _refine(self, net: nn.Module, imgs: Sequence[np.ndarray], boxes: list[np.ndarray],
                size: int) -> list[list[np.ndarray]]:
        """Run ``net`` once on the ``size`` crops of every photo's ``boxes``; outputs split per photo."""
        counts = [len(b) for b in boxes]
        crops = [self._crops(img, b, size) for img, b in zip(imgs, boxes, strict=True) if len(b)]
        if not crops:
            return [[] for _ in imgs]
        outs = self._batched(net, torch.cat(crops))
        splits = np.cumsum(counts)[:-1]
        per_output = [np.split(o, splits) for o in outs]
        return [[po[k] for po in per_output] for k in range(len(imgs))]

    def _cascade(self, imgs: Sequence[np.ndarray], full: bool) -> list[list[Face]]:
        """The three stages for float32 photos at their own resolution (``full``: every pyramid level)."""
        n = len(imgs)
        boxes = []
        for c in self._pnet_candidates(imgs, full):
            boxes.append(self._square(self._regress(c[:, :4], c[:, 5:9], plus_one=False)) if len(c)
                         else np.zeros((0, 4)))

        # Stage 2: R-Net on 24x24 crops
        with self._timed("det:rnet"):
            outs = self._refine(self.rnet, imgs, boxes, 24)
        for k in range(n):
            if not len(boxes[k]):
                continue
            reg, prob = outs[k]
            ok = prob[:, 1] > self.thresholds[1]
            b, reg, score = boxes[k][ok], reg[ok], prob[ok, 1]
            if len(b) == 0:
                boxes[k] = np.zeros((0, 4))
                continue
            keep = nms(b, score, 0.7)
            boxes[k] = self._square(self._regress(b[keep], reg[keep]))

        # Stage 3: O-Net on 48x48 crops, landmarks
        with self._timed("det:onet"):
            outs = self._refine(self.onet, imgs, boxes, 48)
        result: list[list[Face]] = []
        for k in range(n):
            if not len(boxes[k]):
                result.append([])
                continue
            reg, lmk, prob = outs[k]
            ok = prob[:, 1] > self.thresholds[2]
            b, reg, lmk, score = boxes[k][ok], reg[ok], lmk[ok], prob[ok, 1]
            if len(b) == 0:
                result.append([])
                continue
            bw = b[:, 2] - b[:, 0] + 1
            bh = b[:, 3] - b[:, 1] + 1
            kps = np.stack([bw[:, None] * lmk[:, :5] + b[:, :1] - 1,
                            bh[:, None] * lmk[:, 5:] + b[:, 1:2] - 1], axis=2)  # (N,5,2), 0-based
            b = self._regress(b, reg)
            keep = nms(b, score, 0.7, mode="min")
            b = b[keep] - np.array([1.0, 1.0, 0.0, 0.0])  # 1-based inclusive -> 0-based edges
            result.append([Face(b[i].astype(np.float32), kps[j].astype(np.float32), float(score[j]))
                           for i, j in enumerate(keep) if score[j] >= self.threshold])
        return result


"""SCRFD (insightface antelopev2 ``scrfd_10g_bnkps.onnx``, onnxruntime): what MICA detects with.

The pack is licence-restricted and never downloaded at run time.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from models.detectors.face import Face, check_image
from models.detectors.nms import nms
from utils.errors import MICAError

PathLike = str | os.PathLike

__all__ = ["SCRFD", "SCRFD_FILE", "DEFAULT_ANTELOPEV2_DIR"]

DEFAULT_ANTELOPEV2_DIR = "~/.insightface/models/antelopev2"
SCRFD_FILE = "scrfd_10g_bnkps.onnx"
_ANTELOPE_HOWTO = ("get it with `bash install.sh --download` or unzip antelopev2.zip to "
                   "~/.insightface/models/antelopev2")


class SCRFD:
    """onnxruntime runner for insightface SCRFD models with keypoints (``*_bnkps.onnx``).

    Pre-processing as insightface: the photo is resized keeping its aspect ratio into the top-left
    corner of a ``det_size`` canvas (rest black), then fed as RGB (pixel - 127.5) / 128, NCHW.
    Outputs (9): scores, box distances, keypoint distances for strides 8, 16, 32, two anchors per
    location; distances are in stride units from the anchor centre.

    Args:
        model_path: the .onnx file.
        det_size: (width, height) of the network input (MICA's demo: 224x224); ignored when the
            model has a fixed input size.
        threshold: minimum score.
        nms_threshold: IoU above which a lower-scoring box is suppressed (insightface: 0.4).
        providers: onnxruntime execution providers (default: CUDA when available, else CPU).
    """

    STRIDES = (8, 16, 32)
    NUM_ANCHORS = 2
    INPUT_MEAN = 127.5
    INPUT_STD = 128.0

    def __init__(self, model_path: PathLike, det_size: Sequence[int] = (224, 224), threshold: float = 0.5,
                 nms_threshold: float = 0.4, providers: Sequence[str] | None = None) -> None:
        import onnxruntime as ort

        self.model_path = Path(model_path).expanduser()
        if not self.model_path.is_file():
            raise MICAError(f"SCRFD model {self.model_path} not found; {_ANTELOPE_HOWTO} "
                            f"(or use detector.name mtcnn)")
        if providers is None:
            avail = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail]
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.model_path), sess_options=opts, providers=list(providers))
        except Exception as e:  # onnxruntime raises its own exception types for corrupt files
            raise MICAError(f"SCRFD model {self.model_path} cannot be loaded ({type(e).__name__}); "
                            f"re-download antelopev2: {_ANTELOPE_HOWTO}") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.output_names = [o.name for o in self.session.get_outputs()]
        if len(self.output_names) != 9:
            raise MICAError(f"SCRFD model {self.model_path} has {len(self.output_names)} outputs, expected 9 "
                            f"(scores, boxes, keypoints x 3 strides); use antelopev2's {SCRFD_FILE}")
        shape = inp.shape
        if len(shape) == 4 and isinstance(shape[2], int) and isinstance(shape[3], int):
            self.input_size = (int(shape[3]), int(shape[2]))  # fixed (width, height)
        else:
            self.input_size = (int(det_size[0]), int(det_size[1]))
        if any(s % self.STRIDES[-1] for s in self.input_size):
            raise ValueError(f"SCRFD det_size {self.input_size} must be multiples of 32")
        self.threshold = float(threshold)
        self.nms_threshold = float(nms_threshold)
        # a batch axis we may fill: dynamic in the input, and outputs that keep it (B, anchors, C)
        self.batched = (len(shape) == 4 and not isinstance(shape[0], int)
                        and all(len(o.shape) == 3 for o in self.session.get_outputs()))

    @property
    def on_gpu(self) -> bool:
        """True when onnxruntime runs the model on its CUDA provider (onnxruntime-gpu installed)."""
        return self.session.get_providers()[0] == "CUDAExecutionProvider"

    def preprocess(self, image_rgb: np.ndarray) -> tuple[np.ndarray, float]:
        """Letterbox + normalise: returns the (1, 3, H_in, W_in) float32 blob and the resize factor."""
        img = check_image(image_rgb)
        in_w, in_h = self.input_size
        h, w = img.shape[:2]
        if h / w > in_h / in_w:
            new_h = in_h
            new_w = int(new_h / (h / w))
        else:
            new_w = in_w
            new_h = int(new_w * (h / w))
        new_w, new_h = max(new_w, 1), max(new_h, 1)
        det_scale = new_h / h
        canvas = np.zeros((in_h, in_w, 3), np.uint8)
        canvas[:new_h, :new_w] = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        blob = (canvas.astype(np.float32) - self.INPUT_MEAN) / self.INPUT_STD
        return np.ascontiguousarray(blob.transpose(2, 0, 1)[None]), det_scale

    def anchor_centres(self, stride: int) -> np.ndarray:
        """(H/s * W/s * 2, 2) anchor centres (x, y) in input pixels, row-major, anchors adjacent."""
        in_w, in_h = self.input_size
        gh, gw = in_h // stride, in_w // stride
        ys, xs = np.mgrid[0:gh, 0:gw]
        centres = np.stack([xs, ys], -1).reshape(-1, 2).astype(np.float32) * stride
        return np.repeat(centres, self.NUM_ANCHORS, axis=0)

    def decode(self, outputs: Sequence[np.ndarray], det_scale: float) -> list[Face]:
        """Turn the 9 raw outputs into faces in photo pixels (threshold, NMS, sorted by score)."""
        n = len(self.STRIDES)
        boxes, kpss, scores = [], [], []
        for i, stride in enumerate(self.STRIDES):
            # batched exports have a leading batch axis of 1
            sc, bb, kp = (np.asarray(outputs[i + k * n]) for k in range(3))
            if sc.ndim == 3:
                sc, bb, kp = sc[0], bb[0], kp[0]
            sc = sc.reshape(-1)
            bb = bb.reshape(-1, 4) * stride
            kp = kp.reshape(-1, 10) * stride
            centres = self.anchor_centres(stride)
            if len(centres) != len(sc):
                raise MICAError(f"SCRFD model {self.model_path}: stride {stride} gives {len(sc)} scores for "
                                f"{len(centres)} anchors; is it antelopev2's {SCRFD_FILE}?")
            pos = np.nonzero(sc >= self.threshold)[0]
            c = centres[pos]
            d = bb[pos]
            boxes.append(np.concatenate([c - d[:, :2], c + d[:, 2:]], axis=1))
            kpss.append(c[:, None, :] + kp[pos].reshape(-1, 5, 2))
            scores.append(sc[pos])
        box = np.concatenate(boxes) / det_scale
        kps = np.concatenate(kpss) / det_scale
        score = np.concatenate(scores)
        keep = nms(box, score, self.nms_threshold)
        return [Face(box[k].astype(np.float32), kps[k].astype(np.float32), float(score[k])) for k in keep]

    def detect(self, image_rgb: np.ndarray) -> list[Face]:
        """Faces in ``image_rgb`` (H, W, 3) uint8 RGB, highest score first."""
        blob, det_scale = self.preprocess(image_rgb)
        outputs = self.session.run(self.output_names, {self.input_name: blob})
        return self.decode(outputs, det_scale)

    def detect_batch(self, images_rgb: Sequence[np.ndarray]) -> list[list[Face]]:
        """Faces of several photos: one network call for all of them when the model has a dynamic
        batch axis (each photo letterboxed into the same input size, decoded with its own scale),
        else photo by photo. Same faces as ``detect`` on each photo."""
        if not self.batched or len(images_rgb) < 2:
            return [self.detect(im) for im in images_rgb]
        blobs, scales = zip(*(self.preprocess(im) for im in images_rgb), strict=True)
        outputs = self.session.run(self.output_names, {self.input_name: np.concatenate(blobs)})
        return [self.decode([o[b:b + 1] for o in outputs], scale) for b, scale in enumerate(scales)]


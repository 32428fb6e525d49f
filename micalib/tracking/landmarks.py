"""2D face landmarks for tracking: MediaPipe's 478-point face mesh (offline), an optional 68-point
iBUG detector (insightface ``buffalo_l``'s ``1k3d68.onnx``), and the landmark file format.

Coordinates everywhere are pixels of the image the points belong to, in OpenCV's convention: (0, 0)
is the centre of the top-left pixel (the convention of ``cv2.warpAffine`` and of a pinhole K).
Missing points are NaN.

MediaPipe: ``mediapipe==0.10.14`` ships the legacy FaceMesh solution with its models inside the
wheel, so nothing is downloaded. It was built for protobuf < 5; ``_apply_protobuf_shim`` restores the
two methods it calls that protobuf 5 removed (``SymbolDatabase.GetPrototype`` and
``MessageFactory.GetPrototype``, both through ``message_factory.GetMessageClass``) before mediapipe is
imported. Its C++ start-up messages (TFLite delegate, absl warnings) are silenced.

Its normalised output times the image size is used as it is: that is already OpenCV's convention.
MediaPipe warps the face region into the network input with OpenCV (``warpPerspective`` from the
region's corners at centre +- size/2, the centre being normalised x image size) and maps the
network's points back through the same region, so a point lands where OpenCV's pixel-centre
coordinates put it. (Subtracting 0.5, as is sometimes assumed, is wrong here; measured on justin.mp4:
detecting on the mirrored frame and mirroring back, pairs of mirror-symmetric mesh points differ by
1.07 +- 0.11 px more than the pixel-centre convention predicts when 0.5 is subtracted, i.e. 0.07 +-
0.11 px as used here, after removing a part proportional to the face size, 2.4 px per 350 px of
face, that is the network's own (its size matches half a pixel of the network input, 192 px
across the face region). That part is not corrected; ``tests/test_tracking_landmarks.py`` checks the constant one.)

Landmark file (``landmarks.npz``, also the ``--landmarks`` input): a NumPy ``.npz`` archive with
``mediapipe`` (T,478,2) and/or ``ibug68`` (T,68,2) float arrays, one row per frame of the input in
decoding order (before any ``--fps`` resampling), pixel coordinates of the input frames in the
convention above, NaN where missing. Rows that are all exactly zero are read as missing (the
original tracker stores missing detections as zeros).
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import sys
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from loguru import logger

from micalib.tracking.crop import invert_matrix, transform_points, warp
from utils.errors import MICAError
from utils.io import atomic_write_bytes

PathLike = str | os.PathLike

__all__ = [
    "N_MEDIAPIPE", "N_IBUG68", "MEDIAPIPE_IBUG68", "mediapipe_available", "MediaPipeLandmarker",
    "DEFAULT_IBUG68_MODEL", "find_ibug68_model", "Ibug68Detector", "face_box_from_points",
    "detect_in_crop", "FaceSearch", "save_landmarks_npz", "load_landmarks_npz",
]

N_MEDIAPIPE = 478  # 468 mesh points + 10 iris points (468..472 and 473..477)
N_IBUG68 = 68

# The MediaPipe mesh point closest to each of the 68 iBUG points (jaw 0-16, brows 17-26, nose
# 27-35, eyes 36-47, mouth 48-67), in iBUG order. Used where a 68-point set is wanted but only
# MediaPipe ran (the crop box). The jaw points of the two sets differ in definition (iBUG's
# contour follows the silhouette), so this is an approximation for boxes, not for fitting.
MEDIAPIPE_IBUG68 = np.array([
    162, 234, 93, 58, 172, 136, 149, 148, 152, 377, 378, 365, 397, 288, 323, 454, 389,  # jaw
    71, 63, 105, 66, 107, 336, 296, 334, 293, 301,  # brows
    168, 197, 5, 4, 75, 97, 2, 326, 305,  # nose
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,  # eyes
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,  # outer lips
    78, 82, 13, 312, 308, 317, 14, 87,  # inner lips
], dtype=np.int64)


# --------------------------------------------------------------------------------------------
# MediaPipe


def _apply_protobuf_shim() -> None:
    """Give protobuf >= 5 the two GetPrototype methods mediapipe 0.10.14 calls (removed in 5)."""
    from google.protobuf import message_factory, symbol_database

    def get_prototype(self, descriptor):
        return message_factory.GetMessageClass(descriptor)

    if not hasattr(symbol_database.SymbolDatabase, "GetPrototype"):
        symbol_database.SymbolDatabase.GetPrototype = get_prototype
    if not hasattr(message_factory.MessageFactory, "GetPrototype"):
        message_factory.MessageFactory.GetPrototype = get_prototype


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Send what native code writes to file descriptor 2 to /dev/null for the block (mediapipe's
    TFLite/absl start-up messages bypass Python). Python's own stderr is flushed first."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real fd 2 (e.g. some notebook kernels)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


_MEDIAPIPE_STATE: dict[str, object] = {}


def _import_face_mesh():
    """The ``mediapipe.python.solutions.face_mesh`` module (shim applied), or raise MICAError."""
    if "module" in _MEDIAPIPE_STATE:
        return _MEDIAPIPE_STATE["module"]
    if importlib.util.find_spec("mediapipe") is None:
        raise MICAError("MediaPipe is not installed: run 'bash install.sh' (it installs mediapipe 0.10.14), "
                        "or pass your own landmarks with --landmarks FILE.npz")
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    _apply_protobuf_shim()
    try:
        with _quiet_native_stderr():
            from mediapipe.python.solutions import face_mesh
    except Exception as e:  # a broken install shows up as any import-time error
        raise MICAError(f"MediaPipe cannot be imported ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                        "reinstall it with 'bash install.sh', or pass your own landmarks with --landmarks FILE.npz") from None
    _MEDIAPIPE_STATE["module"] = face_mesh
    return face_mesh


def mediapipe_available() -> bool:
    """True when mediapipe's FaceMesh can be imported (with the protobuf shim)."""
    try:
        _import_face_mesh()
    except MICAError:
        return False
    return True


def _as_rgb(rgb: np.ndarray) -> np.ndarray:
    img = np.asarray(rgb)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 (H,W,3) image, got {img.dtype} {img.shape}")
    return np.ascontiguousarray(img)


class MediaPipeLandmarker:
    """MediaPipe FaceMesh with iris refinement: ``detect(rgb) -> (478, 2) float32``.

    Args:
        video_mode: track the face from the previous frame's landmarks (faster, steadier); feed the
            frames of one sequence in order and call ``reset()`` before another sequence.
            False: detect the face in every image independently.
        min_detection_confidence, min_tracking_confidence: MediaPipe's thresholds.
    """

    def __init__(self, video_mode: bool = True, min_detection_confidence: float = 0.5,
                 min_tracking_confidence: float = 0.5):
        self.video_mode = bool(video_mode)
        self._kwargs = dict(static_image_mode=not self.video_mode, max_num_faces=1, refine_landmarks=True,
                            min_detection_confidence=float(min_detection_confidence),
                            min_tracking_confidence=float(min_tracking_confidence))
        self._mesh = None
        self.reset()

    def reset(self) -> None:
        """Start a new sequence (forgets the tracked face)."""
        face_mesh = _import_face_mesh()
        self.close()
        # The graph loads its models in background threads right after construction, and they
        # print; one frame processed inside the quiet block waits for that to finish.
        with _quiet_native_stderr(), warnings.catch_warnings():
            # protobuf 6 deprecates a call mediapipe 0.10.14 makes while building its graph
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"mediapipe\.")
            self._mesh = face_mesh.FaceMesh(**self._kwargs)
            self._mesh.process(np.zeros((64, 64, 3), np.uint8))

    def close(self) -> None:
        if self._mesh is not None:
            self._mesh.close()
            self._mesh = None

    def __enter__(self) -> MediaPipeLandmarker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def detect(self, rgb: np.ndarray) -> np.ndarray:
        """The 478 points of the most prominent face in pixels of ``rgb`` (OpenCV convention), or
        all NaN when no face is found."""
        img = _as_rgb(rgb)
        if self._mesh is None:
            self.reset()
        result = self._mesh.process(img)
        h, w = img.shape[:2]
        out = np.full((N_MEDIAPIPE, 2), np.nan, dtype=np.float32)
        faces = result.multi_face_landmarks
        if faces:
            lm = faces[0].landmark
            xy = np.fromiter((c for p in lm for c in (p.x, p.y)), dtype=np.float64, count=2 * len(lm)).reshape(-1, 2)
            if xy.shape[0] == N_MEDIAPIPE:
                out[:] = xy * (w, h)  # OpenCV pixel-centre coordinates already (module docstring)
        return out


# --------------------------------------------------------------------------------------------
# insightface 1k3d68 (68 iBUG points), used only when the user has the model

DEFAULT_IBUG68_MODEL = Path("~/.insightface/models/buffalo_l/1k3d68.onnx")


def find_ibug68_model(path: PathLike | None = None) -> Path | None:
    """The 1k3d68.onnx to use: ``path`` when given (MICAError if missing), else insightface's
    ``buffalo_l`` pack in the user's home when present, else None."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise MICAError(f"68-point landmark model {p} does not exist (insightface buffalo_l's 1k3d68.onnx; "
                            "fix the path or leave the option out to use MediaPipe only)")
        return p
    p = DEFAULT_IBUG68_MODEL.expanduser()
    return p if p.is_file() else None


def face_box_from_points(points: np.ndarray) -> tuple[float, float, float, float] | None:
    """A face-detector-like box (x1, y1, x2, y2) around landmarks: their bounding box (MediaPipe's
    mesh spans forehead to chin and cheek to cheek, about what SCRFD returns); None if all NaN."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    p = p[np.isfinite(p).all(axis=1)]
    if len(p) == 0:
        return None
    (x1, y1), (x2, y2) = p.min(axis=0), p.max(axis=0)
    return float(x1), float(y1), float(x2), float(y2)


class Ibug68Detector:
    """68 iBUG landmarks from insightface's ``1k3d68.onnx`` (in the ``buffalo_l`` pack), run with
    onnxruntime: ``detect(rgb, box) -> (68, 2) float32`` in pixels of ``rgb``.

    Pre-/post-processing as insightface applies it to this model: the face box (x1, y1, x2, y2) is
    mapped to the network input (192x192 for 1k3d68) by a similarity with scale
    ``input / (1.5 * max(box w, box h))`` centred on the box centre (``cv2.warpAffine``, black
    border); the RGB image is normalised with mean/std 0/1 when the graph starts with its own
    Sub and Mul nodes (or a ``bn_data`` node), else 127.5/128; the output (1, 3309) holds 1103 3D
    points of which the last 68 are the iBUG points, in [-1, 1] of the input: pixel = (v + 1) *
    (input // 2), mapped back by the inverse similarity (the z coordinate is dropped).
    Untested against the real model here (it cannot be downloaded in the test environment); the
    processing is tested with small synthetic ONNX models of the same interface.
    """

    def __init__(self, model_path: PathLike, threads: int = 1):
        import onnx
        import onnxruntime as ort

        self.model_path = Path(model_path).expanduser()
        try:
            graph = onnx.load(str(self.model_path), load_external_data=False).graph
        except Exception as e:
            raise MICAError(f"68-point landmark model {self.model_path} is not a readable ONNX file "
                            f"({type(e).__name__}); re-download insightface's buffalo_l pack") from None
        has_sub = has_mul = False
        for i, node in enumerate(graph.node[:8]):
            if node.name.startswith(("Sub", "_minus")):
                has_sub = True
            if node.name.startswith(("Mul", "_mul")):
                has_mul = True
            if i < 3 and node.name == "bn_data":
                has_sub = has_mul = True
        self.input_mean, self.input_std = (0.0, 1.0) if (has_sub and has_mul) else (127.5, 128.0)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, int(threads))
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.model_path), opts, providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_size = int(inp.shape[3]) if isinstance(inp.shape[3], int) else 192
        self.output_name = self.session.get_outputs()[0].name

    def input_matrix(self, box: tuple[float, float, float, float]) -> np.ndarray:
        """(2,3) similarity from image pixels to network-input pixels for the face box."""
        x1, y1, x2, y2 = (float(v) for v in box)
        s = self.input_size / (max(x2 - x1, y2 - y1) * 1.5)
        cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
        half = self.input_size / 2.0
        return np.array([[s, 0.0, half - s * cx], [0.0, s, half - s * cy]], dtype=np.float64)

    def detect(self, rgb: np.ndarray, box: tuple[float, float, float, float] | None) -> np.ndarray:
        """The 68 points in pixels of ``rgb``; all NaN when ``box`` is None (no face)."""
        out = np.full((N_IBUG68, 2), np.nan, dtype=np.float32)
        if box is None or not np.all(np.isfinite(box)) or max(box[2] - box[0], box[3] - box[1]) <= 0:
            return out
        img = _as_rgb(rgb)
        M = self.input_matrix(box)
        n = self.input_size
        crop = warp(img, M, (n, n))
        blob = ((crop.astype(np.float32) - self.input_mean) / self.input_std).transpose(2, 0, 1)[None]
        pred = np.asarray(self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(blob)})[0][0],
                          dtype=np.float64)
        pred = pred.reshape(-1, 3) if pred.size >= 3000 else pred.reshape(-1, 2)
        pts = (pred[-N_IBUG68:, :2] + 1.0) * (n // 2)
        out[:] = transform_points(pts, invert_matrix(M))
        return out


# --------------------------------------------------------------------------------------------
# Detection on a crop


def detect_in_crop(landmarker, rgb_input: np.ndarray, M: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Run ``landmarker.detect`` on the crop ``warp(rgb_input, M, size)`` and return the points in
    pixels of the input frame (``M``: (2,3) input px -> crop px). With MediaPipe in video mode this
    is not faster than the full frame (it crops its face region itself: about the same time either way,
    bench/README.md); it matters for image mode and the 68-point model. Do not mix crop and full
    frames in one video-mode sequence without ``reset()``: the tracked region is in normalised
    image coordinates."""
    crop = warp(rgb_input, M, size)
    return transform_points(landmarker.detect(crop), invert_matrix(M)).astype(np.float32)


class FaceSearch:
    """A face the full frame does not show (too small for MediaPipe's short-range detector, which
    looks for faces within about 2 m: a 160-px face in a 1080p frame is missed): search square
    windows of the frame again, largest first, and stop at the first hit.

    Windows: side = the frame's shorter side, then half of it, stepped by half a side across the
    frame (a 1920x1080 frame: 3 windows, then 18); each runs MediaPipe in image mode (its own
    instance: the video-mode tracker's state is not disturbed). Cost is bounded by the caller:
    every faceless frame until the first face (``wanted(None)``), then every ``every``-th faceless
    frame (``wanted(count)``).
    """

    def __init__(self, every: int = 10, levels: int = 2):
        self.every, self.levels = max(1, int(every)), int(levels)
        self._det: MediaPipeLandmarker | None = None
        self.searches = 0

    def wanted(self, faceless_since_face: int | None) -> bool:
        """Search this faceless frame? ``faceless_since_face``: faceless frames since the first face
        (None: no face yet)."""
        return faceless_since_face is None or faceless_since_face % self.every == 0

    def windows(self, width: int, height: int) -> list[tuple[int, int, int]]:
        """(x, y, side) of the windows, largest first."""
        out, side = [], min(width, height)
        for _ in range(self.levels):
            step = max(1, side // 2)
            xs = sorted(set(list(range(0, width - side + 1, step)) + [width - side]))
            ys = sorted(set(list(range(0, height - side + 1, step)) + [height - side]))
            out += [(x, y, side) for y in ys for x in xs]
            side //= 2
        return out

    def find(self, rgb: np.ndarray) -> np.ndarray:
        """The 478 points (pixels of ``rgb``) of the first window with a face, else all NaN."""
        img = _as_rgb(rgb)
        if self._det is None:
            self._det = MediaPipeLandmarker(video_mode=False)
        self.searches += 1
        h, w = img.shape[:2]
        for x, y, side in self.windows(w, h):
            pts = self._det.detect(np.ascontiguousarray(img[y:y + side, x:x + side]))
            if np.isfinite(pts).all():
                return (pts + np.array([x, y], np.float32)).astype(np.float32)
        return np.full((N_MEDIAPIPE, 2), np.nan, np.float32)

    def close(self) -> None:
        if self._det is not None:
            self._det.close()
            self._det = None


# --------------------------------------------------------------------------------------------
# Landmark files

_SCHEMA = "arrays 'mediapipe' (T,478,2) and/or 'ibug68' (T,68,2), T = number of input frames"
_SETS = {"mediapipe": N_MEDIAPIPE, "ibug68": N_IBUG68}


def _check_shape(name: str, shape: tuple, dtype: np.dtype, where: str, n_frames: int | None) -> None:
    n = _SETS[name]
    if dtype.kind not in "fiu":
        raise MICAError(f"{where}: '{name}' has dtype {dtype}, not numbers; store float pixel coordinates ({_SCHEMA})")
    if len(shape) != 3 or tuple(shape[1:]) != (n, 2):
        raise MICAError(f"{where}: '{name}' has shape {tuple(shape)} but must be (T,{n},2) "
                        f"(x, y in input-frame pixels; drop any z column with [..., :2])")
    if n_frames is not None and shape[0] != n_frames:
        raise MICAError(f"{where}: '{name}' has {shape[0]} rows but the input has {n_frames} frames; "
                        "give one row per input frame in decoding order (before --fps resampling), NaN where missing")


def _check_array(name: str, arr, where: str, n_frames: int | None) -> np.ndarray:
    a = np.asarray(arr)
    _check_shape(name, a.shape, a.dtype, where, n_frames)
    return a.astype(np.float32)


def drop_absurd_rows(lm: dict[str, np.ndarray], image_size: tuple[int, int], where: str) -> list[int]:
    """Make missing (all NaN, in every set) the rows of ``lm`` that cannot be a face in an image of
    ``image_size`` (w, h): a non-finite coordinate, a coordinate beyond 10x the image size, or the
    points' box lying more than one image size outside the frame. Points just outside the frame (a
    face at the border) stay. One warning names the rows; returns them (input frame indices)."""
    w, h = float(image_size[0]), float(image_size[1])
    bad = np.zeros(len(next(iter(lm.values()))), bool)
    for a in lm.values():
        x, y = a[..., 0].astype(np.float64), a[..., 1].astype(np.float64)
        fin = np.isfinite(x) & np.isfinite(y)
        with np.errstate(invalid="ignore"):
            bad |= (np.isinf(x) | np.isinf(y)).any(1) | ((np.abs(x) > 10 * w) | (np.abs(y) > 10 * h)).any(1)
        seen = fin.any(1)
        xmin, xmax = np.where(fin, x, np.inf).min(1), np.where(fin, x, -np.inf).max(1)
        ymin, ymax = np.where(fin, y, np.inf).min(1), np.where(fin, y, -np.inf).max(1)
        bad |= seen & ((xmax < -w) | (xmin > 2 * w) | (ymax < -h) | (ymin > 2 * h))
    rows = np.flatnonzero(bad).tolist()
    if rows:
        for a in lm.values():
            a[bad] = np.nan
        shown = ", ".join(str(r) for r in rows[:10]) + (", ..." if len(rows) > 10 else "")
        logger.warning(f"{where}: {len(rows)} landmark row(s) ignored as no face (non-finite, beyond 10x the "
                       f"{int(w)}x{int(h)} image, or the face more than one image size outside it): input frame(s) {shown}")
    return rows


def save_landmarks_npz(path: PathLike, mediapipe: np.ndarray | None = None,
                       ibug68: np.ndarray | None = None, fsync: bool = True) -> None:
    """Write a landmark file (schema in the module docstring) atomically, as float32."""
    path = Path(path)
    arrays = {k: _check_array(k, v, f"save_landmarks_npz({path})", None)
              for k, v in (("mediapipe", mediapipe), ("ibug68", ibug68)) if v is not None}
    if not arrays:
        raise ValueError(f"save_landmarks_npz({path}): give mediapipe and/or ibug68")
    lengths = {a.shape[0] for a in arrays.values()}
    if len(lengths) != 1:
        raise ValueError(f"save_landmarks_npz({path}): mediapipe and ibug68 have different numbers of rows")
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getbuffer(), fsync=fsync)


def _member_header(z: np.lib.npyio.NpzFile, name: str) -> tuple[tuple, np.dtype]:
    """Shape and dtype of an .npz member from its .npy header alone (nothing allocated)."""
    with z.zip.open(f"{name}.npy") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _fortran, dtype = read(f)
    return tuple(shape), dtype


def load_landmarks_npz(path: PathLike, n_input_frames: int | None, cached: bool = False) -> dict[str, np.ndarray]:
    """Read and validate a landmark file: ``{'mediapipe': (T,478,2), 'ibug68': (T,68,2)}`` float32
    (only the sets present), all-zero rows turned into NaN. ``n_input_frames``: the number T the
    input has (None: not checked). Each array's header is checked before the array is read (a
    header claiming 1e8 rows is refused, not allocated). ``cached``: the run's own
    ``OUT/NAME/landmarks.npz`` (the fix is then to delete it, so the landmarks are detected again).

    Raises:
        MICAError: missing or unreadable file, no known array, wrong shape, dtype or row count.
    """
    p = Path(path).expanduser()
    where = f"{'cached ' if cached else ''}landmarks file {p}"
    if not p.is_file():
        raise MICAError(f"{where} does not exist (check the --landmarks path)")
    fix = ("delete it and run again (the landmarks are detected again)" if cached
           else f"write it with np.savez(path, mediapipe=..., ibug68=...) ({_SCHEMA})")
    try:
        z = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise MICAError(f"{where} is not a readable NumPy .npz archive ({type(e).__name__}); {fix}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise MICAError(f"{where} is a single .npy array, not an .npz archive of named arrays; {fix}")
    try:
        with z:
            for k in z.files:
                if k in _SETS:  # before reading: the shape the header claims (a pickle is refused below)
                    shape, dtype = _member_header(z, k)
                    if not dtype.hasobject:
                        _check_shape(k, shape, dtype, where, n_input_frames)
            present = {k: z[k] for k in z.files if k in _SETS}
            others = [k for k in z.files if k not in _SETS]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise MICAError(f"{where} holds an unreadable or pickled array ({type(e).__name__}); {fix}") from None
    if not present:
        raise MICAError(f"{where} has none of the arrays 'mediapipe' or 'ibug68' (found: {', '.join(others) or 'nothing'}); {fix}")
    out = {}
    for name, arr in present.items():
        a = _check_array(name, arr, where, n_input_frames)
        zero_rows = (a == 0).all(axis=(1, 2))
        a[zero_rows] = np.nan
        out[name] = a
    if len({a.shape[0] for a in out.values()}) != 1:
        raise MICAError(f"{where}: 'mediapipe' and 'ibug68' have different numbers of rows; give both one row per input frame")
    return out

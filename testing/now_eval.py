"""NoW-protocol scoring of predicted meshes against 3D scans (no psbody, no pytorch3d).

Per image (NoW challenge, Sanyal et al. 2019; metrical variant as in MICA):
1. crop the scan around the face from its 7 landmarks (``crop_scan``);
2. align the prediction to the scan with its 7 landmarks: similarity Procrustes
   (``metrical``, as MICA's metrical scorer: the Procrustes rotation and the translation computed
   with the Procrustes scale, then the scale replaced by the unit factor);
3. refine scale/rotation/translation (``metrical``: rotation/translation) by least squares on the
   scan-to-mesh distances of all kept scan vertices, with the 100 * (|s| - s) penalty keeping s
   positive (``refine_alignment``; scipy's trust-region least squares with an analytic Jacobian
   instead of chumpy's dogleg; ``fit_points`` > 0 fits on that many evenly spread scan vertices
   instead, unlike NoW, because faster);
4. the distances (mm) from every kept scan vertex to the closest point of the aligned predicted
   surface. All images' distances are concatenated for median / mean / std, overall and per group
   (NoW challenge, Stirling quality).

``now_items`` / ``stirling_items`` turn a benchmark folder and a predicted folder into work items;
``evaluate`` scores them and ``write_official_outputs`` writes NoW's result files.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from loguru import logger
from scipy.optimize import least_squares
from tqdm import tqdm

from testing.geometry import MeshDistance, apply_similarity, rotvec_derivatives, rotvec_to_matrix, similarity_procrustes
from testing.pp import read_pp
from utils.errors import MICAError
from utils.io import atomic_save, atomic_write_text, path_inside
from utils.safe_pickle import load_object_npy

PathLike = Union[str, os.PathLike]

NOW_CHALLENGES = ("multiview_neutral", "multiview_expressions", "multiview_occlusions", "selfie")
NOW_IMAGE_LISTS = {"validation": "imagepathsvalidation.txt", "test": "imagepathstest.txt"}
# Factor turning predicted units into the scans' millimetres (metrical evaluation).
UNIT_FACTORS = {"mm": 1.0, "cm": 10.0, "m": 1000.0}
MESH_SUFFIXES = (".obj", ".ply")
LANDMARK_SUFFIXES = (".npy", ".txt")

__all__ = [
    "NOW_CHALLENGES", "UNIT_FACTORS", "Stats", "EvalItem", "EvalResult",
    "crop_scan", "landmark_alignment", "AlignmentResiduals", "refine_alignment", "score_mesh",
    "load_mesh", "load_pred_landmarks", "read_image_list", "now_items", "stirling_items",
    "evaluate", "write_official_outputs",
]


# ---------------------------------------------------------------------------------------------
# Per-image protocol
# ---------------------------------------------------------------------------------------------
def crop_scan(vertices: np.ndarray, faces: Optional[np.ndarray], lmks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the scan vertices within NoW's face sphere.

    centre = lmk4 + 0.3 * (nose_bridge - lmk4), nose_bridge = (lmk1 + lmk2) / 2,
    radius = 1.4 * (|lmk0 - lmk3| + |nose_bridge - lmk4|) / 2.

    Args:
        vertices: (V, 3) scan vertices (mm).
        faces: (F, 3) scan triangles or None.
        lmks: (7, 3) scan landmarks in NoW order.

    Returns:
        kept vertices (K, 3), kept faces (G, 3) re-indexed (faces whose 3 vertices are kept),
        and the boolean mask (V,).
    """
    lmks = np.asarray(lmks, dtype=np.float64).reshape(7, 3)
    nose_bottom = lmks[4]
    nose_bridge = (lmks[1] + lmks[2]) / 2
    centre = nose_bottom + 0.3 * (nose_bridge - nose_bottom)
    radius = 1.4 * (np.linalg.norm(lmks[0] - lmks[3]) + np.linalg.norm(nose_bridge - nose_bottom)) / 2
    mask = np.linalg.norm(vertices - centre, axis=1) <= radius
    new_index = np.full(len(vertices), -1, dtype=np.int64)
    new_index[mask] = np.arange(int(mask.sum()))
    if faces is None or len(faces) == 0:
        kept_faces = np.zeros((0, 3), dtype=np.int64)
    else:
        faces = np.asarray(faces, dtype=np.int64)
        kept_faces = new_index[faces[mask[faces].all(axis=1)]]
    return vertices[mask], kept_faces, mask


def landmark_alignment(pred_lmks: np.ndarray, scan_lmks: np.ndarray, metrical: bool = False,
                       unit_factor: float = 1.0) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity (s, R, t) taking the predicted landmarks onto the scan landmarks.

    Non-metrical: full Procrustes with scale (a reflection is allowed when it fits better, as
    NoW's ``reflection='best'``). Metrical, as MICA's metrical scorer: the Procrustes rotation R and
    the Procrustes translation t = mean(scan) - b * R mean(pred), computed with the Procrustes scale
    b; only then is the scale replaced by ``unit_factor`` (t is not recomputed for it).

    Returns:
        (s, R (3,3), t (3,)) with aligned = s * x @ R.T + t.
    """
    s, rot, t = similarity_procrustes(pred_lmks, scan_lmks, scaling=True, allow_reflection=True)
    if metrical:
        s = float(unit_factor)
    return s, rot, t


@dataclass
class Refinement:
    """Result of ``refine_alignment``: aligned = scale * x @ rot.T + t; distances (N,) in scan units."""

    scale: float
    rot: np.ndarray
    t: np.ndarray
    distances: np.ndarray
    n_evals: int


class AlignmentResiduals:
    """The refinement's least-squares problem: residuals and their analytic Jacobian.

    Parameters x = (s, r, t) (``with_scale``) or (r, t) of the transform q -> s R(r) (q - c) + c + t
    of the predicted surface, c the centroid of ``points``. Residual i is the distance of
    ``points[i]`` to the transformed surface, computed as |s| x the distance of the inversely
    transformed point to the untransformed ``mesh``; with scale, one more residual 100 * (|s| - s).
    """

    def __init__(self, points: np.ndarray, mesh: MeshDistance, with_scale: bool) -> None:
        self.points = np.asarray(points, dtype=np.float64)
        self.mesh, self.with_scale = mesh, with_scale
        self.centre = self.points.mean(axis=0)
        self._cache: dict = {}

    def unpack(self, x: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        if self.with_scale:
            return float(x[0]), x[1:4], x[4:7]
        return 1.0, x[0:3], x[3:6]

    def closest(self, x: np.ndarray) -> dict:
        """Closest points of the (inversely transformed) points on the mesh, cached for this x."""
        key = np.asarray(x, dtype=np.float64).tobytes()
        if self._cache.get("key") != key:
            s, r, t = self.unpack(x)
            rot = rotvec_to_matrix(r)
            c = self.centre
            local = ((self.points - c - t) @ rot) / s + c  # R^T (p - c - t) / s + c
            self._cache = dict(key=key, s=s, rot=rot, r=np.array(r), t=np.array(t), res=self.mesh.query(local))
        return self._cache

    def residuals(self, x: np.ndarray) -> np.ndarray:
        st = self.closest(x)
        d = abs(st["s"]) * st["res"].distances
        if self.with_scale:
            d = np.append(d, 100.0 * (abs(st["s"]) - st["s"]))
        return d

    def jacobian(self, x: np.ndarray) -> np.ndarray:
        """d residuals / dx: the derivative of |p - q(x)| with the closest point held on its triangle
        (envelope theorem), exact wherever the distance is differentiable."""
        st = self.closest(x)
        s, rot, r, t, c = st["s"], st["rot"], st["r"], st["t"], self.centre
        q0c = st["res"].points - c
        q = s * q0c @ rot.T + c + t
        diff = self.points - q
        norm = np.linalg.norm(diff, axis=1, keepdims=True)
        n = np.divide(diff, norm, out=np.zeros_like(diff), where=norm > 1e-12)
        cols = []
        if self.with_scale:
            cols.append(-(n * (q0c @ rot.T)).sum(axis=1))
        for d_rot in rotvec_derivatives(r):
            cols.append(-s * (n * (q0c @ d_rot.T)).sum(axis=1))
        for k in range(3):
            cols.append(-n[:, k])
        j = np.stack(cols, axis=1)
        if self.with_scale:
            row = np.zeros((1, j.shape[1]))
            row[0, 0] = 100.0 * (np.sign(s) - 1.0)
            j = np.concatenate([j, row])
        return j


def refine_alignment(scan_points: np.ndarray, mesh: MeshDistance, with_scale: bool = True,
                     max_nfev: int = 200, fit_points: int = 0) -> Refinement:
    """Rigid (+ scale) refinement minimising the scan-to-mesh distances.

    Parameters are s, axis-angle r and t of x -> s R (x - c) + c + t, c the scan centroid (the same
    family of transforms as the original's s R x + t, better conditioned), started at the
    identity. Residuals: the distance of every scan point to the transformed surface, plus
    100 * (|s| - s). The distances are computed by moving the scan with the inverse transform
    (one spatial index for the whole fit). The Jacobian is analytic and exact wherever the
    distance is differentiable: the derivative of |p - q(theta)| with the closest point q held on
    its triangle (envelope theorem), the rotation through the closed-form derivative of Rodrigues'
    formula (``testing.geometry.rotvec_derivatives``).

    Args:
        scan_points: (N, 3) kept scan vertices.
        mesh: ``MeshDistance`` of the landmark-aligned predicted mesh.
        with_scale: optimise the scale too (non-metrical); else r and t only.
        max_nfev: bound on residual evaluations.
        fit_points: 0 (default, as NoW) fits on every scan point; N > 0 fits on at most N points
            evenly spread through the scan's vertex order (unlike NoW, because faster). The
            returned distances are always those of every scan point.
    """
    if fit_points < 0:
        raise ValueError(f"fit_points must be 0 (all points) or positive, not {fit_points}")
    all_points = np.asarray(scan_points, dtype=np.float64)
    p = all_points
    if fit_points and len(p) > fit_points:
        p = p[np.linspace(0, len(p) - 1, fit_points).round().astype(np.int64)]
    problem = AlignmentResiduals(p, mesh, with_scale)
    x0 = np.zeros(7 if with_scale else 6)
    if with_scale:
        x0[0] = 1.0
    sol = least_squares(problem.residuals, x0, jac=problem.jacobian, method="trf", x_scale="jac", ftol=1e-10,
                        xtol=1e-10, gtol=1e-10, max_nfev=max_nfev)
    x = sol.x
    s, r, t = problem.unpack(x)
    rot = rotvec_to_matrix(r)
    c = problem.centre
    if p is all_points:
        distances = abs(s) * problem.closest(x)["res"].distances
    else:
        distances = abs(s) * mesh.distances(((all_points - c - t) @ rot) / s + c)
    # x -> s R (x - c) + c + t  ==  s R x + (c + t - s R c)
    return Refinement(s, rot, c + t - s * rot @ c, distances, int(sol.nfev))


@dataclass
class MeshScore:
    """Per-image result: ``distances`` (K,) mm, and the final alignment aligned = s * x @ R.T + t."""

    distances: np.ndarray
    scale: float
    rot: np.ndarray
    t: np.ndarray


def score_mesh(scan_vertices: np.ndarray, scan_lmks: np.ndarray, pred_vertices: np.ndarray,
               pred_faces: np.ndarray, pred_lmks: np.ndarray, metrical: bool = False,
               unit_factor: float = 1.0, crop: bool = True, max_nfev: int = 200, fit_points: int = 0) -> MeshScore:
    """Score one predicted mesh against one scan with the NoW protocol (see module docstring).

    Args:
        scan_vertices: (V, 3) scan vertices, mm.
        scan_lmks: (7, 3) scan landmarks, mm.
        pred_vertices: (P, 3), pred_faces (F, 3): the prediction in its own frame/units.
        pred_lmks: (7, 3) predicted landmarks, same frame as ``pred_vertices``.
        metrical: no scale in the alignment (``unit_factor`` turns predicted units into mm).
        crop: apply NoW's face crop to the scan first.
        max_nfev, fit_points: refinement budget (see ``refine_alignment``).

    Raises:
        MICAError: no scan vertex lies inside the crop (landmarks wrong or in other units).
    """
    scan = np.asarray(scan_vertices, dtype=np.float64)
    if crop:
        scan, _, _ = crop_scan(scan, None, scan_lmks)
    if len(scan) == 0:
        raise MICAError("no scan vertex lies within the face crop of its landmarks (are the .pp landmarks from this scan, in mm?)")
    s0, r0, t0 = landmark_alignment(pred_lmks, scan_lmks, metrical=metrical, unit_factor=unit_factor)
    aligned = apply_similarity(pred_vertices, s0, r0, t0)
    ref = refine_alignment(scan, MeshDistance(aligned, pred_faces), with_scale=not metrical, max_nfev=max_nfev,
                           fit_points=fit_points)
    # Compose: x -> ref(s0 R0 x + t0).
    scale = ref.scale * s0
    rot = ref.rot @ r0
    t = ref.scale * ref.rot @ t0 + ref.t
    return MeshScore(ref.distances, scale, rot, t)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
def load_mesh(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read an .obj/.ply mesh as (vertices (V,3) float64, faces (F,3) int64), vertex order kept.

    Raises:
        FileNotFoundError / MICAError / ValueError: missing, unreadable or not a mesh file.
    """
    from utils.mesh import read_mesh

    vertices, faces = read_mesh(path)
    if not np.isfinite(vertices).all():
        raise MICAError(f"mesh {path} holds {int((~np.isfinite(vertices)).sum())} NaN or infinite coordinates; "
                        f"the prediction (or scan) is broken: write it again")
    return vertices, faces


def load_pred_landmarks(path: PathLike) -> np.ndarray:
    """Read predicted landmarks: .npy (7,3) or (1,7,3), or .txt with 7 rows "x y z". Returns (7, 3)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"landmark file {path} does not exist")
    try:
        arr = np.load(path, allow_pickle=False) if path.suffix == ".npy" else np.loadtxt(path)
    except (ValueError, OSError) as e:
        raise MICAError(f"landmark file {path} could not be read ({str(e).splitlines()[0]}); write 7x3 numbers") from None
    except EOFError:
        raise MICAError(f"landmark file {path} is empty or truncated; write 7x3 numbers") from None
    try:
        arr = np.asarray(arr, dtype=np.float64)
    except (TypeError, ValueError):
        raise MICAError(f"landmark file {path} holds {arr.dtype} values, not numbers; write 7x3 numbers") from None
    if arr.size != 21:
        raise MICAError(f"landmark file {path} holds shape {arr.shape}, expected 7x3 (the 7 NoW landmarks)")
    if not np.isfinite(arr).all():  # the alignment's SVD would fail without naming the file (issue 21, N3)
        raise MICAError(f"landmark file {path} holds {int((~np.isfinite(arr)).sum())} NaN or infinite values; "
                        f"the prediction failed for this image: predict it again")
    return arr.reshape(7, 3)


def read_image_list(path: PathLike) -> list[str]:
    """Non-empty lines of a NoW image list (``SUBJECT/CHALLENGE/NAME.jpg``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image list {path} does not exist (set test.now_root to the NoW folder holding it)")
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def _find_with_suffix(stem: Path, suffixes: Sequence[str]) -> Optional[Path]:
    for suf in suffixes:
        cand = stem.with_name(stem.name + suf)
        if cand.is_file():
            return cand
    return None


def _first_file(folder: Path, pattern: str, what: str) -> Path:
    files = sorted(folder.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no {what} ({pattern}) in {folder}")
    if len(files) > 1:
        logger.warning(f"{folder} holds {len(files)} {what} files; using {files[0].name}")
    return files[0]


@dataclass
class EvalItem:
    """One image to score: its key (relative image path), group, scan files and predicted files."""

    key: str
    group: str
    scan_mesh: Optional[Path]
    scan_lmks: Optional[Path]
    pred_mesh: Optional[Path]
    pred_lmks: Optional[Path]
    error: Optional[str] = None  # why the item cannot be scored (a bad list line): failed, not fatal


def now_items(now_root: PathLike, pred_dir: PathLike, split: str = "validation",
              scans_dir: Optional[PathLike] = None, lmks_dir: Optional[PathLike] = None,
              image_list: Optional[PathLike] = None) -> list[EvalItem]:
    """Work items for a NoW-layout folder (scans in ``scans/SUBJECT/*.obj``, landmarks in
    ``scans_lmks_onlypp/SUBJECT/*.pp``) and a predicted folder ``PRED/SUBJECT/CHALLENGE/NAME.{obj,ply,npy}``.

    ``scans_dir``/``lmks_dir``/``image_list`` override the NoW defaults, so any folder of scans with
    .pp landmarks can be scored. Predictions that are missing get ``pred_mesh = None``.
    """
    root = Path(now_root)
    if split not in NOW_IMAGE_LISTS:
        raise ValueError(f"split must be one of {sorted(NOW_IMAGE_LISTS)}, not '{split}'")
    if not root.is_dir():
        raise FileNotFoundError(f"NoW folder {root} does not exist (set test.now_root or --now-root)")
    pred = Path(pred_dir)
    if not pred.is_dir():
        raise FileNotFoundError(f"predicted folder {pred} does not exist (run test.py --benchmark now first)")
    scans = Path(scans_dir) if scans_dir else root / "scans"
    lmks = Path(lmks_dir) if lmks_dir else root / "scans_lmks_onlypp"
    for folder, what in ((scans, "scans"), (lmks, "scan landmarks")):
        if not folder.is_dir():
            raise FileNotFoundError(f"{what} folder {folder} does not exist (NoW scans are public for the validation subjects only)")
    lines = read_image_list(image_list if image_list else root / NOW_IMAGE_LISTS[split])
    items = []
    scan_cache: dict[str, tuple[Path, Path]] = {}
    for line in lines:
        try:  # a bad line fails its item only; every path is built from the checked relative one
            items.append(_now_item(line, pred, scans, lmks, scan_cache))
        except (MICAError, OSError) as e:
            items.append(EvalItem(line, "", None, None, None, None, error=str(e)))
    return items


def _now_item(line: str, pred: Path, scans: Path, lmks: Path, scan_cache: dict) -> EvalItem:
    parts = path_inside(pred, line, "image list line").relative_to(pred).parts
    if len(parts) < 3:
        raise MICAError(f"image list line '{line}' is not SUBJECT/CHALLENGE/NAME.jpg")
    subject, challenge = parts[0], parts[1]
    if subject not in scan_cache:
        try:
            scan_cache[subject] = (_first_file(scans / subject, "*.obj", "scan"),
                                   _first_file(lmks / subject, "*.pp", "scan landmark"))
        except OSError as e:
            scan_cache[subject] = str(e)
    if isinstance(scan_cache[subject], str):
        raise MICAError(scan_cache[subject])
    stem = pred / Path(line).with_suffix("")
    return EvalItem(line, challenge, *scan_cache[subject],
                    _find_with_suffix(stem, MESH_SUFFIXES), _find_with_suffix(stem, LANDMARK_SUFFIXES))


def stirling_items(pred_dir: PathLike, scans_dir: PathLike, lmks_dir: Optional[PathLike] = None) -> list[EvalItem]:
    """Work items for Stirling/ESRC predictions ``PRED/{HQ,LQ}/ID5/ID9.{ply,obj,npy}``.

    The scan of subject ID5 is the first ``*.obj`` of ``SCANS/ID5/`` and its landmarks the first
    ``*.pp`` of ``LMKS/ID5/`` (``LMKS`` defaults to ``SCANS``). Groups are HQ and LQ.
    """
    pred, scans = Path(pred_dir), Path(scans_dir)
    lmks = Path(lmks_dir) if lmks_dir else scans
    for folder, what in ((pred, "predicted"), (scans, "scans"), (lmks, "scan landmarks")):
        if not folder.is_dir():
            raise FileNotFoundError(f"{what} folder {folder} does not exist")
    items = []
    for quality in ("HQ", "LQ"):
        for mesh in sorted(list((pred / quality).glob("*/*.ply")) + list((pred / quality).glob("*/*.obj"))):
            subject = mesh.parent.name
            if not (scans / subject).is_dir():
                logger.warning(f"no scan folder {scans / subject} for {mesh}; skipped")
                continue
            items.append(EvalItem(f"{quality}/{subject}/{mesh.name}", quality,
                                  _first_file(scans / subject, "*.obj", "scan"),
                                  _first_file(lmks / subject, "*.pp", "scan landmark"),
                                  mesh, _find_with_suffix(mesh.with_suffix(""), LANDMARK_SUFFIXES)))
    if not items:
        raise MICAError(f"no predicted meshes under {pred}/{{HQ,LQ}}/ID5/ (run test.py --benchmark stirling first)")
    return items


# ---------------------------------------------------------------------------------------------
# Whole benchmark
# ---------------------------------------------------------------------------------------------
@dataclass
class Stats:
    """Distances summary (mm)."""

    median: float
    mean: float
    std: float
    n_points: int
    n_images: int

    @classmethod
    def of(cls, distances: Sequence[np.ndarray]) -> "Stats":
        if not distances:
            return cls(float("nan"), float("nan"), float("nan"), 0, 0)
        d = np.concatenate([np.asarray(x).ravel() for x in distances])
        return cls(float(np.median(d)), float(np.mean(d)), float(np.std(d)), int(d.size), len(distances))


@dataclass
class EvalResult:
    """Scores of one method: all images and per group, plus what the official file stores."""

    method: str
    metrical: bool
    overall: Stats
    groups: dict[str, Stats]
    distances: list[np.ndarray]
    input_files: list[str]
    item_groups: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # image key -> why it could not be scored

    @property
    def all_distances(self) -> np.ndarray:
        """(N,) every distance of every scored image, mm."""
        return np.concatenate(self.distances) if self.distances else np.zeros(0)


def evaluate(items: Sequence[EvalItem], method: str = "method", metrical: bool = False, unit: str = "mm",
             max_nfev: int = 200, fit_points: int = 0, progress: bool = True) -> EvalResult:
    """Score every item (see module docstring). Missing predictions are counted (``missing``, the
    official ``num_missing_files``); an unreadable scan or prediction is recorded in ``failed``
    (image -> reason) and the others are still scored.

    Args:
        items: from ``now_items`` / ``stirling_items``.
        method: name used in output files and tables.
        metrical: no scale in the alignment.
        unit: predicted unit ("mm", "cm", "m"); the scale used by the metrical variant.
        max_nfev, fit_points: refinement budget per image (see ``refine_alignment``).

    Raises:
        ValueError: unknown unit.
    """
    if unit not in UNIT_FACTORS:
        raise ValueError(f"unit must be one of {sorted(UNIT_FACTORS)}, not '{unit}'")
    scans: dict[tuple[Path, Path], object] = {}
    distances: list[np.ndarray] = []
    inputs: list[str] = []
    item_groups: list[str] = []
    groups: dict[str, list[np.ndarray]] = {}
    missing: list[str] = []
    failed: dict[str, str] = {}
    for item in tqdm(items, desc=f"scoring {method}", disable=not progress):
        if item.error is not None:
            failed[item.key] = item.error
            logger.warning(f"{item.key!r}: not scored: {item.error}")
            continue
        if item.pred_mesh is None or item.pred_lmks is None:
            missing.append(item.key)
            continue
        skey = (item.scan_mesh, item.scan_lmks)
        if skey not in scans:
            try:
                scans = {skey: _load_scan(item.scan_mesh, item.scan_lmks)}  # one subject's scan in memory
            except (MICAError, FileNotFoundError, ValueError, OSError) as e:
                scans = {skey: str(e)}
        scan = scans[skey]
        try:
            if isinstance(scan, str):
                raise MICAError(scan)
            kept, lm = scan
            pv, pf, plm = _load_prediction(item)
            res = score_mesh(kept, lm, pv, pf, plm, metrical=metrical, unit_factor=UNIT_FACTORS[unit],
                             crop=False, max_nfev=max_nfev, fit_points=fit_points)
        except (MICAError, FileNotFoundError, ValueError, OSError, np.linalg.LinAlgError) as e:
            failed[item.key] = str(e)
            logger.warning(f"{item.key}: not scored: {e}")
            continue
        distances.append(res.distances)
        inputs.append(item.key)
        item_groups.append(item.group)
        groups.setdefault(item.group, []).append(res.distances)
    if missing:
        logger.warning(f"{len(missing)} of {len(items)} predictions missing (first: {missing[0]}); "
                       f"reported as num_missing_files")
    if failed:
        logger.warning(f"{len(failed)} of {len(items)} images could not be scored (first: {next(iter(failed))})")
    return EvalResult(method, metrical, Stats.of(distances), {g: Stats.of(d) for g, d in groups.items()},
                      distances, inputs, item_groups, missing, failed)


def _load_scan(mesh_path: Path, lmks_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(kept scan vertices, 7 landmarks) of one scan, cropped as NoW."""
    v, _ = load_mesh(mesh_path)
    lm = read_pp(lmks_path)
    kept, _, _ = crop_scan(v, None, lm)
    if len(kept) == 0:
        raise MICAError(f"no vertex of scan {mesh_path} lies within the face crop of {lmks_path} (landmarks from another scan or unit?)")
    return kept, lm


def _load_prediction(item: EvalItem) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vertices, faces, 7 landmarks) of one prediction."""
    pv, pf = load_mesh(item.pred_mesh)
    if len(pf) == 0:
        raise MICAError(f"predicted mesh {item.pred_mesh} has no faces; write a triangle mesh")
    return pv, pf, load_pred_landmarks(item.pred_lmks)


def write_official_outputs(result: EvalResult, out_dir: PathLike) -> tuple[Path, Path]:
    """Write NoW's ``METHOD_computed_distances.npy`` (pickled dict: ``computed_distances``,
    ``num_missing_files``, ``input_files``) and ``...npy.meanmedian`` (median, then mean)."""
    out = Path(out_dir)
    path = out / f"{result.method}_computed_distances.npy"
    payload = {
        "computed_distances": [np.asarray(d) for d in result.distances],
        "num_missing_files": len(result.missing),
        "input_files": list(result.input_files),
    }
    atomic_save(path, lambda tmp: np.save(tmp, np.array(payload, dtype=object), allow_pickle=True))
    mm = Path(str(path) + ".meanmedian")
    atomic_write_text(mm, f"{result.overall.median:.18e}\n{result.overall.mean:.18e}\n")
    return path, mm


def read_official_outputs(path: PathLike) -> dict:
    """Load a ``*_computed_distances.npy`` written by NoW's scorer or ``write_official_outputs``.

    It is a pickle, read by the allow-list unpickler (numpy data only; nothing in it runs).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"result file {path} does not exist")
    try:
        return load_object_npy(path)
    except (ValueError, OSError, EOFError, pickle.UnpicklingError) as e:
        raise MICAError(f"result file {path} is not a NoW computed_distances file ({e})") from None

"""Landmark fitting of the tracking FLAME: Levenberg-Marquardt on the small per-frame parameter
vector, and the camera intrinsics on keyframes.

Per frame the unknowns are ``[exp (100) | jaw, left eye, right eye (9, axis-angle) | eyelids (2) |
camera rotation increment (3) | camera translation (3)]`` (117); the intrinsics (focal, cx, cy, in
pixels of the crop) are shared and fitted jointly on keyframes first (``keyframes.py``, with the
focal prior of ``focal_prior.py``; unlike the original, which fits them with Adam on the first
keyframe and refines them on the others).

Cost (pixels of the crop; every term a squared, weighted residual):
- landmark terms: per point ``w_set * rho(|proj - obs| / sigma_px)`` with a Huber ``rho`` (robust,
  as iteratively re-weighted least squares) and per-point masks (NaN = missing);
- the original's regularisers, written as Gaussian priors (1/sigma^2): expression towards 0, jaw and
  eye rotations towards identity, left/right eye and eyelid symmetry;
- temporal smoothness towards the previous frame (expression, jaw/eyes, eyelids, camera rotation and
  translation), which is also the warm start.

The Jacobian exploits that landmarks are linear in expression (``TrackingFLAME.exp_basis``, once
per frame); the pose columns are forward differences from one batched ``lbs`` call.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import scipy.linalg
import torch

from micalib.tracking.camera import (
    axis_angle_to_matrix,
    intrinsics,
    matrix_to_axis_angle,
    skew,
)
from micalib.tracking.model import N_EXP, N_EYELIDS, N_MODEL, N_POSE, TrackingFLAME
from micalib.tracking.options import FitSettings

N_FRAME = N_MODEL + 6  # + camera rotation increment, translation
I_POSE = slice(N_EXP, N_EXP + N_POSE)
I_LIDS = slice(N_EXP + N_POSE, N_MODEL)
I_ROT = slice(N_MODEL, N_MODEL + 3)
I_T = slice(N_MODEL + 3, N_FRAME)


@dataclass
class Intrinsics:
    focal: float
    cx: float
    cy: float

    @property
    def k(self) -> np.ndarray:
        return intrinsics(self.focal, self.cx, self.cy)


@dataclass
class FrameState:
    """Per-frame parameters (OpenCV camera: x = K (R X + t))."""

    exp: np.ndarray = field(default_factory=lambda: np.zeros(N_EXP))
    pose: np.ndarray = field(default_factory=lambda: np.zeros(N_POSE))
    eyelids: np.ndarray = field(default_factory=lambda: np.zeros(N_EYELIDS))
    r: np.ndarray = field(default_factory=lambda: np.diag([1.0, -1.0, -1.0]))
    t: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.0, 1.0]))

    def copy(self) -> FrameState:
        return FrameState(self.exp.copy(), self.pose.copy(), self.eyelids.copy(), self.r.copy(), self.t.copy())

    def step(self, delta: np.ndarray, has_eyelids: bool) -> FrameState:
        lids = np.clip(self.eyelids + delta[I_LIDS], 0.0, 1.0) if has_eyelids else self.eyelids.copy()
        return FrameState(self.exp + delta[:N_EXP], self.pose + delta[I_POSE], lids,
                          axis_angle_to_matrix(delta[I_ROT]) @ self.r, self.t + delta[I_T])


def interpolate_state(a: FrameState, b: FrameState, s: float) -> FrameState:
    """The state a fraction ``s`` (0 = ``a``, 1 = ``b``) of the way from ``a`` to ``b``: linear in
    expression, jaw/eye axis-angles, eyelids and translation; the camera rotation along the geodesic
    (R = exp(s log(R_b R_a^T)) R_a). For frames without a face between two tracked ones."""
    s = float(s)
    rel = matrix_to_axis_angle(b.r @ a.r.T)
    return FrameState((1 - s) * a.exp + s * b.exp, (1 - s) * a.pose + s * b.pose,
                      (1 - s) * a.eyelids + s * b.eyelids, axis_angle_to_matrix(s * rel) @ a.r,
                      (1 - s) * a.t + s * b.t)


@dataclass
class FrameFit:
    state: FrameState
    cost: float
    rms: dict[str, float]
    contour_bin: int
    points2d: np.ndarray


def _solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve the damped (symmetric positive definite) normal equations by Cholesky (scipy's LAPACK
    call is far faster here than ``np.linalg.solve``, whose threaded OpenBLAS contends for the
    cores with the writer threads)."""
    try:
        return scipy.linalg.cho_solve(scipy.linalg.cho_factor(a, check_finite=False), b, check_finite=False)
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgError):
        return scipy.linalg.lstsq(a, b, check_finite=False)[0]


def _normal_equations(jw: np.ndarray, j: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``jw.T @ j`` and ``jw.T @ r`` through torch (its single-threaded BLAS; numpy's threaded
    OpenBLAS is much slower for these small products while other threads are busy)."""
    a = torch.from_numpy(jw).T
    return (a @ torch.from_numpy(j)).numpy(), (a @ torch.from_numpy(r)).numpy()


def lm_step(cost: float, mu: float, attempts: int, propose, evaluate):
    """One Levenberg-Marquardt step: up to ``attempts`` tries of ``propose(mu)`` (a candidate, or None
    when it is not admissible), each scored by ``evaluate(candidate)`` (a tuple whose first item is
    its cost); a candidate not worse than ``cost`` is accepted and the damping lowered (mu / 3, at
    least 1e-7), else the damping is raised tenfold and tried again.

    Returns:
        (candidate, its evaluation, the new damping); candidate and evaluation None when no try
        was accepted (the caller stops).
    """
    for _attempt in range(attempts):
        cand = propose(mu)
        if cand is None:
            mu *= 10
            continue
        lin = evaluate(cand)
        if lin[0] <= cost:
            return cand, lin, max(mu / 3, 1e-7)
        mu *= 10
    return None, None, mu


def _set_weights(model: TrackingFLAME, s: FitSettings) -> np.ndarray:
    w = np.zeros(model.n_points)
    for name, sl in model.slices.items():
        w[sl] = {"mediapipe": s.w_mediapipe, "iris": s.w_iris}.get(name, s.w_ibug68)
    return w


class LandmarkFitter:
    """Fits ``TrackingFLAME`` to 2D landmarks (see the module docstring).

    Args:
        model: the tracking FLAME.
        settings: weights and iteration counts.
        image_size: (H, W) of the crop the landmarks are in.
    """

    def __init__(self, model: TrackingFLAME, settings: FitSettings, image_size: tuple[int, int]) -> None:
        self.model, self.s = model, settings
        self.h, self.w = image_size
        self.set_w = _set_weights(model, settings)
        self._basis = None  # (pose, exp_basis at that pose), reused while the jaw/eyes stay near it
        self.centre = ((self.w - 1) / 2.0, (self.h - 1) / 2.0)  # OpenCV pixel centres
        # until the keyframes decide: the focal prior's centre for an uncropped frame (focal_prior.py)
        self.intr = Intrinsics(0.5 * max(self.h, self.w) / np.tan(np.radians(settings.fov_deg) / 2), *self.centre)
        s = settings
        prior = np.zeros(N_FRAME)
        prior[:N_EXP] = 1 / s.exp_sigma ** 2
        prior[N_EXP] = 1 / s.jaw_sigma ** 2
        prior[N_EXP + 1:N_EXP + 3] = 1 / s.jaw_side_sigma ** 2
        prior[N_EXP + 3:N_EXP + 9] = 1 / s.eye_sigma ** 2
        prior[I_LIDS] = 1 / s.eyelid_sigma ** 2
        self.prior = prior
        smooth = np.zeros(N_FRAME)
        smooth[:N_EXP] = 1 / s.smooth_exp ** 2
        smooth[N_EXP:N_EXP + 3] = 1 / s.smooth_pose ** 2
        smooth[N_EXP + 3:N_EXP + 9] = 1 / s.smooth_eyes ** 2
        smooth[I_LIDS] = 1 / s.smooth_eyelids ** 2
        smooth[I_ROT] = 1 / s.smooth_rot ** 2
        smooth[I_T] = 1 / s.smooth_t ** 2
        self.smooth = smooth
        # symmetry pairs: (index a, index b, weight) for (x_a - x_b)^2
        pairs = [(N_EXP + 3 + i, N_EXP + 6 + i, 1 / s.eye_symmetry_sigma ** 2) for i in range(3)]
        pairs.append((I_LIDS.start, I_LIDS.start + 1, 1 / s.eyelid_symmetry_sigma ** 2))
        self.sym = np.zeros((N_FRAME, N_FRAME))
        for a, b, wt in pairs:
            self.sym[a, a] += wt
            self.sym[b, b] += wt
            self.sym[a, b] -= wt
            self.sym[b, a] -= wt

    # -----------------------------------------------------------------------------------------
    def _linearise(self, st: FrameState, obs: np.ndarray, valid: np.ndarray, intr: Intrinsics,
                   prev: FrameState | None, basis: np.ndarray, with_intr: bool, cache: dict | None = None,
                   shape: tuple[np.ndarray, np.ndarray] | None = None, reg_scale: float = 1.0):
        """Cost, normal matrix H, gradient g (of 0.5 * cost) at ``st``; sizes 117 (+3 intrinsics,
        + S identity coefficients when ``shape`` = (the points' identity Jacobian (N, 3, S), the
        identity change) is given; its prior is added by the caller, once for all keyframes).
        ``reg_scale`` multiplies the priors (the keyframe fit's noise scale, ``keyframes.py``)."""
        m, s = self.model, self.s
        cbin = m.contour_bin(st.r) if "contour" in m.slices else 0
        pts, jm = m.point_jacobian(st.exp, st.pose, st.eyelids, cbin, basis, cache)
        if shape is not None:
            pts = pts + shape[0] @ shape[1]
        xc = pts @ st.r.T + st.t
        z = xc[:, 2]
        uv = np.stack([intr.focal * xc[:, 0] / z + intr.cx, intr.focal * xc[:, 1] / z + intr.cy], 1)
        res = np.where(valid[:, None], uv - np.nan_to_num(obs), 0.0)
        # d uv / d xc
        dp = np.zeros((len(pts), 2, 3))
        dp[:, 0, 0] = intr.focal / z
        dp[:, 1, 1] = intr.focal / z
        dp[:, 0, 2] = -intr.focal * xc[:, 0] / z ** 2
        dp[:, 1, 2] = -intr.focal * xc[:, 1] / z ** 2
        n_par = N_FRAME + (3 if with_intr else 0) + (shape[1].size if shape is not None else 0)
        jac = np.zeros((len(pts), 2, n_par))
        dpr = dp @ st.r  # (N, 2, 3)
        jac[:, :, :N_MODEL] = dpr @ jm
        if shape is not None:
            jac[:, :, N_FRAME + 3:] = dpr @ shape[0]
        jac[:, :, I_ROT] = dp @ -skew(xc - st.t)
        jac[:, :, I_T] = dp
        if with_intr:
            jac[:, 0, N_FRAME] = xc[:, 0] / z
            jac[:, 1, N_FRAME] = xc[:, 1] / z
            jac[:, 0, N_FRAME + 1] = 1.0
            jac[:, 1, N_FRAME + 2] = 1.0
        wpt, cost = self._robust(res, valid)
        j2 = jac.reshape(-1, n_par)
        jw = j2 * np.repeat(wpt, 2)[:, None]
        h, g = _normal_equations(jw, j2, res.reshape(-1))
        # priors and symmetry
        x = np.concatenate([st.exp, st.pose, st.eyelids, np.zeros(6)])
        hp = (np.diag(self.prior) + self.sym) * reg_scale
        h[:N_FRAME, :N_FRAME] += hp
        g[:N_FRAME] += hp @ x
        cost += float(x @ hp @ x)
        if prev is not None:
            d = np.concatenate([st.exp - prev.exp, st.pose - prev.pose, st.eyelids - prev.eyelids,
                                matrix_to_axis_angle(st.r @ prev.r.T), st.t - prev.t])
            h[:N_FRAME, :N_FRAME] += np.diag(self.smooth)
            g[:N_FRAME] += self.smooth * d
            cost += float((self.smooth * d * d).sum())
        if with_intr:
            wpp = reg_scale / (s.pp_sigma * max(self.h, self.w)) ** 2
            dc = np.array([intr.cx - self.centre[0], intr.cy - self.centre[1]])
            h[N_FRAME + 1:N_FRAME + 3, N_FRAME + 1:N_FRAME + 3] += np.eye(2) * wpp
            g[N_FRAME + 1:N_FRAME + 3] += wpp * dc
            cost += float(wpp * dc @ dc)
        return cost, h, g, res, cbin, uv

    def _robust(self, res: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, float]:
        """Per-point IRLS weights (Huber) and the landmark cost of residuals ``res`` (N, 2)."""
        s = self.s
        norm = np.linalg.norm(res, axis=1) / s.sigma_px
        huber = np.where(norm <= s.huber_px, 1.0, s.huber_px / np.maximum(norm, 1e-12))
        rho = np.where(norm <= s.huber_px, norm ** 2, 2 * s.huber_px * norm - s.huber_px ** 2)
        return self.set_w * valid * huber / s.sigma_px ** 2, float((self.set_w * valid * rho).sum())

    def landmark_cost(self, res: np.ndarray, valid: np.ndarray) -> float:
        """The landmark part of the cost (units of ``sigma_px`` squared) of residuals ``res``."""
        return self._robust(res, valid)[1]

    def _rms(self, res: np.ndarray, valid: np.ndarray) -> dict[str, float]:
        out = {}
        for name, sl in self.model.slices.items():
            v = valid[sl]
            out[name] = float(np.sqrt((res[sl][v] ** 2).sum(1).mean())) if v.any() else float("nan")
        return out

    # -----------------------------------------------------------------------------------------
    def init_pose(self, obs: np.ndarray, valid: np.ndarray, intr: Intrinsics,
                  exp: np.ndarray | None = None) -> FrameState:
        """Camera R, t from the neutral model's points by PnP (OpenCV); expression zero."""
        st = FrameState()
        if exp is not None:
            st.exp = exp.copy()
        cbin = 0
        for _ in range(2):  # the contour depends on the pose: once more with the found pose
            pts = self.model.points(st.exp, st.pose, st.eyelids, cbin)
            use = valid & (self.set_w > 0)
            if use.sum() < 6:
                raise ValueError("fewer than 6 landmarks to initialise the camera")
            ok, rvec, tvec = cv2.solvePnP(pts[use].astype(np.float64), obs[use].astype(np.float64),
                                          intr.k, None, flags=cv2.SOLVEPNP_EPNP)
            if ok:
                ok, rvec, tvec = cv2.solvePnP(pts[use], obs[use], intr.k, None, rvec, tvec, True,
                                              flags=cv2.SOLVEPNP_ITERATIVE)
            if not ok or tvec[2, 0] <= 0:
                st.r, st.t = np.diag([1.0, -1.0, -1.0]), np.array([0.0, 0.0, 1.0])
                break
            st.r, st.t = cv2.Rodrigues(rvec)[0], tvec.reshape(3)
            cbin = self.model.contour_bin(st.r)
        return st

    def fit_frame(self, obs: np.ndarray, valid: np.ndarray, init: FrameState | None,
                  prev: FrameState | None = None, iters: int | None = None) -> FrameFit:
        """Levenberg-Marquardt on one frame with fixed intrinsics, warm-started from ``init``."""
        intr = self.intr
        if init is None:
            init = self.init_pose(obs, valid, intr)
            iters = iters or self.s.first_iters
        iters = iters or self.s.iters
        st = init.copy()
        if self._basis is None or np.abs(self._basis[0] - st.pose).max() > self.s.basis_tolerance:
            self._basis = (st.pose.copy(), self.model.exp_basis(st.pose))
        basis = self._basis[1]
        cache: dict = {}  # pose derivatives of this frame's first linearisation, reused by its steps
        cost, h, g, res, cbin, uv = self._linearise(st, obs, valid, intr, prev, basis, False, cache)
        mu = 1e-4

        def propose(mu):
            return st.step(-_solve(h + mu * np.diag(np.diag(h)) + 1e-9 * np.eye(len(g)), g), self.model.has_eyelids)

        def evaluate(cand):
            return self._linearise(cand, obs, valid, intr, prev, basis, False, cache)

        for _ in range(iters):
            cand, lin, mu = lm_step(cost, mu, 6, propose, evaluate)
            if cand is None:
                break
            small = cost - lin[0] < self.s.rel_tol * cost
            st, (cost, h, g, res, cbin, uv) = cand, lin
            if small:
                break
        return FrameFit(st, cost, self._rms(res, valid), cbin, uv)

    def _solve_shared(self, s_mat: np.ndarray, s_rhs: np.ndarray) -> np.ndarray:
        """The step of the keyframes' shared unknowns (focal, cx, cy, identity...) from their Schur
        system; with the principal point pinned at the centre (``principal_point = "centre"``) its
        two rows and columns are left out and its step is 0."""
        free = np.ones(len(s_rhs), bool)
        if self.s.principal_point == "centre":
            free[1:3] = False
        step = np.zeros(len(s_rhs))
        step[free] = _solve(s_mat[np.ix_(free, free)], s_rhs[free])
        return step

def pick_keyframes(valid_frames: Sequence[int], count: int) -> list[int]:
    """``count`` frame numbers spread evenly over the frames that have landmarks."""
    valid_frames = list(valid_frames)
    if len(valid_frames) <= count:
        return valid_frames
    pos = np.linspace(0, len(valid_frames) - 1, count).round().astype(int)
    return [valid_frames[i] for i in sorted(set(pos.tolist()))]

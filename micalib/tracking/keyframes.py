"""The camera intrinsics from keyframes: which frames, and the joint fit with the focal prior.

**Choice** (``choose_keyframes``): the focal length is decided by perspective, i.e. by how differently
the head is seen in the keyframes, so they are chosen for **pose diversity**, not only spread in
time (unlike the original, which uses frame 0, or the frames listed in its config). At most
``CANDIDATES`` frames spread evenly in time (a bounded cost for any clip length) get a rigid pose by
PnP on the neutral model's points; from those, farthest-point sampling picks the keyframes under the
distance ``angle between the head rotations (degrees) + DEPTH_DEG * |log depth ratio| + TIME_DEG *
|time apart| / clip length``, starting from the most central pose. A turning head gives its
extremes; a still head falls back to frames spread in time (the time term).

**Joint fit** (``calibrate``): Levenberg-Marquardt over all keyframes at once, each keyframe's 117
parameters and the shared intrinsics (focal, cx, cy; plus the identity change with
``refine_identity``), solved by the Schur complement on the shared unknowns (the principal point
left out when ``principal_point`` pins it at the centre). The focal length's
cost has the prior of ``focal_prior.py`` added with the weight ``s^2 phi``: s^2 the landmark
residual variance (per coordinate, in units of ``sigma_px``) of the keyframes, phi >= 1 how much
more the keyframes disagree about the focal length than that noise allows (``_Joint.dispersion``:
model error), both re-estimated every 5 steps. So the landmarks count as much as their real scatter
and agreement say, on clean and on noisy input, with the right face model or a wrong one. The
posterior variance of the focal length is s^2 phi times the focal entry of the inverse Schur
complement (the curvature of the keyframe cost); without the prior the same gives the landmarks'
own information, and the larger of the two informations decided (``focal_prior.estimate``).

**Calibration window** (``calibration_frames``): offline, the keyframes come from the frames with a
face in the first ``tracker.fit.calib_window_s`` seconds (0: the whole clip), as the live tracker
fits them on its warm-up seconds; so runs of different lengths of one recording share the camera
(given one identity: MICA's, without ``--identity``, comes from frames spread over each whole run).

``calibrate_window`` is the one sequence the offline runner and the live tracker (its warm-up as
the window) both call: keyframe choice, focal prior, joint fit.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from micalib.tracking.fitting import N_FRAME, FrameState, Intrinsics, _solve, lm_step
from micalib.tracking.focal_prior import CameraEstimate, FocalPrior, estimate, face_size, make_prior

CANDIDATES = 64   # frames posed by PnP to choose the keyframes from
DEPTH_DEG = 50.0  # a 10% depth change counts like a 5 degree turn
TIME_DEG = 2.0    # the whole clip apart counts like a 2 degree turn (ties: spread in time)


def _rigid_poses(fitter, frames: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, float] | None]:
    """(rotation, depth) of each frame by PnP on the neutral model's points (no contour), or None."""
    m = fitter.model
    pts = m.points(np.zeros(100), np.zeros(9), np.zeros(2), 0)
    use_set = fitter.set_w > 0
    if "contour" in m.slices:
        use_set[m.slices["contour"]] = False
    out = []
    for obs, valid in frames:
        use = valid & use_set
        if use.sum() < 6:
            out.append(None)
            continue
        ok, rvec, tvec = cv2.solvePnP(pts[use], obs[use].astype(np.float64), fitter.intr.k, None,
                                      flags=cv2.SOLVEPNP_EPNP)
        out.append((cv2.Rodrigues(rvec)[0], float(tvec[2, 0])) if ok and tvec[2, 0] > 0 else None)
    return out


def calibration_frames(face_frames: Sequence[int], times_s: Sequence[float], window_s: float,
                       minimum: int) -> list[int]:
    """The frames with a face the keyframes are chosen from: those less than ``window_s`` seconds
    (source time) after the first frame with a face, at least the first ``minimum`` of them; all of
    them with ``window_s`` 0 (``tracker.fit.calib_window_s``: a run holding those seconds gets the
    same keyframes, hence the same camera, whatever follows them)."""
    face_frames = list(face_frames)
    if window_s <= 0 or not face_frames:
        return face_frames
    t0 = times_s[face_frames[0]]
    inside = [k for k in face_frames if times_s[k] - t0 < window_s - 1e-9]
    return inside if len(inside) >= minimum else face_frames[:minimum]


def choose_keyframes(fitter, obs_all: Sequence[np.ndarray], valid_all: Sequence[np.ndarray],
                     face_frames: Sequence[int], count: int) -> list[int]:
    """``count`` frame numbers (sorted) chosen for pose diversity among ``face_frames`` (module docstring)."""
    face_frames = list(face_frames)
    if len(face_frames) <= count:
        return face_frames
    pos = np.unique(np.linspace(0, len(face_frames) - 1, min(CANDIDATES, len(face_frames))).round().astype(int))
    cand = [face_frames[i] for i in pos]
    poses = _rigid_poses(fitter, [(obs_all[k], valid_all[k]) for k in cand])
    keep = [i for i, p in enumerate(poses) if p is not None]
    if len(keep) <= count:
        return sorted(set([cand[i] for i in keep] + face_frames[:: max(1, len(face_frames) // count)]))[:count]
    rots = np.stack([poses[i][0] for i in keep])
    logz = np.log([poses[i][1] for i in keep])
    t = np.array([cand[i] for i in keep], np.float64) / max(1, face_frames[-1] - face_frames[0])
    rel = np.einsum("iab,jcb->ijac", rots, rots)  # R_i R_j^T
    cos = np.clip((np.trace(rel, axis1=2, axis2=3) - 1) / 2, -1.0, 1.0)
    dist = np.degrees(np.arccos(cos)) + DEPTH_DEG * np.abs(logz[:, None] - logz[None]) \
        + TIME_DEG * np.abs(t[:, None] - t[None])
    chosen = [int(np.argmin(dist.sum(1)))]  # the most central pose first
    near = dist[chosen[0]].copy()
    while len(chosen) < count:
        j = int(np.argmax(near))
        chosen.append(j)
        near = np.minimum(near, dist[j])
    return sorted(cand[keep[j]] for j in chosen)


class _Joint:
    """The joint keyframe problem (see the module docstring); ``run`` fits, ``curvature`` reports."""

    def __init__(self, fitter, frames, prior: FocalPrior):
        self.f, self.frames, self.prior = fitter, frames, prior
        m = fitter.model
        self.refine = fitter.s.refine_identity
        self.n_sh = 3 + (m.flame.n_shape if self.refine else 0)
        self.w_id = 1.0 / fitter.s.identity_sigma ** 2
        self.s2 = 1.0  # landmark residual variance (units of sigma_px^2), weights the prior
        self.phi = 1.0  # over-dispersion of the keyframes' focal gradients (model error), >= 1
        self.n_obs = 2 * float(sum((fitter.set_w * v).sum() for _o, v in frames))
        self.lmk = 0.0

    def refresh(self, states):
        m = self.f.model
        self.basis = [m.exp_basis(st.pose) for st in states]
        self.sjac = ([m.shape_point_jacobian(st.pose, m.contour_bin(st.r) if "contour" in m.slices else 0)
                      for st in states] if self.refine else None)

    def assemble(self, sts, it: Intrinsics, ds, with_prior: bool = True):
        """Per keyframe (H_kk, H_k,shared, g_k) plus the shared block (n_sh x n_sh, n_sh), the cost."""
        n_sh, f = self.n_sh, self.f
        blocks, a_h, a_g, total, lmk = [], np.zeros((n_sh, n_sh)), np.zeros(n_sh), 0.0, 0.0
        for i, (st, (o, v)) in enumerate(zip(sts, self.frames, strict=True)):
            c, h, g, res, *_ = f._linearise(st, o, v, it, None, self.basis[i], True,
                                            shape=(self.sjac[i], ds) if self.refine else None, reg_scale=self.s2)
            blocks.append((h[:N_FRAME, :N_FRAME], h[:N_FRAME, N_FRAME:], g[:N_FRAME], h[N_FRAME, N_FRAME], g[N_FRAME]))
            a_h += h[N_FRAME:, N_FRAME:]
            a_g += g[N_FRAME:]
            total += c
            lmk += f.landmark_cost(res, v)
        if self.refine:  # the pull towards MICA's identity (ds = 0), once for the sequence
            a_h[3:, 3:] += self.w_id * np.eye(len(ds))
            a_g[3:] += self.w_id * ds
            total += float(self.w_id * ds @ ds)
        if with_prior:
            c, h, g = self.prior.terms(it.focal, self.s2 * self.phi)
            a_h[0, 0] += h
            a_g[0] += g
            total += c
        self.lmk = lmk
        return total, blocks, a_h, a_g

    def solve(self, blocks, a_h, a_g, mu):
        """Damped normal equations by the Schur complement on the shared unknowns."""
        n_sh = self.n_sh
        s_mat, s_rhs, sols = self.schur(blocks, a_h, mu, a_g)
        d_sh = self.f._solve_shared(s_mat + 1e-9 * np.eye(n_sh), s_rhs)  # the principal point pinned or not
        return d_sh, [x[:, n_sh] - x[:, :n_sh] @ d_sh for x in sols]

    def schur(self, blocks, a_h, mu, a_g=None):
        n_sh = self.n_sh
        s_mat = a_h + mu * np.diag(np.diag(a_h))
        s_rhs = -a_g.copy() if a_g is not None else np.zeros(n_sh)
        sols = []
        for d, b, g, *_ in blocks:
            d = d + mu * np.diag(np.diag(d)) + 1e-9 * np.eye(N_FRAME)
            x = _solve(d, np.concatenate([b, -g[:, None]], 1))
            sols.append(x)
            s_mat = s_mat - b.T @ x[:, :n_sh]
            s_rhs = s_rhs - b.T @ x[:, n_sh]
        return s_mat, s_rhs, sols

    def dispersion(self, blocks, s2: float) -> float:
        """How much more the keyframes disagree on the focal length than the landmark noise allows
        (>= 1): each keyframe's focal gradient gamma_k, its own parameters marginalised, has the
        variance s^2 I_k (I_k its information on the focal) when the model fits up to that noise,
        and at the joint optimum the gammas sum to about zero, so sum gamma_k^2 / (s^2 I_k) is about
        K - 1. A model that does not fit the face (a stand-in FLAME, an identity off) makes each
        keyframe pull its own way: the landmarks' information on the focal is then divided by
        this factor (a quasi-likelihood over-dispersion estimate)."""
        if len(blocks) < 3:
            return 1.0
        chi = 0.0
        for d, b, g, h_ff, g_f in blocks:
            x = _solve(d + 1e-9 * np.eye(N_FRAME), np.stack([b[:, 0], g], 1))
            info = h_ff - b[:, 0] @ x[:, 0]
            gamma = g_f - b[:, 0] @ x[:, 1]
            if info > 0:
                chi += gamma * gamma / (s2 * info)
        return max(1.0, chi / (len(blocks) - 1))

    def residual_variance(self) -> float:
        """Landmark residual variance per coordinate (sigma_px units) of the keyframes, the rigid
        unknowns (6 per keyframe, 3 intrinsics) counted off."""
        dof = max(self.n_obs - 6 * len(self.frames) - 3, 0.5 * self.n_obs, 1.0)
        return max(self.lmk / dof, 1e-4)

    def run(self, states, intr: Intrinsics):
        """Levenberg-Marquardt (``key_iters`` steps); returns states, intrinsics, identity change."""
        f, m = self.f, self.f.model
        fixed = self.prior.fixed
        self.refresh(states)
        ds = np.zeros(self.n_sh - 3)
        cost, blocks, a_h, a_g = self.assemble(states, intr, ds)
        mu = 1e-3

        def propose(mu):
            ah = a_h.copy()
            if fixed:  # --focal: the intrinsics do not move (two runs share them exactly)
                ah[:3, :3] += 1e12 * np.eye(3)
            d_sh, d_frames = self.solve(blocks, ah, a_g, mu)
            cand = ([st.step(d, m.has_eyelids) for st, d in zip(states, d_frames, strict=True)],
                    intr if fixed else Intrinsics(intr.focal + d_sh[0], intr.cx + d_sh[1], intr.cy + d_sh[2]),
                    ds + d_sh[3:])
            return None if cand[1].focal <= 0 or any(c.t[2] <= 0 for c in cand[0]) else cand

        for it_n in range(f.s.key_iters):
            cand, lin, mu = lm_step(cost, mu, 8, propose, lambda c: self.assemble(*c))
            if cand is None:
                break
            converged = (cost - lin[0]) < 1e-6 * cost
            (states, intr, ds), (cost, blocks, a_h, a_g) = cand, lin
            if it_n % 5 == 4:  # new expression bases, and the prior's weight from the residuals now
                s2 = self.residual_variance()
                self.refresh(states)
                phi = self.dispersion(blocks, s2)
                converged = converged and abs(s2 * phi / (self.s2 * self.phi) - 1) < 0.1
                self.s2, self.phi = s2, phi
                cost, blocks, a_h, a_g = self.assemble(states, intr, ds)
            if converged and it_n >= 4:  # after the residual scale has been measured once
                break
        _c, blocks, a_h, _g = self.assemble(states, intr, ds, with_prior=False)
        self.s2 = self.residual_variance()
        self.phi = self.dispersion(blocks, self.s2)
        self.final = (blocks, a_h, intr.focal)
        return states, intr, ds

    def curvature(self) -> tuple[float, float]:
        """Variances of the focal length (fitted px^2) at the end of ``run``: posterior (landmarks +
        prior) and from the landmarks alone, keyframe parameters (and the identity change)
        marginalised (the prior touches only the shared block: one Schur complement for both)."""
        blocks, a_h, focal = self.final
        free = np.ones(self.n_sh, bool)
        if self.f.s.principal_point == "centre":  # pinned: not an unknown
            free[1:3] = False
        s_data = self.schur(blocks, a_h, 0.0)[0][np.ix_(free, free)]
        s_post = s_data.copy()
        s_post[0, 0] += self.prior.terms(focal, self.s2 * self.phi)[1]
        out = []
        for m in (s_post, s_data):
            try:
                var = float(np.linalg.inv(m)[0, 0])
            except np.linalg.LinAlgError:
                var = np.inf
            out.append(self.s2 * self.phi * var if var > 0 else np.inf)
        return out[0], out[1]


def calibrate(fitter, frames: Sequence[tuple[np.ndarray, np.ndarray]], prior: FocalPrior,
              keyframes: Sequence[int] | None = None) -> tuple[list[FrameState], CameraEstimate]:
    """Fit the intrinsics (``fitter.intr``) and the keyframes' states jointly (module docstring).

    Args:
        fitter: the ``LandmarkFitter``; its ``intr`` is the starting point and receives the result,
            ``identity_change`` the identity change (empty unless ``refine_identity``).
        frames: (obs (N,2), valid (N,)) of each keyframe.
        prior: the focal prior (``fixed``: the focal length is given and kept).
        keyframes: their frame numbers, for the estimate's record.

    Returns:
        The keyframes' states and the ``CameraEstimate``.
    """
    fitter.intr = Intrinsics(prior.centre, fitter.intr.cx, fitter.intr.cy)
    states = [fitter.init_pose(o, v, fitter.intr) for o, v in frames]
    joint = _Joint(fitter, frames, prior)
    states, intr, ds = joint.run(states, fitter.intr)
    fitter.intr = intr
    fitter.identity_change = ds
    var_post, var_data = (0.0, 0.0) if prior.fixed else joint.curvature()
    est = estimate(prior, intr.focal, var_post, var_data, float(np.sqrt(joint.s2)),
                   None if keyframes is None else [int(k) for k in keyframes])
    est.dispersion = float(joint.phi)
    return states, est


def calibrate_window(fitter, obs_all: Sequence[np.ndarray], valid_all: Sequence[np.ndarray],
                     window: Sequence[int], source_size: tuple[int, int],
                     scale: float) -> tuple[list[int], FocalPrior, list[FrameState], CameraEstimate]:
    """The intrinsics from a calibration window (offline: ``calibration_frames``; live: the
    warm-up): keyframes chosen for pose diversity among ``window``, the focal prior of the source
    frame (``source_size`` (width, height), ``scale`` fitted-image pixels per source pixel) whose
    pre-cropped centre takes the face size over the whole window, not the keyframes
    (``focal_prior.py``), and ``calibrate`` on those keyframes.

    Returns:
        (keyframes, prior, their states, the ``CameraEstimate``).
    """
    keys = choose_keyframes(fitter, obs_all, valid_all, window, fitter.s.keyframes)
    face = face_size([obs_all[k][valid_all[k]] for k in window])
    prior = make_prior(fitter.s, source_size, scale, None if face is None else face / scale)
    states, est = calibrate(fitter, [(obs_all[k], valid_all[k]) for k in keys], prior, keys)
    return keys, prior, states, est

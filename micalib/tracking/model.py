"""The tracking FLAME: our FLAME layer with a fixed identity, 100 expression coefficients, jaw and
eye rotations, and the two eyelid blendshapes (added after skinning), plus the landmark sets the
tracker fits (as the original tracker):

- ``mediapipe``: the 105 points of ``mediapipe_landmark_embedding.npz`` (MediaPipe index,
  FLAME triangle, barycentric coordinates);
- ``iris``: MediaPipe 468..477 against FLAME vertices ``IRIS_VERTICES``;
- ``ibug68``: FLAME's 51 static landmarks and the 17 contour points picked from the head's yaw
  relative to the camera (``contour_bin``, the original tracker's rule).

Head motion lives in the camera; FLAME's global and neck rotations stay zero, so vertices are in
model space (metres).

For the per-frame solver the landmarks come from a *reduced* FLAME: only the vertices the landmarks
touch, plus five carrier points whose template and expression blend shapes are the joint
regressor's image of FLAME's, with a joint regressor that reads exactly those carriers. Running the
project's own ``models.lbs.lbs`` on it gives the landmarks of the full model exactly (the joints
are linear in the blend shapes), at a tiny fraction of the cost, and evaluates many parameter
variations in one batched call (``point_jacobian``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Union

import numpy as np
import torch

from micalib.tracking.camera import axis_angle_to_matrix
from models.flame import FLAME
from models.lbs import batch_rigid_transform, batch_rodrigues, lbs, yaw_bin
from utils.errors import MICAError

PathLike = Union[str, os.PathLike]  # noqa: UP007

# MediaPipe iris points 468..472 (left) and 473..477 (right) against these FLAME vertices.
IRIS_MEDIAPIPE = tuple(range(468, 478))
IRIS_VERTICES = (4597, 4542, 4510, 4603, 4570, 4051, 3996, 3964, 3932, 4028)
N_EXP = 100
N_POSE = 9  # jaw, left eye, right eye (axis-angle while fitting)
N_EYELIDS = 2
N_MODEL = N_EXP + N_POSE + N_EYELIDS  # model parameters per frame
CANONICAL_JAW = (0.2094, 0.0, 0.0)  # canonical.obj: jaw opened 12 degrees about x
POSE_STEP = 1e-5  # radians, forward differences of the pose columns


@dataclass
class MediaPipeEmbedding:
    """``mediapipe_landmark_embedding.npz``: ``landmark_indices`` (105,), ``lmk_face_idx`` (105,),
    ``lmk_b_coords`` (105, 3)."""

    landmark_indices: np.ndarray
    lmk_face_idx: np.ndarray
    lmk_b_coords: np.ndarray


def load_mediapipe_embedding(path: PathLike) -> MediaPipeEmbedding:
    """Read the embedding npz (plain arrays; no pickles), one-line errors."""
    try:
        with np.load(path, allow_pickle=False) as z:
            emb = MediaPipeEmbedding(np.asarray(z["landmark_indices"], np.int64).reshape(-1),
                                     np.asarray(z["lmk_face_idx"], np.int64).reshape(-1),
                                     np.asarray(z["lmk_b_coords"], np.float64).reshape(-1, 3))
    except FileNotFoundError:
        raise MICAError(f"MediaPipe embedding {path} not found; run install.sh --download or set "
                        f"tracker.mediapipe_embedding_path") from None
    except (OSError, KeyError, ValueError) as e:
        raise MICAError(f"MediaPipe embedding {path} is not a valid embedding npz ({str(e)[:80]}); "
                        f"download it again with install.sh --download") from None
    n = len(emb.landmark_indices)
    if not (len(emb.lmk_face_idx) == n == len(emb.lmk_b_coords)) or emb.landmark_indices.max() >= 478:
        raise MICAError(f"MediaPipe embedding {path} has inconsistent arrays; download it again")
    return emb


def load_eyelids(left: PathLike, right: PathLike, n_vertices: int) -> np.ndarray | None:
    """(2, V, 3) eyelid offsets (left, right) in metres, or None when either file is absent."""
    if not (os.path.isfile(left) and os.path.isfile(right)):
        return None
    out = []
    for p in (left, right):
        try:
            a = np.load(p, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise MICAError(f"eyelid blendshape {p} is not a readable .npy ({str(e)[:80]}); download it again") from None
        a = np.asarray(a, np.float64).reshape(-1, 3) if a.size == n_vertices * 3 else None
        if a is None:
            raise MICAError(f"eyelid blendshape {p} must hold {n_vertices}x3 offsets for this FLAME; "
                            f"use the file matching your FLAME model")
        out.append(a)
    return np.stack(out)


def _corners(faces: np.ndarray, face_idx: np.ndarray, bary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return faces[face_idx], np.asarray(bary, np.float64)


class TrackingFLAME:
    """FLAME with a fixed identity and the tracker's landmark sets.

    Args:
        flame: the project's FLAME layer (``n_exp`` 100).
        identity: (300,) or (k,) MICA identity coefficients.
        mediapipe: the embedding, or None (then only the 68 points are fitted).
        eyelids: (2, V, 3) offsets or None (tracked without eyelids).
        iris_vertices: FLAME vertices of the 10 iris points (None = none).
        ibug68: include the 68 points (False when no 68-point landmarks exist: fewer vertices to pose).

    Points are ordered ``mediapipe`` (105) | ``iris`` (10) | ``static`` (51) | ``contour`` (17);
    ``slices`` names them.
    """

    def __init__(self, flame: FLAME, identity: np.ndarray, mediapipe: MediaPipeEmbedding | None = None,
                 eyelids: np.ndarray | None = None, iris_vertices: tuple[int, ...] | None = IRIS_VERTICES,
                 ibug68: bool = True) -> None:
        if flame.n_exp < N_EXP:
            raise ValueError(f"the tracking FLAME needs {N_EXP} expression coefficients, the layer has {flame.n_exp}")
        self.flame = flame.float()
        dt = torch.float64
        ident = torch.as_tensor(np.asarray(identity, np.float32).reshape(1, -1))
        self.identity = np.zeros(300, np.float32)
        self.identity[: ident.shape[1]] = ident.numpy()[0]
        self._shape = ident
        n_v = flame.n_vertices
        faces = flame.faces.cpu().numpy()
        self.faces = faces
        self.has_eyelids = eyelids is not None
        self.eyelids = np.zeros((2, n_v, 3)) if eyelids is None else np.asarray(eyelids, np.float64)
        # ---- point definitions (corner vertex ids + weights) on the full topology
        groups = []
        if mediapipe is not None:
            groups.append(("mediapipe", *_corners(faces, mediapipe.lmk_face_idx, mediapipe.lmk_b_coords)))
            self.mediapipe_index = mediapipe.landmark_indices.copy()
        else:
            self.mediapipe_index = np.zeros(0, np.int64)
        if mediapipe is not None and iris_vertices is not None and max(iris_vertices) < n_v:
            vid = np.repeat(np.asarray(iris_vertices, np.int64)[:, None], 3, 1)
            groups.append(("iris", vid, np.tile([1.0, 0.0, 0.0], (len(iris_vertices), 1))))
        dyn_idx = flame.dynamic_lmk_faces_idx.cpu().numpy()  # (79, 17)
        dyn_vid = faces[dyn_idx]  # (79, 17, 3)
        dyn_w = flame.dynamic_lmk_bary_coords.cpu().numpy().astype(np.float64)
        if ibug68:
            static_idx = flame.lmk_faces_idx.cpu().numpy()
            groups.append(("static", *_corners(faces, static_idx, flame.lmk_bary_coords.cpu().numpy())))
        else:
            dyn_vid, dyn_w = dyn_vid[:, :0], dyn_w[:, :0]
        self.slices: dict[str, slice] = {}
        start = 0
        for name, vid, _ in groups:
            self.slices[name] = slice(start, start + len(vid))
            start += len(vid)
        if ibug68:
            self.slices["contour"] = slice(start, start + dyn_vid.shape[1])
        self.n_points = start + dyn_vid.shape[1]
        all_v = np.concatenate([g[1].reshape(-1) for g in groups] + [dyn_vid.reshape(-1)])
        subset, inverse = np.unique(all_v, return_inverse=True)
        n_fixed = sum(len(g[1]) for g in groups)
        self._fixed_vid = inverse[: n_fixed * 3].reshape(n_fixed, 3)
        self._fixed_w = np.concatenate([g[2] for g in groups])
        self._dyn_vid = inverse[n_fixed * 3:].reshape(dyn_vid.shape)
        self._dyn_w = dyn_w
        self.subset = subset
        # ---- reduced model for models.lbs.lbs: subset vertices + 5 joint carriers
        with torch.no_grad():
            v_shaped = flame.canonical(ident.to(flame.v_template.dtype)).double()[0]  # (V, 3)
            jreg = flame.J_regressor.double()
            expdirs = flame.shapedirs[flame.n_shape: flame.n_shape + N_EXP].double().view(N_EXP, n_v, 3)
            n_j = jreg.shape[0]
            sub = torch.as_tensor(subset)
            vt = torch.cat([v_shaped[sub], jreg @ v_shaped])
            sd = torch.cat([expdirs[:, sub], torch.einsum("jv,kvc->kjc", jreg, expdirs)], dim=1)
            pd = flame.posedirs.double().view(-1, n_v, 3)
            pd = torch.cat([pd[:, sub], torch.zeros(pd.shape[0], n_j, 3, dtype=dt)], dim=1)
            jr = torch.cat([torch.zeros(n_j, len(subset), dtype=dt), torch.eye(n_j, dtype=dt)], dim=1)
            wts = torch.cat([flame.lbs_weights.double()[sub], torch.eye(n_j, dtype=dt)])
        self._red = {"v_template": vt, "shapedirs_flat": sd.reshape(N_EXP, -1),
                     "posedirs": pd.reshape(pd.shape[0], -1), "J_regressor": jr,
                     "parents": flame.parents.cpu(), "lbs_weights": wts}
        self._n_sub = len(subset)
        # full meshes: the identity's blend shapes applied once (only expression is blended per frame)
        with torch.no_grad():
            v_id = flame.canonical(ident.to(flame.v_template.dtype))[0].float()
        self._full = {"v_template": v_id, "shapedirs_flat": flame.shapedirs[flame.n_shape: flame.n_shape + N_EXP].float(),
                      "posedirs": flame.posedirs.float(), "J_regressor": flame.J_regressor.float(),
                      "parents": flame.parents.cpu(), "lbs_weights": flame.lbs_weights.float()}
        self._eyelids32 = self.eyelids.astype(np.float32)
        lid = torch.as_tensor(self.eyelids[:, subset])  # (2, L, 3)
        self._lid_sub = lid.numpy()

    # -----------------------------------------------------------------------------------------
    @staticmethod
    def full_pose(pose9: np.ndarray) -> np.ndarray:
        """(B, 9) jaw, left eye, right eye -> (B, 15) with zero global and neck rotations."""
        pose9 = np.asarray(pose9, np.float64).reshape(-1, N_POSE)
        return np.concatenate([np.zeros((len(pose9), 6)), pose9], axis=1)

    def contour_bin(self, r_opencv: np.ndarray) -> int:
        """Contour row for a head seen by a camera with OpenCV rotation ``r_opencv``.

        The tracker's rule: rel = C @ (rotations along FLAME's neck chain, identity here), C the
        inverse of the camera's (PyTorch3D) rotation; bin from ``models.lbs.yaw_bin`` (-yaw).
        """
        r_p3d = np.asarray(r_opencv, np.float64).T * np.array([-1.0, -1.0, 1.0])[None, :]
        rel = torch.as_tensor(r_p3d.T)[None]
        return int(yaw_bin(rel)[0])

    def _point_weights(self, contour_bin: int) -> tuple[np.ndarray, np.ndarray]:
        vid = np.concatenate([self._fixed_vid, self._dyn_vid[contour_bin]])
        w = np.concatenate([self._fixed_w, self._dyn_w[contour_bin]])
        return vid, w

    def _reduced(self, exp: np.ndarray, pose9: np.ndarray) -> np.ndarray:
        """(B, 100), (B, 9) -> (B, L, 3) subset vertices (float64 numpy) via models.lbs.lbs."""
        with torch.no_grad():
            v, _ = lbs(torch.as_tensor(exp, dtype=torch.float64), torch.as_tensor(self.full_pose(pose9)), **self._red)
        return v[:, : self._n_sub].numpy()

    def points(self, exp: np.ndarray, pose9: np.ndarray, eyelids: np.ndarray, contour_bin: int) -> np.ndarray:
        """(N, 3) landmark points (metres, model space) of one frame."""
        v = self._reduced(np.asarray(exp).reshape(1, -1), np.asarray(pose9).reshape(1, -1))[0]
        v = v + np.tensordot(np.asarray(eyelids, np.float64).reshape(2), self._lid_sub, axes=1)
        vid, w = self._point_weights(contour_bin)
        return np.einsum("nkc,nk->nc", v[vid], w)

    def exp_basis(self, pose9: np.ndarray) -> np.ndarray:
        """(L, 3, 100) displacement of the subset vertices per unit expression at ``pose9``.

        Exact: at a fixed pose the model is linear in expression (the joints are linear in the blend
        shapes and the parents of jaw and eyes stay unrotated); see ``_blend_basis``.
        """
        return self._blend_basis(pose9, self._red["shapedirs_flat"].view(N_EXP, -1, 3))

    def _blend_basis(self, pose9: np.ndarray, dirs: torch.Tensor) -> np.ndarray:
        """(L, 3, K) displacement of the subset vertices per unit coefficient of the blend shapes
        ``dirs`` (K, L + joints, 3) at ``pose9``: the same numbers as unit differences of ``lbs``
        (``v(e_k) - v(0)``), without posing K meshes. At a fixed pose the skinning rotations do not
        depend on the coefficients and the translations are linear in the joints, so
        basis_k = (sum_j w_j R_j) dirs_k + sum_j w_j (t_j(e_k) - t_j(0)); the pose correctives
        cancel in the difference."""
        red, n = self._red, self._n_sub
        with torch.no_grad():
            pose = torch.as_tensor(self.full_pose(pose9))
            rot = batch_rodrigues(pose.reshape(-1, 3)).unsqueeze(0)  # (1, J, 3, 3)
            j0 = red["v_template"][n:]  # rest joints (the joint carriers)
            joints = torch.cat([j0[None], j0[None] + dirs[:, n:]])  # (K + 1, J, 3)
            _, rel = batch_rigid_transform(rot.expand(len(joints), -1, -1, -1), joints, red["parents"])
            w = red["lbs_weights"][:n]  # (L, J)
            r_v = torch.einsum("lj,jab->lab", w, rel[0, :, :3, :3])
            t_v = torch.einsum("lj,bja->bla", w, rel[:, :, :3, 3])  # (K + 1, L, 3)
            basis = torch.einsum("lab,klb->lak", r_v, dirs[:, :n]) + (t_v[1:] - t_v[0]).permute(1, 2, 0)
        return basis.numpy()

    def shape_point_jacobian(self, pose9: np.ndarray, contour_bin: int) -> np.ndarray:
        """(N, 3, S) displacement of the landmark points per unit identity coefficient at ``pose9``
        (S = the FLAME layer's ``n_shape``), like ``exp_basis`` (at a fixed pose the model is linear
        in the identity too)."""
        flame, n_v = self.flame, self.flame.n_vertices
        if getattr(self, "_red_shape", None) is None:
            with torch.no_grad():
                n_s = flame.n_shape
                sub = torch.as_tensor(self.subset)
                jreg = flame.J_regressor.double()
                sdir = flame.shapedirs[:n_s].double().view(n_s, n_v, 3)
                sd = torch.cat([sdir[:, sub], torch.einsum("jv,kvc->kjc", jreg, sdir)], dim=1)
            self._red_shape = dict(self._red, shapedirs_flat=sd.reshape(n_s, -1))
        n_s = self._red_shape["shapedirs_flat"].shape[0]
        basis = self._blend_basis(pose9, self._red_shape["shapedirs_flat"].view(n_s, -1, 3))  # (L, 3, S)
        vid, w = self._point_weights(contour_bin)
        return (basis[vid] * w[:, :, None, None]).sum(1)

    def point_jacobian(self, exp: np.ndarray, pose9: np.ndarray, eyelids: np.ndarray, contour_bin: int,
                       basis: np.ndarray | None = None, cache: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Points (N, 3) and their Jacobian (N, 3, 111) w.r.t. [exp (100), pose (9), eyelids (2)].

        One batched ``lbs`` call for the points and the pose columns (forward differences);
        the expression columns come from ``basis`` (``exp_basis``, computed here when None: pass
        the one of a nearby pose to save its cost), the eyelid columns are the offsets themselves.
        ``cache``: a dict; the first call stores the subset's vertices and pose derivatives there,
        later calls with the same dict (the Levenberg-Marquardt steps of one frame, where the pose
        moves very little) take the points from the first-order expansion around them (exact in
        expression, which the model is linear in) instead of posing again.
        """
        exp = np.asarray(exp, np.float64).reshape(1, N_EXP)
        pose9 = np.asarray(pose9, np.float64).reshape(N_POSE)
        if basis is None:
            basis = self.exp_basis(pose9)
        if cache is not None and cache.get("pose_cols") is not None:
            # first order around the frame's first linearisation: exact in expression, the pose
            # moves by a few thousandths of a radian between the steps of one frame
            dv = cache["pose_cols"]
            v = (cache["v0"] + (basis.reshape(-1, N_EXP) @ (exp[0] - cache["exp0"])).reshape(-1, 3)
                 + (dv.reshape(-1, N_POSE) @ (pose9 - cache["pose0"])).reshape(-1, 3))
        else:
            b_pose = np.concatenate([pose9[None], pose9[None] + POSE_STEP * np.eye(N_POSE)])
            vv = self._reduced(np.repeat(exp, 1 + N_POSE, 0), b_pose)  # (10, L, 3)
            v, dv = vv[0], ((vv[1:] - vv[0]) / POSE_STEP).transpose(1, 2, 0)  # (L, 3), (L, 3, 9)
            if cache is not None:
                cache.update(pose_cols=dv, v0=v, exp0=exp[0].copy(), pose0=pose9.copy())
        vid, w = self._point_weights(contour_bin)
        key = ("jac", contour_bin)
        if cache is not None and key in cache:
            jac = cache[key]
        else:
            jac = np.empty((len(vid), 3, N_MODEL))
            jac[:, :, :N_EXP] = (basis[vid] * w[:, :, None, None]).sum(1)
            jac[:, :, N_EXP: N_EXP + N_POSE] = (dv[vid] * w[:, :, None, None]).sum(1)
            jac[:, :, N_EXP + N_POSE:] = (self._lid_sub[:, vid] * w[None, :, :, None]).sum(2).transpose(1, 2, 0)
            if cache is not None:
                cache[key] = jac
        base = (v[vid] * w[:, :, None]).sum(1) + jac[:, :, N_EXP + N_POSE:] @ np.asarray(eyelids, np.float64).reshape(2)
        return base, jac

    # -----------------------------------------------------------------------------------------
    def vertices(self, exp: np.ndarray, pose9: np.ndarray, eyelids: np.ndarray) -> np.ndarray:
        """(B, V, 3) float32 full meshes in model space (FLAME's posed path, then eyelids): FLAME's
        ``lbs`` with the identity's shape blended in once (``FLAME.canonical``), so per frame only
        the expression is blended."""
        exp = np.asarray(exp, np.float32).reshape(-1, N_EXP)
        b = len(exp)
        with torch.no_grad():
            v, _ = lbs(torch.as_tensor(exp), torch.as_tensor(self.full_pose(pose9), dtype=torch.float32), **self._full)
        lids = np.asarray(eyelids, np.float32).reshape(b, 2)
        return v.numpy() + np.einsum("be,evc->bvc", lids, self._eyelids32)

    def full_points(self, vertices: np.ndarray, contour_bin: int) -> np.ndarray:
        """(V, 3) full mesh -> (N, 3) landmark points (the same points as ``points``)."""
        vid = self.subset[np.concatenate([self._fixed_vid, self._dyn_vid[contour_bin]])]
        _, w = self._point_weights(contour_bin)
        return np.einsum("nkc,nk->nc", np.asarray(vertices, np.float64)[vid], w)

    def canonical_vertices(self) -> np.ndarray:
        """(V, 3) identity with zero expression and the jaw opened 12 degrees (``canonical.obj``)."""
        pose = np.zeros(N_POSE)
        pose[:3] = CANONICAL_JAW
        return self.vertices(np.zeros(N_EXP), pose, np.zeros(2))[0]


def rotation_matrices(pose9: np.ndarray) -> np.ndarray:
    """(..., 9) axis-angle jaw/left eye/right eye -> (..., 3, 3, 3) matrices."""
    p = np.asarray(pose9, np.float64)
    return axis_angle_to_matrix(p.reshape(p.shape[:-1] + (3, 3)))


def observations(model: TrackingFLAME, mediapipe: np.ndarray | None, ibug68: np.ndarray | None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Detected 2D landmarks of one frame -> (N, 2) targets in the model's point order and (N,) validity.

    Args:
        mediapipe: (478, 2) or None; ibug68: (68, 2) or None (NaN = missing point).
    """
    obs = np.full((model.n_points, 2), np.nan)
    s = model.slices
    if mediapipe is not None:
        if "mediapipe" in s:
            obs[s["mediapipe"]] = mediapipe[model.mediapipe_index]
        if "iris" in s:
            obs[s["iris"]] = mediapipe[list(IRIS_MEDIAPIPE)]
    if ibug68 is not None and "static" in s:
        obs[s["static"]] = ibug68[17:]
        obs[s["contour"]] = ibug68[:17]
    valid = np.isfinite(obs).all(1)
    return obs, valid

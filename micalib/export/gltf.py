"""Tracked clips and demo meshes as glTF 2.0 binaries (``.glb``), exact by the specification.

A tracking folder ``OUT/NAME`` becomes one animated ``OUT/NAME/NAME.glb``:

- **Mesh**: the identity baked into the base positions (FLAME template + identity blend shapes);
  morph targets (positions only; readers compute normals) for the 100 expression components
  (``exp_00``..), the 2 eyelid blendshapes (``eyelid_l``, ``eyelid_r``) and the 27 pose-corrective
  blendshapes of jaw and eyes (``pose_jaw_0``.., ``pose_eye_l_0``.., ``pose_eye_r_0``..: FLAME's
  pose feature (R - I) row-major, linear in it, so exact). The neck's 9 correctives are left out:
  the tracker keeps the neck rotation at identity, so their weight is always 0.
- **Weights in [0, 1]**: readers clamp morph weights (Blender's importer cuts shape-key values to
  [0, 1]), so per target with weights w over the clip, lo = min w, hi = max w, the file stores the
  target times (hi - lo) with weight (w - lo) / (hi - lo), and sum(lo x target) is added to the
  base positions: the same mesh, every weight in [0, 1] exactly (a target whose weight never changes
  is baked into the base with weight 0).
- **Skin**: 4 joints ``head`` (FLAME's root and neck merged: the tracker keeps both rotations at
  identity, so their skinning transforms are both the identity and their weights add), ``jaw``,
  ``eye_l``, ``eye_r``; ``JOINTS_0`` / ``WEIGHTS_0`` hold exactly FLAME's weights (4 influences).
  Inverse bind matrices are [I | -J_bind] (J_bind: FLAME's joints of the identity at zero
  expression); FLAME's joints move with expression, so joint j is animated to the global
  translation T_j = J_j - R_j (J_j - J_bind), which makes joint_matrix x inverse_bind = FLAME's
  [R_j | J_j - R_j J_j] exactly (the naive T_j = J_j is off by (R_j - I)(J_j - J_bind)).
- **Eyelids**: the tracker adds them *after* skinning, glTF morphs *before*: the file reproduces the
  tracker's mesh exactly where the vertices the eyelids move are skinned to the head joint alone
  (or where jaw and eyes are not rotated). ``build_tracking_glb`` computes the largest deviation
  |sum_j w_j (R_j - I) (eyelids . offsets)| over the clip and logs it (a warning above 0.01 mm).
- **Camera**: an animated perspective camera: yfov = 2 atan(H / (2 f_y)), aspectRatio = W/H x
  f_y/f_x, pose from the ``.frame``'s ``opencv`` R, t (camera node = [R^T F | -R^T t], F =
  diag(1, -1, -1): OpenCV's camera looks along +z with y down, glTF's along -z with y up). glTF
  cameras have no principal point: it goes into the camera's ``extras`` (``principalPoint`` in
  pixels where pixel i spans [i, i + 1], ``imageSize`` [W, H], ``ndcOffset`` [ox, oy] to add to
  the normalised device coordinates: in a projection matrix P[0][2] = -ox, P[1][2] = -oy).
  ``tracker.follow_face`` changes K per frame, which core glTF cannot animate: such clips keep
  frame 0's yfov and list every frame's intrinsics in ``extras.perFrame`` (the viewer page applies
  them; other readers see frame 0's).
- **Units and axes**: metres; FLAME's model space is already glTF's (+Y up, the face looks along
  +Z), so vertices are written unchanged; head motion is the camera's, as in the tracker.
- **Animation**: one keyframe per output frame at t = k / fps, LINEAR (exact at the keyframes).

Licence: the file carries FLAME's identity, expression and pose bases; FLAME's licence forbids
redistributing them: share such files only with people who accepted FLAME's licence.

Demo meshes (``demo_glb``): a static mesh in **metres** (the ``.ply`` / ``.obj`` stay millimetres).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from loguru import logger

from micalib.export.glb import ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER, GlbBuilder
from utils.errors import MICAError
from utils.io import atomic_write_bytes

PathLike = Union[str, os.PathLike]  # noqa: UP007
# Pixel convention of ``ClipStates.K``: pixel i's centre is at coordinate i + K_PIXEL_CENTRE (0.0:
# OpenCV's integer centres, the tracker's K in memory; ``states_from_frames`` converts the .frame K,
# which is in the renderers' convention (0.5), with ``micalib.tracking.outputs.k_convert``).
K_PIXEL_CENTRE = 0.0
JOINT_NAMES = ("head", "jaw", "eye_l", "eye_r")
POSE_NAMES = ("jaw", "eye_l", "eye_r")
ZNEAR, ZFAR = 0.01, 100.0
_F = np.diag([1.0, -1.0, -1.0])


@dataclass
class FlameRig:
    """What the file needs of FLAME for one identity (float64, metres).

    base (V,3): template + identity blend shapes; expdirs (100,V,3); posedirs (27,V,3) jaw then
    eyes, each (R - I) row-major; eyelids (2,V,3) or None; j_regressor (5,V); weights (V,5);
    faces (F,3)."""

    base: np.ndarray
    expdirs: np.ndarray
    posedirs: np.ndarray
    eyelids: np.ndarray | None
    j_regressor: np.ndarray
    weights: np.ndarray
    faces: np.ndarray


@dataclass
class ClipStates:
    """Per frame (N frames): exp (N,100), rotations (N,3,3,3) jaw / left eye / right eye, eyelids
    (N,2), camera R (N,3,3), t (N,3), K (N,3,3) (``.frame`` ``opencv`` block), image_size (H, W), fps."""

    exp: np.ndarray
    rotations: np.ndarray
    eyelids: np.ndarray
    R: np.ndarray
    t: np.ndarray
    K: np.ndarray
    image_size: tuple[int, int]
    fps: float


def rig_from_model(model, identity: np.ndarray, eyelids: np.ndarray | None) -> FlameRig:
    """``models.flame_io.FlameModelData`` + identity coefficients (k <= 300) + eyelids -> ``FlameRig``."""
    ident = np.asarray(identity, np.float64).reshape(-1)[:300]
    sd = np.asarray(model.shapedirs, np.float64)  # (V, 3, 400)
    base = np.asarray(model.v_template, np.float64) + sd[:, :, : len(ident)] @ ident
    expdirs = sd[:, :, 300:400].transpose(2, 0, 1)
    pd = np.asarray(model.posedirs, np.float64).transpose(2, 0, 1)[9:36]  # joints 2..4 (neck's 9 dropped)
    return FlameRig(base, np.ascontiguousarray(expdirs), np.ascontiguousarray(pd),
                    None if eyelids is None else np.asarray(eyelids, np.float64),
                    np.asarray(model.J_regressor, np.float64), np.asarray(model.weights, np.float64),
                    np.asarray(model.faces, np.int64))


def rig_from_tracking_model(model) -> FlameRig:
    """``micalib.tracking.model.TrackingFLAME`` (its FLAME layer, fixed identity and eyelids) ->
    ``FlameRig``: the in-memory path (a live session), no files read."""
    flame = model.flame
    n_v, n_s = flame.n_vertices, flame.n_shape
    sd = flame.shapedirs.detach().double().cpu().numpy().reshape(-1, n_v, 3)  # (n_shape + n_exp, V, 3)
    ident = np.asarray(model.identity, np.float64).reshape(-1)[:n_s]
    base = flame.v_template.detach().double().cpu().numpy() + np.tensordot(ident, sd[:n_s], 1)
    pd = flame.posedirs.detach().double().cpu().numpy().reshape(-1, n_v, 3)[9:36]
    return FlameRig(base, np.ascontiguousarray(sd[n_s: n_s + 100]), np.ascontiguousarray(pd),
                    np.asarray(model.eyelids, np.float64) if model.has_eyelids else None,
                    flame.J_regressor.detach().double().cpu().numpy(), flame.lbs_weights.detach().double().cpu().numpy(),
                    np.asarray(model.faces, np.int64))


def clip_from_states(states: list, k: np.ndarray, image_size: tuple[int, int], fps: float) -> ClipStates:
    """The tracker's per-frame states (``micalib.tracking.fitting.FrameState``: exp, pose (9,)
    axis-angle jaw / left eye / right eye, eyelids, OpenCV r, t) with K (3,3) or one per frame
    (N,3,3) -> ``ClipStates``: the in-memory path."""
    from micalib.tracking.camera import axis_angle_to_matrix

    n = len(states)
    kk = np.asarray(k, np.float64)
    kk = np.broadcast_to(kk, (n, 3, 3)).copy() if kk.ndim == 2 else kk.reshape(n, 3, 3)
    pose = np.stack([np.asarray(s.pose, np.float64).reshape(3, 3) for s in states])
    return ClipStates(np.stack([np.asarray(s.exp, np.float64).reshape(-1) for s in states]), axis_angle_to_matrix(pose),
                      np.stack([np.asarray(s.eyelids, np.float64).reshape(2) for s in states]),
                      np.stack([np.asarray(s.r, np.float64) for s in states]),
                      np.stack([np.asarray(s.t, np.float64).reshape(3) for s in states]), kk,
                      (int(image_size[0]), int(image_size[1])), float(fps))


def tracking_glb_bytes(model, states: list, k: np.ndarray, image_size: tuple[int, int], fps: float,
                       pixel_centre: float = K_PIXEL_CENTRE) -> tuple[bytes, dict]:
    """The ``.glb`` of states in memory (``TrackingFLAME`` + ``FrameState`` list + K): what a live
    session serves; the same file ``export_tracking_folder`` writes from the saved frames."""
    return build_tracking_glb(rig_from_tracking_model(model), clip_from_states(states, k, image_size, fps), pixel_centre)


def states_from_frames(frames: list[dict], fps: float) -> ClipStates:
    """``.frame`` dicts (``micalib.tracking.outputs.read_frame``) of frames 0..N-1 -> ``ClipStates``."""
    from micalib.tracking.camera import rotation_6d_to_matrix
    from micalib.tracking.outputs import k_convert

    def stack(block: str, key: str, shape: tuple) -> np.ndarray:
        return np.stack([np.asarray(f[block][key], np.float64).reshape(shape) for f in frames])

    eyes = stack("flame", "eyes", (2, 6))
    rot = np.stack([rotation_6d_to_matrix(stack("flame", "jaw", (6,))),
                    rotation_6d_to_matrix(eyes[:, 0]), rotation_6d_to_matrix(eyes[:, 1])], 1)
    size = tuple(int(x) for x in np.asarray(frames[0]["img_size"]).reshape(2))
    return ClipStates(stack("flame", "exp", (100,)), rot, stack("flame", "eyelids", (2,)),
                      stack("opencv", "R", (3, 3)), stack("opencv", "t", (3,)),
                      np.stack([k_convert(k, "opencv") for k in stack("opencv", "K", (3, 3))]), size, float(fps))


# ---------------------------------------------------------------------------------------------
# maths
# ---------------------------------------------------------------------------------------------
def quaternion(r: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotations -> (..., 4) unit quaternions (x, y, z, w), glTF's order."""
    r = np.asarray(r, np.float64)
    m = r.reshape(-1, 3, 3)
    q = np.empty((len(m), 4))
    tr = np.trace(m, axis1=1, axis2=2)
    for i, a in enumerate(m):
        if tr[i] > 0:
            s = 2.0 * np.sqrt(tr[i] + 1.0)
            q[i] = [(a[2, 1] - a[1, 2]) / s, (a[0, 2] - a[2, 0]) / s, (a[1, 0] - a[0, 1]) / s, 0.25 * s]
        else:
            k = int(np.argmax(np.diag(a)))
            i1, i2 = (k + 1) % 3, (k + 2) % 3
            s = 2.0 * np.sqrt(1.0 + a[k, k] - a[i1, i1] - a[i2, i2])
            v = np.empty(4)
            v[k] = 0.25 * s
            v[i1] = (a[i1, k] + a[k, i1]) / s
            v[i2] = (a[i2, k] + a[k, i2]) / s
            v[3] = (a[i2, i1] - a[i1, i2]) / s
            q[i] = v
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q.reshape(r.shape[:-2] + (4,))


def continuous(q: np.ndarray) -> np.ndarray:
    """(N, 4) quaternions with signs flipped so consecutive ones are on the same hemisphere (the
    shortest slerp between keyframes)."""
    q = np.array(q, np.float64)
    for k in range(1, len(q)):
        if np.dot(q[k], q[k - 1]) < 0:
            q[k] = -q[k]
    return q


def remap_weights(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, T) weights -> (w' in [0, 1] float32, lo (T,), scale (T,)): w = lo + scale x w' (scale 1
    and w' 0 where a weight never changes)."""
    w = np.asarray(w, np.float64)
    lo, hi = w.min(0), w.max(0)
    span = hi - lo
    const = span <= 1e-12 * np.maximum(1.0, np.abs(hi))
    scale = np.where(const, 1.0, span)
    lo = np.where(const, w.mean(0), lo)
    out = np.where(const[None], 0.0, (w - lo) / scale)
    return np.clip(out, 0.0, 1.0).astype(np.float32), lo, scale


def skin_arrays(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FLAME (V,5) weights -> JOINTS_0 (V,4) uint8, WEIGHTS_0 (V,4) float32 over the 4 joints
    (root + neck merged), and the merged (V,4) float64 weights. Non-zero weights first; a zero
    weight's slot names joint 0 (the validator warns about a zero weight on another joint)."""
    w = np.asarray(weights, np.float64)
    merged = np.concatenate([w[:, :2].sum(1, keepdims=True), w[:, 2:5]], 1)
    order = np.argsort(~(merged > 0), axis=1, kind="stable")
    joints = order.astype(np.uint8)
    wts = np.take_along_axis(merged, order, 1)
    joints[wts == 0] = 0
    return joints, wts.astype(np.float32), merged


def joint_positions(rig: FlameRig, exp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 5, 3) FLAME joints at each frame's expression and (5, 3) at zero expression (bind)."""
    j_bind = rig.j_regressor @ rig.base
    j_exp = np.einsum("jv,evc->ejc", rig.j_regressor, rig.expdirs)  # (100, 5, 3)
    return j_bind[None] + np.einsum("ne,ejc->njc", exp, j_exp), j_bind


def pose_features(rotations: np.ndarray) -> np.ndarray:
    """(N, 3, 3, 3) jaw / eye rotations -> (N, 27) FLAME pose features (R - I) row-major."""
    return (rotations - np.eye(3)).reshape(len(rotations), 27)


def eyelid_deviation(rig: FlameRig, clip: ClipStates, merged: np.ndarray) -> float:
    """Largest |sum_j w_j (R_j - I) (eyelids . offsets)| (metres) over frames and vertices: how far
    morphing the eyelids before skinning (glTF) lands from adding them after it (the tracker)."""
    if rig.eyelids is None:
        return 0.0
    moved = np.flatnonzero(np.abs(rig.eyelids).sum((0, 2)) > 0)
    if len(moved) == 0:
        return 0.0
    lid = rig.eyelids[:, moved]  # (2, M, 3)
    w = merged[moved, 1:]  # jaw, eye_l, eye_r
    worst = 0.0
    for k in range(len(clip.exp)):
        off = np.tensordot(clip.eyelids[k], lid, 1)  # (M, 3)
        m = np.einsum("mj,jab->mab", w, clip.rotations[k] - np.eye(3))
        worst = max(worst, float(np.linalg.norm(np.einsum("mab,mb->ma", m, off), axis=1).max()))
    return worst


# ---------------------------------------------------------------------------------------------
# the tracking .glb
# ---------------------------------------------------------------------------------------------
def _targets(rig: FlameRig, clip: ClipStates) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Target names, fields (T, V, 3) and per-frame weights (N, T), before the [0, 1] remapping."""
    names = [f"exp_{i:02d}" for i in range(rig.expdirs.shape[0])]
    fields, weights = [rig.expdirs], [clip.exp[:, : rig.expdirs.shape[0]]]
    if rig.eyelids is not None:
        names += ["eyelid_l", "eyelid_r"]
        fields.append(rig.eyelids)
        weights.append(clip.eyelids)
    names += [f"pose_{p}_{i}" for p in POSE_NAMES for i in range(9)]
    fields.append(rig.posedirs)
    weights.append(pose_features(clip.rotations))
    return names, np.concatenate(fields), np.concatenate(weights, 1)


def _mesh(b: GlbBuilder, rig: FlameRig, clip: ClipStates) -> tuple[dict, np.ndarray, np.ndarray, list[str]]:
    """The skinned, morphing primitive; returns (mesh, remapped weights (N, T), merged skin weights, names)."""
    names, fields, weights = _targets(rig, clip)
    w01, lo, scale = remap_weights(weights)
    base = rig.base + np.tensordot(lo, fields, 1)
    joints, wts, merged = skin_arrays(rig.weights)
    idx_type = np.uint16 if len(base) < 65535 else np.uint32
    attrs = {"POSITION": b.add(base.astype(np.float32), target=ARRAY_BUFFER, minmax=True),
             "JOINTS_0": b.add(joints, target=ARRAY_BUFFER), "WEIGHTS_0": b.add(wts, target=ARRAY_BUFFER)}
    targets = [{"POSITION": b.add((f * s).astype(np.float32), target=ARRAY_BUFFER, minmax=True)}
               for f, s in zip(fields, scale)]
    prim = {"attributes": attrs, "indices": b.add(rig.faces.astype(idx_type).reshape(-1), target=ELEMENT_ARRAY_BUFFER),
            "material": 0, "mode": 4, "targets": targets}
    mesh = {"name": "FLAME", "primitives": [prim], "weights": [float(x) for x in w01[0]],
            "extras": {"targetNames": names}}
    return mesh, w01, merged, names


def _camera(clip: ClipStates, pixel_centre: float) -> dict:
    """The glTF camera of frame 0 with the principal point (and any per-frame K) in ``extras``."""
    h, w = clip.image_size
    shift = 0.5 - pixel_centre  # K's coordinates -> pixel i spans [i, i + 1]

    def intr(k: np.ndarray) -> dict:
        fx, fy, cx, cy = float(k[0, 0]), float(k[1, 1]), float(k[0, 2]) + shift, float(k[1, 2]) + shift
        return {"focal": [fx, fy], "principalPoint": [cx, cy],
                "ndcOffset": [2.0 * cx / w - 1.0, 1.0 - 2.0 * cy / h]}

    k0 = clip.K[0]
    extras = {"imageSize": [w, h], **intr(k0),
              "pixelConvention": "pixel i spans [i, i+1] (centre at i + 0.5)",
              "projection": "x_ndc += ndcOffset[0], y_ndc += ndcOffset[1] (P[0][2] = -ndcOffset[0], P[1][2] = -ndcOffset[1])"}
    if np.abs(clip.K - k0).max() > 1e-6 * max(1.0, float(np.abs(k0).max())):
        extras["perFrame"] = [intr(k) for k in clip.K]
    fx, fy = float(k0[0, 0]), float(k0[1, 1])
    persp = {"yfov": float(2.0 * np.arctan(h / (2.0 * fy))), "aspectRatio": float(w * fy / (h * fx)),
             "znear": ZNEAR, "zfar": ZFAR}
    return {"name": "tracked", "type": "perspective", "perspective": persp, "extras": extras}


def _joint_motion(rig: FlameRig, clip: ClipStates) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Head joint's bind position (3,), local translations (N, 3, 3) and rotations (N, 3, 4) of jaw
    and eyes under it: global T_j = J_j - R_j (J_j - J_bind_j) (see the module docstring)."""
    joints, j_bind = joint_positions(rig, clip.exp)
    head = j_bind[1]
    trans = np.empty((len(clip.exp), 3, 3))
    rot = np.empty((len(clip.exp), 3, 4))
    for i in range(3):
        j = i + 2
        r = clip.rotations[:, i]
        t_glob = joints[:, j] - np.einsum("nab,nb->na", r, joints[:, j] - j_bind[j])
        trans[:, i] = t_glob - head
        rot[:, i] = continuous(quaternion(r))
    return head, trans, rot


def _animation(b: GlbBuilder, clip: ClipStates, w01: np.ndarray, trans: np.ndarray, rot: np.ndarray,
               cam_t: np.ndarray, cam_q: np.ndarray) -> dict:
    n = len(w01)
    times = b.add((np.arange(n) / clip.fps).astype(np.float32), minmax=True)
    samplers, channels = [], []

    def channel(node: int, path: str, data: np.ndarray) -> None:
        samplers.append({"input": times, "output": b.add(data.astype(np.float32)), "interpolation": "LINEAR"})
        channels.append({"sampler": len(samplers) - 1, "target": {"node": node, "path": path}})

    channel(0, "weights", w01.reshape(-1))
    for i in range(3):
        channel(2 + i, "translation", trans[:, i])
        channel(2 + i, "rotation", rot[:, i])
    channel(5, "translation", cam_t)
    channel(5, "rotation", cam_q)
    return {"name": "tracking", "samplers": samplers, "channels": channels}


def build_tracking_glb(rig: FlameRig, clip: ClipStates, pixel_centre: float = K_PIXEL_CENTRE) -> tuple[bytes, dict]:
    """The animated ``.glb`` of a tracked clip (see the module docstring) and a report
    {frames, targets, eyelid_deviation_m, per_frame_intrinsics}."""
    if len(clip.exp) == 0:
        raise ValueError("a clip needs at least one frame")
    b = GlbBuilder()
    mesh, w01, merged, names = _mesh(b, rig, clip)
    head, trans, rot = _joint_motion(rig, clip)
    j_bind = joint_positions(rig, clip.exp[:1])[1]
    ibm = np.tile(np.eye(4), (4, 1, 1))
    for i, j in enumerate((1, 2, 3, 4)):
        ibm[i, :3, 3] = -j_bind[j]
    ibm_acc = b.add(ibm.transpose(0, 2, 1).reshape(4, 16).astype(np.float32))  # column-major
    r_c2w = np.einsum("nba,bc->nac", clip.R, _F)  # R^T F
    cam_t = -np.einsum("nba,nb->na", clip.R, clip.t)
    cam_q = continuous(quaternion(r_c2w))
    anim = _animation(b, clip, w01, trans, rot, cam_t, cam_q)
    nodes = [{"name": "FLAME", "mesh": 0, "skin": 0},
             {"name": "head", "translation": [float(x) for x in head], "children": [2, 3, 4]}]
    nodes += [{"name": JOINT_NAMES[1 + i], "translation": [float(x) for x in trans[0, i]],
               "rotation": [float(x) for x in rot[0, i]]} for i in range(3)]
    nodes.append({"name": "camera", "camera": 0, "translation": [float(x) for x in cam_t[0]],
                  "rotation": [float(x) for x in cam_q[0]]})
    camera = _camera(clip, pixel_centre)
    deviation = eyelid_deviation(rig, clip, merged)
    gltf = {"asset": {"version": "2.0", "generator": "MICA reimplementation (micalib.export.gltf)",
                      "copyright": "contains FLAME model data: FLAME licence, no redistribution"},
            "scene": 0, "scenes": [{"name": "tracking", "nodes": [0, 1, 5],
                                    "extras": {"fps": clip.fps, "frames": len(w01)}}],
            "nodes": nodes, "meshes": [mesh], "cameras": [camera],
            "skins": [{"name": "FLAME", "joints": [1, 2, 3, 4], "skeleton": 1, "inverseBindMatrices": ibm_acc}],
            "materials": [{"name": "skin", "pbrMetallicRoughness": {"baseColorFactor": [0.8, 0.8, 0.8, 1.0],
                                                                   "metallicFactor": 0.0, "roughnessFactor": 0.7}}],
            "animations": [anim]}
    report = {"frames": len(w01), "targets": len(names), "eyelid_deviation_m": deviation,
              "per_frame_intrinsics": "perFrame" in camera["extras"]}
    return b.to_bytes(gltf), report


def log_report(path: Path, report: dict, size: int) -> None:
    """One info line; a warning when the eyelid condition is not met (> 0.01 mm)."""
    dev_mm = report["eyelid_deviation_m"] * 1e3
    logger.info(f"{path}: {report['frames']} frames, {report['targets']} morph targets, {size / 1e6:.1f} MB; "
                f"eyelids (morphed before skinning) deviate from the tracker's mesh by at most {dev_mm:.2g} mm")
    if dev_mm > 0.01:
        logger.warning(f"{path}: the eyelid vertices are skinned to the jaw or eyes, so the file is off the "
                       f"tracker's meshes by up to {dev_mm:.3f} mm")
    if report["per_frame_intrinsics"]:
        logger.info(f"{path}: the intrinsics change per frame (tracker.follow_face): frame 0's are the glTF "
                    f"camera's, every frame's are in the camera's extras.perFrame")


# ---------------------------------------------------------------------------------------------
# folders
# ---------------------------------------------------------------------------------------------
def clip_fps(folder: Path) -> float:
    """The output frame rate of a tracking folder: ``.track_run.json``'s ``fps``, else from
    ``tracking.csv``'s times (frame k at k / fps), else 25."""
    try:
        fps = json.loads((folder / ".track_run.json").read_text()).get("fps")
        if fps:
            return float(fps)
    except (OSError, ValueError, AttributeError):
        pass
    try:
        with open(folder / "tracking.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        if len(rows) > 1 and float(rows[-1]["time_s"]) > 0:
            return round((len(rows) - 1) / float(rows[-1]["time_s"]), 3)
    except (OSError, ValueError, KeyError):
        pass
    return 25.0


def frame_paths(folder: Path) -> list[Path]:
    """The ``checkpoint/*.frame`` files of a tracking folder, sorted; one-line error without any."""
    from micalib.tracking.layout import CHECKPOINT, FRAME_FILES

    paths = sorted(p for p in (Path(folder) / CHECKPOINT).glob("*.frame") if FRAME_FILES[CHECKPOINT].fullmatch(p.name))
    if not paths:
        raise MICAError(f"{folder} holds no checkpoint/NNNNN.frame files; pass a folder track.py wrote (OUT/NAME)")
    return paths


def read_clip(folder: PathLike, fps: float | None = None) -> tuple[ClipStates, np.ndarray]:
    """Every ``checkpoint/NNNNN.frame`` of a tracking folder -> (``ClipStates``, identity (300,))."""
    from micalib.tracking.outputs import frame_name, read_frame

    folder = Path(folder)
    paths = frame_paths(folder)
    missing = [frame_name(k) for k in range(len(paths)) if not (folder / "checkpoint" / f"{frame_name(k)}.frame").is_file()]
    if missing:
        raise MICAError(f"{folder}/checkpoint lacks frame {missing[0]}.frame (frames must run from 00000 without gaps); "
                        f"re-run track.py on it to finish the clip")
    frames = [read_frame(p) for p in paths]
    ident = np.asarray(frames[0]["flame"]["shape"], np.float64).reshape(-1)
    return states_from_frames(frames, clip_fps(folder) if fps is None else fps), ident


def export_tracking_folder(folder: PathLike, flame_model_path: PathLike, eyelid_paths: tuple | None = None,
                           fps: float | None = None, out: PathLike | None = None,
                           pixel_centre: float = K_PIXEL_CENTRE) -> Path:
    """Write ``folder/NAME.glb`` (or ``out``) for a tracking folder ``OUT/NAME``; returns its path.

    Args:
        flame_model_path: the FLAME ``generic_model.pkl`` the clip was tracked with.
        eyelid_paths: (``l_eyelid.npy``, ``r_eyelid.npy``) or None / absent files (no eyelid targets).
        fps: output frame rate (default: the folder's, see ``clip_fps``).
    """
    from micalib.tracking.model import load_eyelids
    from models.flame_io import load_flame_model

    folder = Path(folder)
    clip, ident = read_clip(folder, fps)
    model = load_flame_model(flame_model_path)
    lids = load_eyelids(*eyelid_paths, len(model.v_template)) if eyelid_paths else None
    if lids is None and np.abs(clip.eyelids).max() > 0:
        logger.warning(f"{folder}: the frames have eyelid values but the eyelid blendshapes were not found "
                       f"({eyelid_paths[0] if eyelid_paths else 'none given'}): the .glb lacks the eyelids; "
                       f"set tracker.l_eyelid_path / tracker.r_eyelid_path to the files the clip was tracked with")
    elif lids is None:
        logger.info("no eyelid blendshapes: the .glb has no eyelid targets")
    data, report = build_tracking_glb(rig_from_model(model, ident, lids), clip, pixel_centre)
    path = Path(out) if out is not None else folder / f"{folder.name}.glb"
    atomic_write_bytes(path, data, fsync=False)
    log_report(path, report, len(data))
    return path


def mesh_glb_bytes(vertices_m: np.ndarray, faces: np.ndarray, name: str = "mesh") -> bytes:
    """A static triangle mesh (metres) as a ``.glb``."""
    b = GlbBuilder()
    v = np.asarray(vertices_m, np.float32)
    idx_type = np.uint16 if len(v) < 65535 else np.uint32
    prim = {"attributes": {"POSITION": b.add(v, target=ARRAY_BUFFER, minmax=True)},
            "indices": b.add(np.asarray(faces).astype(idx_type).reshape(-1), target=ELEMENT_ARRAY_BUFFER),
            "material": 0, "mode": 4}
    gltf = {"asset": {"version": "2.0", "generator": "MICA reimplementation (micalib.export.gltf)"},
            "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"name": name, "mesh": 0}],
            "meshes": [{"name": name, "primitives": [prim]}],
            "materials": [{"name": "skin", "pbrMetallicRoughness": {"baseColorFactor": [0.8, 0.8, 0.8, 1.0],
                                                                   "metallicFactor": 0.0, "roughnessFactor": 0.7}}]}
    return b.to_bytes(gltf)


def demo_glb(output_dir: PathLike, overwrite: bool = False) -> list[Path]:
    """``mesh.glb`` (metres) beside every demo ``mesh.ply`` (millimetres) under ``output_dir``
    (``--fuse`` results included); an up-to-date one is kept unless ``overwrite``."""
    from utils.mesh import read_mesh

    written = []
    for ply in sorted(Path(output_dir).rglob("mesh.ply")):
        dst = ply.with_suffix(".glb")
        if not overwrite and dst.is_file() and dst.stat().st_mtime_ns >= ply.stat().st_mtime_ns:
            continue
        v_mm, faces = read_mesh(ply)
        atomic_write_bytes(dst, mesh_glb_bytes(v_mm / 1000.0, faces, ply.parent.name), fsync=False)
        written.append(dst)
    return written


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m micalib.export.gltf",
                                description="A tracking folder (OUT/NAME from track.py) -> OUT/NAME/NAME.glb")
    p.add_argument("folder", help="tracking folder OUT/NAME (holds checkpoint/NNNNN.frame)")
    p.add_argument("-o", "--output", default=None, help="output .glb (default FOLDER/NAME.glb)")
    p.add_argument("--fps", type=float, default=None, help="frame rate (default: the folder's)")
    p.add_argument("--cfg", default="configs/tracker.yml", help="config naming the FLAME and eyelid files")
    p.add_argument("opts", nargs="*", help="KEY VALUE config overrides")
    return p.parse_intermixed_args(argv)


def main(argv=None) -> int:
    from configs.config import load_cfg, resolve_path

    args = parse_args(argv)
    if not Path(args.folder).is_dir():
        raise MICAError(f"{args.folder} is not a folder; pass a tracking folder OUT/NAME")
    frame_paths(Path(args.folder))
    cfg = load_cfg(args.cfg, list(args.opts))
    flame = resolve_path(cfg.model.flame_model_path)
    if not Path(flame).is_file():
        raise MICAError(f"{flame} not found (config key model.flame_model_path); run install.sh --download or set it")
    lids = (resolve_path(cfg.tracker.l_eyelid_path), resolve_path(cfg.tracker.r_eyelid_path))
    path = export_tracking_folder(args.folder, flame, lids, fps=args.fps, out=args.output)
    print(path)
    return 0


if __name__ == "__main__":
    from utils.errors import run_main

    logger.remove()
    logger.add(sys.stderr, format="<level>{level: <8}</level> {message}", level="INFO")
    run_main(main)

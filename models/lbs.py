"""Linear blend skinning for FLAME, as pure functions (no module state, inputs never modified).

Shapes: B batch, V vertices, J joints (5 for FLAME), L blend-shape coefficients, P = 9 (J - 1)
pose-corrective features. Lengths are in the units of the inputs (metres for FLAME).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Contour landmark bins: yaw in whole degrees, |yaw| <= 39 (79 bins).
MAX_YAW_DEG = 39


def batch_rodrigues(rot_vecs: torch.Tensor, epsilon: float = 1e-8) -> torch.Tensor:
    """Axis-angle vectors to rotation matrices.

    Args:
        rot_vecs: (N, 3) axis-angle (radians).
        epsilon: added to the angle before normalising the axis (keeps zero rotations finite).

    Returns:
        (N, 3, 3) rotation matrices.
    """
    n = rot_vecs.shape[0]
    angle = torch.norm(rot_vecs + epsilon, dim=1, keepdim=True)  # (N, 1)
    axis = rot_vecs / angle
    cos = torch.cos(angle)[:, :, None]
    sin = torch.sin(angle)[:, :, None]
    rx, ry, rz = torch.split(axis, 1, dim=1)
    zeros = torch.zeros_like(rx)
    k = torch.cat([zeros, -rz, ry, rz, zeros, -rx, -ry, rx, zeros], dim=1).view(n, 3, 3)
    eye = torch.eye(3, dtype=rot_vecs.dtype, device=rot_vecs.device)[None]
    return eye + sin * k + (1 - cos) * torch.bmm(k, k)


def blend_shapes(betas: torch.Tensor, shapedirs_flat: torch.Tensor) -> torch.Tensor:
    """Per-vertex displacement of blend-shape coefficients, as one matmul.

    Args:
        betas: (B, L) coefficients; L may be smaller than the basis (leading rows are used).
        shapedirs_flat: (L', V*3) basis, L' >= L, row l = the (V, 3) field of coefficient l flattened.

    Returns:
        (B, V, 3) displacements.
    """
    basis = shapedirs_flat[: betas.shape[1]]
    return torch.matmul(betas, basis).view(betas.shape[0], -1, 3)


def vertices2joints(J_regressor: torch.Tensor, vertices: torch.Tensor) -> torch.Tensor:
    """Joint locations regressed from vertices.

    Args:
        J_regressor: (J, V) regressor.
        vertices: (B, V, 3).

    Returns:
        (B, J, 3) joints.
    """
    return torch.einsum("bvc,jv->bjc", vertices, J_regressor)


def _transform_mat(rot: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) rotations and (N, 3, 1) translations -> (N, 4, 4) rigid transforms."""
    top = torch.cat([rot, t], dim=2)
    bottom = torch.zeros_like(top[:, :1, :])
    bottom[:, :, 3] = 1
    return torch.cat([top, bottom], dim=1)


def batch_rigid_transform(rot_mats: torch.Tensor, joints: torch.Tensor,
                          parents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Compose per-joint rotations along the kinematic tree.

    Args:
        rot_mats: (B, J, 3, 3) local rotation of each joint.
        joints: (B, J, 3) rest-pose joint locations.
        parents: (J,) int parent index of each joint, -1 for the root; parents[j] < j.

    Returns:
        posed_joints: (B, J, 3) joint locations after posing.
        rel_transforms: (B, J, 4, 4) transforms taking rest-pose points to posed points.
    """
    b, j = joints.shape[:2]
    rel_joints = joints.clone()
    rel_joints[:, 1:] = joints[:, 1:] - joints[:, parents[1:]]
    local = _transform_mat(rot_mats.reshape(-1, 3, 3), rel_joints.reshape(-1, 3, 1)).view(b, j, 4, 4)
    plist = [int(p) for p in parents.tolist()]  # one host copy, not one per joint
    chain = [local[:, 0]]
    for i in range(1, j):
        chain.append(torch.matmul(chain[plist[i]], local[:, i]))
    transforms = torch.stack(chain, dim=1)  # (B, J, 4, 4)
    posed_joints = transforms[:, :, :3, 3]
    # Remove the rest-pose joint location: T_rel = T [I, -j; 0, 1].
    joints_h = F.pad(joints.unsqueeze(-1), [0, 0, 0, 1])  # (B, J, 4, 1) with last = 0
    rel = transforms - F.pad(torch.matmul(transforms, joints_h), [3, 0, 0, 0, 0, 0, 0, 0])
    return posed_joints, rel


def lbs(betas: torch.Tensor, pose: torch.Tensor, v_template: torch.Tensor, shapedirs_flat: torch.Tensor,
        posedirs: torch.Tensor, J_regressor: torch.Tensor, parents: torch.Tensor,
        lbs_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shape blend shapes, pose correctives and linear blend skinning.

    Args:
        betas: (B, L) shape (+ expression) coefficients.
        pose: (B, J*3) axis-angle per joint (radians).
        v_template: (V, 3) template.
        shapedirs_flat: (L', V*3) blend shapes, L' >= L.
        posedirs: (9 (J-1), V*3) pose correctives; feature = (R_j - I) for joints 1.., row-major.
        J_regressor: (J, V).
        parents: (J,) int, -1 for the root.
        lbs_weights: (V, J) skinning weights.

    Returns:
        vertices: (B, V, 3) posed vertices.
        joints: (B, J, 3) posed joints.
    """
    b = betas.shape[0]
    v_shaped = v_template.unsqueeze(0) + blend_shapes(betas, shapedirs_flat)
    joints = vertices2joints(J_regressor, v_shaped)
    rot_mats = batch_rodrigues(pose.reshape(-1, 3)).view(b, -1, 3, 3)
    eye = torch.eye(3, dtype=pose.dtype, device=pose.device)
    pose_feature = (rot_mats[:, 1:] - eye).reshape(b, -1)
    v_posed = v_shaped + torch.matmul(pose_feature, posedirs).view(b, -1, 3)
    posed_joints, transforms = batch_rigid_transform(rot_mats, joints, parents)
    t = torch.matmul(lbs_weights, transforms.reshape(b, -1, 16)).view(b, -1, 4, 4)  # (B, V, 4, 4)
    verts = torch.matmul(t[:, :, :3, :3], v_posed.unsqueeze(-1)).squeeze(-1) + t[:, :, :3, 3]
    return verts, posed_joints


def vertices2landmarks(vertices: torch.Tensor, faces: torch.Tensor, lmk_faces_idx: torch.Tensor,
                       lmk_bary_coords: torch.Tensor) -> torch.Tensor:
    """Landmarks as barycentric interpolation of the 3 vertices of their triangle.

    Args:
        vertices: (B, V, 3).
        faces: (F, 3) int triangles.
        lmk_faces_idx: (B, L) or (L,) int triangle of each landmark.
        lmk_bary_coords: (B, L, 3) or (L, 3) barycentric coordinates.

    Returns:
        (B, L, 3) landmarks.
    """
    b = vertices.shape[0]
    if lmk_faces_idx.dim() == 1:
        lmk_faces_idx = lmk_faces_idx.unsqueeze(0).expand(b, -1)
    if lmk_bary_coords.dim() == 2:
        lmk_bary_coords = lmk_bary_coords.unsqueeze(0).expand(b, -1, -1)
    vidx = faces[lmk_faces_idx]  # (B, L, 3)
    batch = torch.arange(b, device=vertices.device).view(b, 1, 1)
    tri = vertices[batch, vidx]  # (B, L, 3 corners, 3 xyz)
    return torch.einsum("blkc,blk->blc", tri, lmk_bary_coords.to(vertices.dtype))


def yaw_bin(rel_rot: torch.Tensor) -> torch.Tensor:
    """Contour bin (0..78) of a head rotation, as the original FLAME code computes it.

    yaw = atan2(-R[2,0], sqrt(R[0,0]^2 + R[1,0]^2)); a = round(clamp(-yaw in degrees, max=39));
    bin = a for a >= 0, 39 - a for -39 <= a < 0, 78 below -39.

    Args:
        rel_rot: (B, 3, 3) rotation accumulated along the neck chain.

    Returns:
        (B,) int64 row index into the dynamic landmark tables.
    """
    yaw = torch.atan2(-rel_rot[:, 2, 0], torch.sqrt(rel_rot[:, 0, 0] ** 2 + rel_rot[:, 1, 0] ** 2))
    angle = torch.round(torch.clamp(-yaw * 180.0 / math.pi, max=MAX_YAW_DEG)).to(torch.long)
    neg = 39 - angle
    neg = torch.where(angle < -MAX_YAW_DEG, torch.full_like(angle, 2 * MAX_YAW_DEG), neg)
    return torch.where(angle < 0, neg, angle)


def find_dynamic_lmk_idx_and_bcoords(full_pose: torch.Tensor, dynamic_lmk_faces_idx: torch.Tensor,
                                     dynamic_lmk_bary_coords: torch.Tensor,
                                     neck_kin_chain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Contour landmarks chosen by the head's yaw.

    The rotation along the chain (neck, then root) is composed as rel = R_root @ R_neck, and its
    yaw picks a row of the dynamic tables (see ``yaw_bin``).

    Args:
        full_pose: (B, J*3) axis-angle pose.
        dynamic_lmk_faces_idx: (79, K) int triangles per yaw bin.
        dynamic_lmk_bary_coords: (79, K, 3).
        neck_kin_chain: (C,) int joints from the neck up to the root.

    Returns:
        faces_idx: (B, K) int64; bary_coords: (B, K, 3).
    """
    b = full_pose.shape[0]
    aa = full_pose.view(b, -1, 3)[:, neck_kin_chain]  # (B, C, 3)
    rots = batch_rodrigues(aa.reshape(-1, 3)).view(b, -1, 3, 3)
    rel = torch.eye(3, dtype=full_pose.dtype, device=full_pose.device).expand(b, 3, 3)
    for i in range(rots.shape[1]):
        rel = torch.matmul(rots[:, i], rel)
    idx = yaw_bin(rel)
    return dynamic_lmk_faces_idx[idx].long(), dynamic_lmk_bary_coords[idx]

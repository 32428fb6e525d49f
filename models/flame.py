"""The FLAME 2020 head model as a stateless PyTorch layer (MICA's decoder).

Built from parsed arrays (``FlameModelData`` + ``LandmarkEmbedding`` from ``models.flame_io``),
so tests can use a synthetic model. All outputs are in metres; ``M_TO_MM`` converts to the
millimetres MICA writes. The buffers follow ``.to(device, dtype)``; they are non-persistent (the
layer's ``state_dict`` is empty, it is always rebuilt from the FLAME files), and
``mica_buffers()`` gives them in the layout of the official ``mica.tar`` (``generator.*``).
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from models.flame_io import FlameModelData, LandmarkEmbedding, load_flame_model, load_landmark_embedding
from models.lbs import find_dynamic_lmk_idx_and_bcoords, lbs, vertices2landmarks

PathLike = str | os.PathLike

# The 7 NoW landmarks, as indices into the 51 inner (static) landmarks.
NOW_LANDMARK_IDX = (19, 22, 25, 28, 16, 31, 37)
# Metres (FLAME) to millimetres (MICA's files).
M_TO_MM = 1000.0
NECK_IDX = 1


def to_millimetres(x: torch.Tensor) -> torch.Tensor:
    """Metres -> millimetres (a new tensor)."""
    return x * M_TO_MM


@dataclass
class FLAMEOutput:
    """Result of ``FLAME.forward`` (metres).

    Attributes:
        vertices: (B, V, 3).
        joints: (B, 5, 3) posed joints (root, neck, jaw, left eye, right eye).
        landmarks68: (B, 68, 3) 17 pose-dependent contour landmarks then the 51 inner ones (iBUG).
        landmarks7: (B, 7, 3) the NoW landmarks.
    """

    vertices: torch.Tensor
    joints: torch.Tensor
    landmarks68: torch.Tensor
    landmarks7: torch.Tensor

    def __getitem__(self, key: str) -> torch.Tensor:
        return getattr(self, key)

    def keys(self) -> Iterator[str]:
        return iter(f.name for f in fields(self))

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        return iter((k, getattr(self, k)) for k in self.keys())


class FLAME(nn.Module):
    """FLAME layer: identity/expression coefficients and pose -> vertices, joints, landmarks.

    Args:
        model: parsed ``generic_model.pkl``.
        embedding: parsed ``landmark_embedding.npy``.
        n_shape: identity coefficients used (<= 300).
        n_exp: expression coefficients used (<= 100).
        dtype: floating dtype of the buffers (``.to()`` changes it later).

    Buffers (all non-persistent): ``faces (F,3) long``, ``v_template (V,3)``,
    ``shapedirs (n_shape+n_exp, V*3)`` (one matmul per decode), ``posedirs (36, V*3)``,
    ``J_regressor (5,V)``, ``parents (5,) long``, ``lbs_weights (V,5)``, static / dynamic / full
    landmark tables and ``neck_kin_chain (2,) long`` (= [neck, root]).
    """

    NUM_JOINTS = 5
    SHAPE_SPACE_DIM = 300
    EXPRESSION_SPACE_DIM = 100
    POSE_DIM = 15  # global, neck, jaw, left eye, right eye (axis-angle)
    MICA_POSE_DIM = 6  # global + jaw

    def __init__(self, model: FlameModelData, embedding: LandmarkEmbedding, n_shape: int = 300,
                 n_exp: int = 100, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if not 1 <= n_shape <= self.SHAPE_SPACE_DIM:
            raise ValueError(f"n_shape must be in 1..{self.SHAPE_SPACE_DIM}, not {n_shape}")
        if not 0 <= n_exp <= self.EXPRESSION_SPACE_DIM:
            raise ValueError(f"n_exp must be in 0..{self.EXPRESSION_SPACE_DIM}, not {n_exp}")
        self.n_shape, self.n_exp = int(n_shape), int(n_exp)
        n_v = model.n_vertices

        def buf(name: str, array: Any, dt: torch.dtype = dtype) -> None:
            self.register_buffer(name, torch.as_tensor(np.ascontiguousarray(array)).to(dt), persistent=False)

        sd = np.concatenate([model.shapedirs[:, :, :n_shape],
                             model.shapedirs[:, :, self.SHAPE_SPACE_DIM:self.SHAPE_SPACE_DIM + n_exp]], axis=2)
        buf("faces", model.faces, torch.long)
        buf("v_template", model.v_template)
        buf("shapedirs", sd.reshape(n_v * 3, -1).T)
        buf("posedirs", model.posedirs.reshape(n_v * 3, -1).T)
        buf("J_regressor", model.J_regressor)
        buf("parents", model.parents, torch.long)
        buf("lbs_weights", model.weights)
        buf("lmk_faces_idx", embedding.static_lmk_faces_idx, torch.long)
        buf("lmk_bary_coords", embedding.static_lmk_bary_coords)
        buf("dynamic_lmk_faces_idx", embedding.dynamic_lmk_faces_idx, torch.long)
        buf("dynamic_lmk_bary_coords", embedding.dynamic_lmk_bary_coords)
        buf("full_lmk_faces_idx", embedding.full_lmk_faces_idx.reshape(-1), torch.long)
        buf("full_lmk_bary_coords", embedding.full_lmk_bary_coords.reshape(-1, 3))
        now = list(NOW_LANDMARK_IDX)
        buf("lmk7_faces_idx", embedding.static_lmk_faces_idx[now], torch.long)
        buf("lmk7_bary_coords", embedding.static_lmk_bary_coords[now])
        chain, j = [], NECK_IDX
        while j != -1:
            chain.append(j)
            j = int(model.parents[j])
        buf("neck_kin_chain", np.asarray(chain), torch.long)

    # -----------------------------------------------------------------------------------------
    @classmethod
    def from_files(cls, model_path: PathLike, lmk_path: PathLike, n_shape: int = 300,
                   n_exp: int = 100) -> FLAME:
        """Build from ``generic_model.pkl`` and ``landmark_embedding.npy`` (safe loaders; the
        embedding's triangle indices are checked against the model's triangle count)."""
        model = load_flame_model(model_path)
        return cls(model, load_landmark_embedding(lmk_path, n_faces=len(model.faces)), n_shape, n_exp)

    @classmethod
    def from_config(cls, cfg: Any) -> FLAME:
        """Build from ``cfg.model.flame_model_path``, ``flame_lmk_embedding_path``, ``n_shape``, ``n_exp``."""
        from configs.config import resolve_path

        return cls.from_files(resolve_path(cfg.model.flame_model_path),
                              resolve_path(cfg.model.flame_lmk_embedding_path),
                              n_shape=int(cfg.model.n_shape), n_exp=int(cfg.model.n_exp))

    @property
    def n_vertices(self) -> int:
        return int(self.v_template.shape[0])

    def extra_repr(self) -> str:
        return (f"n_vertices={self.n_vertices}, n_faces={self.faces.shape[0]}, "
                f"n_shape={self.n_shape}, n_exp={self.n_exp}")

    # -----------------------------------------------------------------------------------------
    def _check_shape(self, shape: torch.Tensor) -> torch.Tensor:
        if shape.dim() != 2 or shape.shape[1] > self.n_shape:
            raise ValueError(f"shape must be (B, k) with k <= {self.n_shape}, got {tuple(shape.shape)}")
        return shape.to(self.v_template.dtype)

    def canonical(self, shape: torch.Tensor) -> torch.Tensor:
        """Identity mesh without expression or pose: v_template + shape @ shapedirs (no skinning).

        Args:
            shape: (B, k) identity coefficients, k <= n_shape (missing ones are zero).

        Returns:
            (B, V, 3) vertices in metres; equals ``forward(shape).vertices`` at zero pose.
        """
        shape = self._check_shape(shape)
        flat = torch.addmm(self.v_template.view(1, -1), shape, self.shapedirs[: shape.shape[1]])
        return flat.view(shape.shape[0], -1, 3)

    def _full_pose(self, b: int, pose: torch.Tensor | None, full_pose: torch.Tensor | None) -> torch.Tensor:
        dt, dev = self.v_template.dtype, self.v_template.device
        if pose is not None and full_pose is not None:
            raise ValueError("give either pose (B, 6: global + jaw) or full_pose (B, 15), not both")
        if full_pose is not None:
            if tuple(full_pose.shape) != (b, self.POSE_DIM):
                raise ValueError(f"full_pose must be ({b}, {self.POSE_DIM}), got {tuple(full_pose.shape)}")
            return full_pose.to(dt)
        if pose is None:
            return torch.zeros(b, self.POSE_DIM, dtype=dt, device=dev)
        if tuple(pose.shape) != (b, self.MICA_POSE_DIM):
            raise ValueError(f"pose must be ({b}, {self.MICA_POSE_DIM}) (global + jaw), got {tuple(pose.shape)}")
        pose = pose.to(dt)
        zeros = torch.zeros(b, 3, dtype=dt, device=dev)
        return torch.cat([pose[:, :3], zeros, pose[:, 3:], zeros, zeros], dim=1)

    def forward(self, shape: torch.Tensor, expression: torch.Tensor | None = None,
                pose: torch.Tensor | None = None, full_pose: torch.Tensor | None = None) -> FLAMEOutput:
        """Full FLAME: blend shapes, pose correctives, skinning, landmarks.

        Args:
            shape: (B, k) identity coefficients, k <= n_shape (missing ones are zero).
            expression: (B, e) expression coefficients, e <= n_exp; None = zeros.
            pose: (B, 6) MICA pose (global, jaw axis-angle); neck and eyes are zero.
            full_pose: (B, 15) global, neck, jaw, left eye, right eye (exclusive with ``pose``).

        Returns:
            ``FLAMEOutput`` in metres.
        """
        shape = self._check_shape(shape)
        b, dt = shape.shape[0], shape.dtype
        betas = shape
        if expression is not None:
            if expression.dim() != 2 or expression.shape[0] != b or expression.shape[1] > self.n_exp:
                raise ValueError(f"expression must be ({b}, e) with e <= {self.n_exp}, got {tuple(expression.shape)}")
            pad = shape.new_zeros(b, self.n_shape - shape.shape[1])
            betas = torch.cat([shape, pad, expression.to(dt)], dim=1)
        fp = self._full_pose(b, pose, full_pose)
        verts, joints = lbs(betas, fp, self.v_template, self.shapedirs, self.posedirs,
                            self.J_regressor, self.parents, self.lbs_weights)
        dyn_idx, dyn_bary = find_dynamic_lmk_idx_and_bcoords(fp, self.dynamic_lmk_faces_idx,
                                                             self.dynamic_lmk_bary_coords, self.neck_kin_chain)
        idx = torch.cat([dyn_idx, self.lmk_faces_idx.unsqueeze(0).expand(b, -1)], dim=1)
        bary = torch.cat([dyn_bary, self.lmk_bary_coords.unsqueeze(0).expand(b, -1, -1)], dim=1)
        lmk68 = vertices2landmarks(verts, self.faces, idx, bary)
        return FLAMEOutput(vertices=verts, joints=joints, landmarks68=lmk68,
                           landmarks7=lmk68[:, 17:][:, list(NOW_LANDMARK_IDX)])

    def landmarks68(self, vertices: torch.Tensor) -> torch.Tensor:
        """(B, V, 3) -> (B, 68, 3): the static "full" 68 landmarks (MICA's ``kpt68``), same units."""
        return vertices2landmarks(vertices, self.faces, self.full_lmk_faces_idx, self.full_lmk_bary_coords)

    def landmarks7(self, vertices: torch.Tensor) -> torch.Tensor:
        """(B, V, 3) -> (B, 7, 3): the NoW landmarks (inner 51 at ``NOW_LANDMARK_IDX``), same units."""
        return vertices2landmarks(vertices, self.faces, self.lmk7_faces_idx, self.lmk7_bary_coords)

    def decode_identity(self, identity: torch.Tensor) -> dict[str, torch.Tensor]:
        """The one decode of an identity: ``identity (B, k)`` -> ``{identity, vertices (B, V, 3),
        landmarks68 (B, 68, 3), landmarks7 (B, 7, 3)}`` of the canonical (zero pose and expression)
        mesh, metres; what ``MICA.decode`` and ``Predictor.decode`` return."""
        vertices = self.canonical(identity)
        return {
            "identity": identity,
            "vertices": vertices,
            "landmarks68": self.landmarks68(vertices),
            "landmarks7": self.landmarks7(vertices),
        }

    # -----------------------------------------------------------------------------------------
    def mica_buffers(self) -> dict[str, torch.Tensor]:
        """The FLAME tensors as ``mica.tar`` stores them under ``flameModel['generator.<name>']``.

        Names and layouts (V vertices, F faces, L = n_shape + n_exp), float in the buffers' dtype:
        ``faces_tensor (F,3) long``, ``v_template (V,3)``, ``shapedirs (V,3,L)``,
        ``posedirs (36, V*3)``, ``J_regressor (5,V)``, ``parents (5,) long``, ``lbs_weights (V,5)``,
        ``lmk_faces_idx (51,) long``, ``lmk_bary_coords (51,3)``, ``dynamic_lmk_faces_idx (79,17) long``,
        ``dynamic_lmk_bary_coords (79,17,3)``, ``full_lmk_faces_idx (1,68) long``,
        ``full_lmk_bary_coords (1,68,3)``, ``neck_kin_chain (2,) long``, ``eye_pose (1,6)`` zeros,
        ``neck_pose (1,3)`` zeros. Returned tensors are fresh copies.
        """
        v = self.n_vertices
        dt, dev = self.v_template.dtype, self.v_template.device
        return {
            "faces_tensor": self.faces.clone(),
            "v_template": self.v_template.clone(),
            "shapedirs": self.shapedirs.view(-1, v, 3).permute(1, 2, 0).contiguous(),
            "posedirs": self.posedirs.clone(),
            "J_regressor": self.J_regressor.clone(),
            "parents": self.parents.clone(),
            "lbs_weights": self.lbs_weights.clone(),
            "lmk_faces_idx": self.lmk_faces_idx.clone(),
            "lmk_bary_coords": self.lmk_bary_coords.clone(),
            "dynamic_lmk_faces_idx": self.dynamic_lmk_faces_idx.clone(),
            "dynamic_lmk_bary_coords": self.dynamic_lmk_bary_coords.clone(),
            "full_lmk_faces_idx": self.full_lmk_faces_idx.view(1, -1).clone(),
            "full_lmk_bary_coords": self.full_lmk_bary_coords.view(1, -1, 3).clone(),
            "neck_kin_chain": self.neck_kin_chain.clone(),
            "eye_pose": torch.zeros(1, 6, dtype=dt, device=dev),
            "neck_pose": torch.zeros(1, 3, dtype=dt, device=dev),
        }

"""The MICA network: ArcFace encoder + mapping network + FLAME (canonical identity shape).

``images (B, 3, 112, 112)`` in [-1, 1] --ArcFace--> ``(B, 512)`` L2-normalised identity code
--mapping network--> ``(B, n_shape)`` FLAME shape coefficients --FLAME (zero expression and pose)-->
``(B, V, 3)`` vertices in metres, plus 68 and 7 landmarks.

Module names match the official checkpoint: ``arcface`` <- ``mica.tar['arcface']``, ``regressor``
<- ``mica.tar['flameModel']['regressor.*']``; ``flame`` is built from the user's FLAME files (the
checkpoint's ``generator.*`` copy is only compared with it). Device and dtype follow the inputs
and the module's parameters; the caller chooses precision (``utils.device.autocast``); ``decode``
always runs the mapping network and FLAME in float32.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from loguru import logger
from torch import nn

from models.arcface import EMBEDDING_DIM, IResNet, create_arcface, freeze_for_mica
from models.mapping import MappingNetwork
from utils import checkpoint as ckpt
from utils.errors import UserFileNotFound

__all__ = ["MICA", "ImageToShape", "MAPPING_HIDDEN"]

# Width of the mapping network's hidden layers (fixed in MICA).
MAPPING_HIDDEN = 300


class ImageToShape(nn.Module):
    """``images (B, 3, 112, 112) -> (B, n_shape)`` FLAME shape coefficients (the exportable part)."""

    def __init__(self, arcface: nn.Module, regressor: nn.Module) -> None:
        super().__init__()
        self.arcface = arcface
        self.regressor = regressor

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.regressor(F.normalize(self.arcface(images), dim=1))


class MICA(nn.Module):
    """ArcFace + mapping network + FLAME.

    Args:
        arcface: IResNet backbone (frozen as MICA does when ``freeze`` is True).
        regressor: mapping network, 512 -> n_shape.
        flame: ``models.flame.FLAME`` (``canonical``, ``landmarks68``, ``landmarks7``); may be None
            for encode-only use (export), then ``decode`` raises.
        freeze: apply :func:`models.arcface.freeze_for_mica` (stem and layer1..3 frozen).
        freeze_bn: also keep the frozen stages' BatchNorm in eval mode during training (unlike
            MICA; see :func:`models.arcface.freeze_for_mica`).
    """

    def __init__(self, arcface: IResNet, regressor: MappingNetwork, flame: nn.Module | None = None,
                 freeze: bool = True, freeze_bn: bool = False) -> None:
        super().__init__()
        self.arcface = freeze_for_mica(arcface, freeze_bn=freeze_bn) if freeze else arcface
        self.regressor = regressor
        self.flame = flame
        if flame is not None:
            flame.eval()

    @property
    def n_shape(self) -> int:
        return self.regressor.out_dim

    def train(self, mode: bool = True) -> MICA:
        """Train mode for the networks; FLAME always stays in eval mode."""
        super().train(mode)
        if self.flame is not None:
            self.flame.eval()
        return self

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, 112, 112)`` RGB in [-1, 1] -> ``(B, 512)`` L2-normalised identity code."""
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, 112, 112):
            raise ValueError(f"MICA expects images of shape (B, 3, 112, 112), got {tuple(images.shape)}")
        return F.normalize(self.arcface(images), dim=1)

    def identity(self, code: torch.Tensor) -> torch.Tensor:
        """``(B, 512)`` ArcFace code -> ``(B, n_shape)`` ``identity``: FLAME shape coefficients (float32)."""
        if code.is_floating_point() and code.dtype != torch.float32:
            code = code.float()
        with torch.autocast(device_type=code.device.type, enabled=False):
            return self.regressor(code)

    def decode(self, code: torch.Tensor) -> dict[str, torch.Tensor]:
        """Identity code -> FLAME.

        Args:
            code: ``(B, 512)`` L2-normalised identity code.

        Returns:
            dict with ``identity (B, n_shape)``, ``vertices (B, V, 3)`` metres,
            ``landmarks68 (B, 68, 3)`` and ``landmarks7 (B, 7, 3)`` metres.
        """
        if self.flame is None:
            raise RuntimeError("MICA was built without FLAME (encode-only); build it with FLAME to decode")
        identity = self.identity(code)
        with torch.autocast(device_type=identity.device.type, enabled=False):
            return self.decode_identity(identity)

    def decode_identity(self, identity: torch.Tensor) -> dict[str, torch.Tensor]:
        """``identity`` (FLAME shape coefficients) ``(B, n_shape)`` -> vertices and landmarks (metres), float32."""
        if self.flame is None:
            raise RuntimeError("MICA was built without FLAME (encode-only); build it with FLAME to decode")
        return self.flame.decode_identity(identity)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``encode`` then ``decode``; the dict also holds the identity ``code (B, 512)``."""
        code = self.encode(images)
        out = self.decode(code)
        out["code"] = code
        return out

    def image_to_shape(self) -> ImageToShape:
        """The image -> shape-coefficients network (shares weights with this model)."""
        return ImageToShape(self.arcface, self.regressor)

    # ----------------------------------------------------------------------------------------
    # Checkpoints
    # ----------------------------------------------------------------------------------------
    def load_checkpoint(self, path: str | Path) -> dict[str, Any]:
        """Load ``mica.tar`` weights (strict, one-line errors); returns its extra training state."""
        data = ckpt.load_mica_checkpoint(path)
        ckpt.load_arcface_into(self.arcface, data["arcface"], f"MICA checkpoint {path} 'arcface'")
        ckpt.load_regressor_into(self.regressor, data["regressor"], f"MICA checkpoint {path} 'regressor'")
        ckpt.check_flame_template(data["generator"], self.flame, f"MICA checkpoint {path}")
        logger.info(f"loaded MICA weights from {path}")
        return data["extra"]

    def load_arcface_backbone(self, path: str | Path) -> None:
        """Initialise ArcFace from an insightface arcface_torch ``backbone.pth`` (strict)."""
        state = ckpt.load_arcface_backbone(path)
        ckpt.load_arcface_into(self.arcface, state, f"ArcFace backbone {path}")
        logger.info(f"initialised ArcFace from {path}")

    def save_checkpoint(self, path: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
        """Write ``mica.tar`` format (atomic), FLAME buffers included when FLAME is present."""
        return ckpt.save_mica_checkpoint(path, self.arcface, self.regressor, self.flame, extra)

    @classmethod
    def from_config(cls, cfg, device: str | torch.device | None = None, with_flame: bool = True,
                    checkpoint: str | Path | None = None, load_weights: bool = True) -> MICA:
        """Build from the config and load weights.

        Weights: ``checkpoint`` if given; else ``cfg.pretrained_model_path`` when
        ``cfg.model.use_pretrained``; else ArcFace from ``cfg.model.arcface_pretrained_model``
        (training from scratch; the mapping network keeps its initialisation).

        Args:
            cfg: the yacs config (``configs.config.load_cfg``).
            device: target device; None = ``cfg.device`` resolved.
            with_flame: build FLAME from ``cfg.model.flame_model_path`` (False for export).
            checkpoint: a mica.tar overriding the config.
            load_weights: False leaves the initialisation (and says nothing): the caller loads the
                weights itself (the trainer resuming a checkpoint).

        Raises:
            FileNotFoundError, MICAError: a named weight or FLAME file is missing or unusable.
        """
        from configs.config import resolve_path
        from utils.device import resolve_device

        dev = resolve_device(cfg.device) if device is None else torch.device(device)
        arcface = create_arcface(cfg.model.arch)
        regressor = MappingNetwork(EMBEDDING_DIM, MAPPING_HIDDEN, cfg.model.mapping_layers, cfg.model.n_shape)
        flame = None
        if with_flame:
            from models.flame import FLAME

            flame = FLAME.from_files(resolve_path(cfg.model.flame_model_path),
                                     resolve_path(cfg.model.flame_lmk_embedding_path),
                                     n_shape=cfg.model.n_shape, n_exp=cfg.model.n_exp)
        model = cls(arcface, regressor, flame, freeze_bn=bool(cfg.model.freeze_bn))
        if not load_weights:
            return model.to(dev)
        weights = checkpoint or (cfg.pretrained_model_path if cfg.model.use_pretrained else "")
        if weights:
            path = resolve_path(str(weights))
            if not path.is_file():
                raise UserFileNotFound(f"MICA checkpoint {path} not found (download mica.tar, see data/README.md, "
                                        f"or pass it with -m/--model or set pretrained_model_path)")
            model.load_checkpoint(path)
        elif cfg.model.arcface_pretrained_model:
            path = resolve_path(cfg.model.arcface_pretrained_model)
            if not path.is_file():
                raise UserFileNotFound(f"ArcFace backbone {path} not found (training from scratch needs insightface's "
                                        f"backbone.pth: set model.arcface_pretrained_model, or start from a MICA "
                                        f"checkpoint with -m/--model)")
            model.load_arcface_backbone(path)
        else:
            logger.warning("no weights configured (pretrained_model_path / model.arcface_pretrained_model): "
                           "MICA starts from random weights")
        return model.to(dev)

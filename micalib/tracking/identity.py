"""The tracked person's identity: MICA's ``identity.npy`` read and checked (``load_identity``), or
computed by MICA from several frames and averaged (``mica_identity``, as ``demo.py --fuse``).
Used by the offline runner and the live tracker."""
from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from loguru import logger

from utils.errors import MICAError


def load_identity(path) -> np.ndarray:
    """(300,) float32 from MICA's ``identity.npy``; one line naming the file when it is not one."""
    try:
        ident = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise MICAError(f"identity {path} is not a readable .npy ({str(e)[:80]}); pass MICA's identity.npy") from None
    if tuple(np.shape(ident)) not in ((300,), (1, 300)):
        raise MICAError(f"identity {path} has shape {tuple(np.shape(ident))}, not MICA's (300,) "
                        "coefficients; pass MICA's identity.npy")
    ident = np.asarray(ident, np.float32).reshape(-1)
    if not np.isfinite(ident).all():
        raise MICAError(f"identity {path} holds non-finite values (NaN/inf); pass MICA's identity.npy")
    return ident


def mica_loader(cfg, device: str) -> Callable[[], tuple]:
    """() -> (MICA predictor, face detector) from the config, loaded only when called (a run with
    ``--identity`` loads no weights)."""
    def load():
        from configs.config import resolve_path
        from micalib.predictor import Predictor
        from models.detectors import create_detector

        predictor = Predictor.from_config(cfg, device=device)
        detector = create_detector(cfg.detector.name, antelopev2_dir=resolve_path(cfg.detector.antelopev2_dir),
                                   det_size=tuple(cfg.detector.det_size), threshold=cfg.detector.threshold,
                                   mtcnn_max_side=cfg.detector.mtcnn_max_side)
        return predictor, detector

    return load


def mica_identity(predictor, detector, frames: Iterable[tuple[int, np.ndarray]], where: str) -> np.ndarray:
    """MICA on every (frame number, RGB) of ``frames`` with a face, averaged (``demo.py --fuse``);
    ``where`` names the input in the error when no frame has a face."""
    from models.face_prep import detect_and_align

    inputs = []
    for k, rgb in frames:
        try:
            inputs.append(detect_and_align(rgb, detector, source=f"frame {k}")[0].input112)
        except MICAError:
            continue
    if not inputs:
        raise MICAError(f"MICA found no face in the frames of {where}; pass --identity identity.npy")
    codes = predictor.predict_identity(np.stack(inputs))
    logger.info(f"identity: MICA fused over {len(inputs)} frames")
    return codes.mean(0)

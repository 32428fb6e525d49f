"""The tracked person's identity computed by MICA from several frames and averaged
(``mica_identity``, as ``demo.py --fuse``), and MICA + detector loaded only when needed
(``mica_loader``); a given ``identity.npy`` is read by ``utils.identity.read_identity``.
Used by the offline runner and the live tracker."""
from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from loguru import logger

from utils.errors import MICAError


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

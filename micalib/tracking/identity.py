"""The tracked person's identity computed by MICA from several frames and averaged
(``mica_identity``, as ``demo.py --fuse``; MICA + detector come from ``micalib.predictor.mica_loader``,
loaded only when needed); a given ``identity.npy`` is read by ``utils.identity.read_identity``.
Used by the offline runner and the live tracker."""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from loguru import logger

from utils.errors import MICAError


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

"""models/masks.py: per-vertex loss weights by hand and on the real masks."""
from __future__ import annotations

import numpy as np
import pytest

from configs.config import load_cfg
from models.flame_io import load_flame_masks
from models.masks import from_config, vertex_weights
from utils.errors import MICAError

TOY = {"left_eyeball": np.array([0, 1]), "right_eyeball": np.array([2]), "left_ear": np.array([3, 4]),
       "right_ear": np.array([5]), "face": np.array([1, 4, 6]), "nose": np.array([7])}


def test_weights_by_hand():
    # whole 1 -> eyes 0.01 on 0,1,2 -> ears 0.01 on 3,4,5 -> face 150 on 1,4,6 (wins); 7 stays 1.
    expected = np.array([0.01, 150, 0.01, 0.01, 150, 0.01, 150, 1], dtype=np.float32)
    np.testing.assert_array_equal(vertex_weights(TOY, 8), expected)


def test_custom_weights_and_order():
    w = vertex_weights(TOY, 8, {"whole": 2.0, "eyes": 3.0, "ears": 4.0, "face": 5.0, "nose": 50.0})
    np.testing.assert_array_equal(w, [3, 5, 3, 4, 5, 4, 5, 2])


def test_errors():
    with pytest.raises(MICAError, match="right_ear"):
        vertex_weights({k: v for k, v in TOY.items() if k != "right_ear"}, 8)
    with pytest.raises(MICAError, match="vertices"):
        vertex_weights(TOY, 5)


@pytest.mark.shared_data
def test_real_masks_weights(flame_public_dir):
    masks = load_flame_masks(flame_public_dir / "FLAME_masks.pkl")
    w = vertex_weights(masks, 5023)
    face = set(masks["face"].tolist())
    low = (set(masks["left_eyeball"].tolist()) | set(masks["right_eyeball"].tolist())
           | set(masks["left_ear"].tolist()) | set(masks["right_ear"].tolist())) - face
    assert (w == 150).sum() == len(face) == 1787
    assert (w == np.float32(0.01)).sum() == len(low)
    assert (w == 1).sum() == 5023 - len(face) - len(low)


def test_from_config(synthetic_flame_dir):
    path = str(synthetic_flame_dir / "FLAME_masks.pkl")
    masks = load_flame_masks(path)
    n_v = int(max(v.max() for v in masks.values())) + 1
    cfg = load_cfg(None, ["model.flame_masks_path", path, "train.use_mask", "True", "mask_weights.face", "7.0"])
    w = from_config(cfg, n_v)
    assert set(np.unique(w[masks["face"]]).tolist()) == {7.0}
    cfg_off = load_cfg(None, ["model.flame_masks_path", path, "train.use_mask", "False"])
    np.testing.assert_array_equal(from_config(cfg_off, n_v), np.ones(n_v, dtype=np.float32))

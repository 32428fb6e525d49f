"""The previews moved from the numpy rasteriser (now ``tests/numpy_renderer.py``) to the torch one
(``micalib.render.raster``): the demo's ``render.png`` and the training image grids change by at most
1% of their pixels (issue 20: the only change the move may make)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from micalib.engine.hooks import VIS_SIZE, VisualizationHook
from micalib.render.preview import fit_camera, make_grid, render_preview
from tests import numpy_renderer as reference

MAX_CHANGED = 0.01


def _changed(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    return float((a != b).any(axis=-1).mean())


@pytest.fixture(scope="module")
def flame_meshes(synthetic_flame_dir):
    """Three identities of the synthetic FLAME (millimetres) and its faces."""
    from models.flame import FLAME

    d = synthetic_flame_dir
    flame = FLAME.from_files(d / "generic_model.pkl", d / "landmark_embedding.npy", 300, 100)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        verts = flame.canonical(torch.randn(3, 300, generator=gen) * 1.5) * 1000.0
    return verts.numpy(), flame.faces.numpy()


def test_render_png_changes_at_most_one_percent(flame_meshes):
    verts, faces = flame_meshes
    crop = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    for v in verts:
        new, old = render_preview(v, faces, crop), reference.render_preview(v, faces, crop)
        assert (new != 255).any(axis=-1)[:, 256:].mean() > 0.1  # a mesh was drawn in both views
        assert _changed(new, old) <= MAX_CHANGED


def test_training_grid_changes_at_most_one_percent(flame_meshes):
    verts, faces = flame_meshes
    images = torch.rand(2, 3, 112, 112) * 2 - 1
    batch = {"images": images, "pred": torch.as_tensor(verts[:2] * 0.98), "gt": torch.as_tensor(verts[1:])}
    new = VisualizationHook(1, "unused", faces).grid(batch)
    # the same grid built with the reference renderer (crops as the hook makes them)
    hook_tiles = []
    for i in range(2):
        top = 2 + i * (VIS_SIZE + 2)  # make_grid's default pad 2
        crop = new[top:top + VIS_SIZE, 2:2 + VIS_SIZE]
        gt = batch["gt"][i].numpy()
        cam = fit_camera(gt, VIS_SIZE)
        hook_tiles += [crop, reference.render_mesh(batch["pred"][i].numpy(), faces, VIS_SIZE, camera=cam),
                       reference.render_mesh(gt, faces, VIS_SIZE, camera=cam)]
    old = make_grid(hook_tiles, nrow=3)
    assert (new[2:2 + VIS_SIZE, 4 + VIS_SIZE:4 + 2 * VIS_SIZE] != 255).any(axis=-1).mean() > 0.1  # a mesh
    assert _changed(new, old) <= MAX_CHANGED

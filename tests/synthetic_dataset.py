"""A tiny MICA training dataset in the real on-disk layout, for tests (trainer, datasets).

    from tests.synthetic_dataset import make_synthetic_mica_dataset, synthetic_dataset_opts
    lists = make_synthetic_mica_dataset(tmp_path / "data", lists_dir=tmp_path / "lists")
    cfg = load_cfg("configs/mica.yml", synthetic_dataset_opts(tmp_path / "data", tmp_path / "lists"))

For each name in ``names`` it writes::

    root/NAME/FLAME_parameters/ACTOR/ACTOR.npz          betas (400,) ~ N(0, 1) float32, pose (15,) float32
    root/NAME/arcface_input/ACTOR/img_XXX.jpg           224x224 random RGB crop
    root/NAME/arcface_input/ACTOR/img_XXX.npy           (3, 112, 112) float32 in [-1, 1]
    lists_dir/NAME.npy                                  image list (original format)

Actors are ``a000``, ``a001``, ...; images ``img_000.jpg``, ... in list order. Everything is drawn
from ``numpy.random.default_rng(seed)``, so the same arguments give the same files.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from datasets.image_lists import ImageList, save_image_list
from utils.io import atomic_save, atomic_save_npy, atomic_write_bytes


def make_synthetic_mica_dataset(root: str | Path, names: Sequence[str] = ("LYHM", "FLORENCE"),
                                n_actors: int = 4, n_images: int | Sequence[int] = 3, seed: int = 0,
                                lists_dir: str | Path | None = None) -> dict[str, ImageList]:
    """Write a tiny dataset per name under ``root`` and its image lists into ``lists_dir``.

    Args:
        root: dataset root (becomes ``cfg.dataset.root``); created if needed.
        names: dataset names (upper-cased for folders and list files).
        n_actors: actors per dataset.
        n_images: images per actor (an int, or one count per actor).
        seed: seed of all random content.
        lists_dir: folder for ``NAME.npy`` lists (becomes ``cfg.dataset.image_lists``);
            default ``root/image_paths``.

    Returns:
        ``{NAME: image list}`` as written.
    """
    root = Path(root)
    lists_dir = Path(lists_dir) if lists_dir is not None else root / "image_paths"
    counts = [int(n_images)] * n_actors if np.isscalar(n_images) else [int(c) for c in n_images]
    if len(counts) != n_actors:
        raise ValueError(f"n_images has {len(counts)} counts for {n_actors} actors")
    rng = np.random.default_rng(seed)
    lists: dict[str, ImageList] = {}
    for name in names:
        name = name.upper()
        image_list: ImageList = {}
        for a in range(n_actors):
            actor = f"a{a:03d}"
            fit = root / name / "FLAME_parameters" / actor / f"{actor}.npz"
            betas = rng.standard_normal(400).astype(np.float32)
            pose = (0.1 * rng.standard_normal(15)).astype(np.float32)
            atomic_save(fit, lambda tmp, b=betas, p=pose: np.savez(tmp, betas=b, pose=p))
            images = []
            for i in range(counts[a]):
                crop_path = root / name / "arcface_input" / actor / f"img_{i:03d}.jpg"
                crop = rng.integers(0, 256, size=(224, 224, 3), dtype=np.uint8)
                ok, buf = cv2.imencode(".jpg", crop)
                assert ok
                atomic_write_bytes(crop_path, buf.tobytes())
                atomic_save_npy(crop_path.with_suffix(".npy"),
                                rng.uniform(-1.0, 1.0, size=(3, 112, 112)).astype(np.float32))
                images.append(f"{actor}/{crop_path.name}")
            image_list[actor] = (images, f"{actor}/{fit.name}")
        save_image_list(lists_dir / f"{name}.npy", image_list)
        lists[name] = image_list
    return lists


def synthetic_dataset_opts(root: str | Path, lists_dir: str | Path, train: Sequence[str] = ("LYHM",),
                           val: Sequence[str] = ("FLORENCE",), batch_size: int = 2, K: int = 2) -> list:
    """``KEY VALUE`` overrides (for ``configs.config.load_cfg(opts=...)``) pointing at a synthetic dataset."""
    return ["dataset.root", str(root), "dataset.image_lists", str(lists_dir),
            "dataset.training_data", repr([n for n in train]), "dataset.eval_data", repr([n for n in val]),
            "dataset.batch_size", str(batch_size), "dataset.K", str(K), "dataset.num_workers", "0"]

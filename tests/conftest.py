"""Shared pytest fixtures.

Everything a test needs is built here from scratch (synthetic FLAME, random-weight networks, tiny
datasets); nothing is downloaded. Fixtures that read ``../shared`` (real face photos, public FLAME
files) skip cleanly when that folder is absent, as in a user's fresh clone.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("MICA_SHARED_DIR", ROOT.parent / "shared"))

# Two cores: keep each test process from oversubscribing them.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def _shared_subdir(name: str) -> Path:
    path = SHARED / "data" / name
    if not path.is_dir():
        pytest.skip(f"{path} not present (../shared is only available in the development sandbox)")
    return path


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    """Real face photos (../shared/data/faces); skips when absent."""
    return _shared_subdir("faces")


@pytest.fixture(scope="session")
def flame_public_dir() -> Path:
    """Public FLAME files: head_template.obj, landmark_embedding.npy, FLAME_masks.pkl; skips when absent."""
    return _shared_subdir("flame_public")


@pytest.fixture(scope="session")
def image_paths_dir() -> Path:
    """The original per-dataset image lists (../shared/data/image_paths); skips when absent."""
    return _shared_subdir("image_paths")


@pytest.fixture(scope="session")
def synthetic_flame_dir(tmp_path_factory) -> Path:
    """A synthetic FLAME in the real formats (generic_model.pkl, landmark_embedding.npy,
    FLAME_masks.pkl, head_template.obj); real topology when ../shared is present."""
    from tests.synthetic_flame import write_synthetic_flame

    return write_synthetic_flame(tmp_path_factory.mktemp("flame"))


@pytest.fixture(scope="session")
def train_setup_dir(tmp_path_factory, synthetic_flame_dir) -> Path:
    """Trainer tests: synthetic dataset (8 LYHM actors, 4 FLORENCE actors, 2 images each) + random iresnet18 mica.tar."""
    from tests.synthetic_dataset import make_synthetic_mica_dataset
    from tests.synthetic_weights import write_random_mica_tar

    d = tmp_path_factory.mktemp("trainer")
    make_synthetic_mica_dataset(d / "data", names=("LYHM",), n_actors=8, n_images=2, lists_dir=d / "lists", seed=1)
    make_synthetic_mica_dataset(d / "data", names=("FLORENCE",), n_actors=4, n_images=2, lists_dir=d / "lists", seed=2)
    write_random_mica_tar(d / "init.tar", arch="iresnet18", seed=5)
    (d / "flame").symlink_to(synthetic_flame_dir)
    return d

"""Shared pytest fixtures.

Everything a test needs is built here from scratch (synthetic FLAME, random-weight networks, tiny
datasets, face photos from scikit-image's public-domain portrait); nothing is downloaded. Fixtures
that read ``../shared`` (real face photos, public FLAME files) belong to tests marked
``@pytest.mark.shared_data``; they skip cleanly when that folder is absent, as in a user's fresh
clone. With ``MICA_FAIL_ON_DATA_SKIP=1`` (the test command's hidden-shared run) such a skip is a
failure instead: every test not marked ``shared_data`` must run without ``../shared``.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("MICA_SHARED_DIR", ROOT.parent / "shared"))
SHARED_FIXTURES = ("faces_dir", "flame_public_dir", "image_paths_dir", "real_flame_dir")

# Two cores: keep each test process from oversubscribing them.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    """A test that uses a ../shared fixture must say so with ``@pytest.mark.shared_data`` (so the
    hidden-shared run can deselect it); an unmarked one fails at collection time."""
    unmarked = [f"{item.nodeid} ({', '.join(used)})" for item in items
                if (used := [f for f in SHARED_FIXTURES if f in getattr(item, "fixturenames", ())])
                and item.get_closest_marker("shared_data") is None]
    if unmarked:
        raise pytest.UsageError("these tests use ../shared but are not marked @pytest.mark.shared_data: "
                                + "; ".join(unmarked))


def _shared_subdir(name: str) -> Path:
    path = SHARED / "data" / name
    if not path.is_dir():
        message = f"{path} not present (../shared is only available in the development sandbox)"
        if os.environ.get("MICA_FAIL_ON_DATA_SKIP") == "1":
            pytest.fail(f"{message}; MICA_FAIL_ON_DATA_SKIP=1: a test that needs it must be marked shared_data")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    """Real face photos (../shared/data/faces); skips when absent. Most tests want ``face_photos_dir``."""
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
def face_photos_dir(tmp_path_factory) -> Path:
    """A folder of four face photos (``tests/photos.py``: the scikit-image portrait, cropped,
    enlarged and mirrored; one face each), no ../shared needed. Shared: copy it before adding files."""
    from tests.photos import portrait_photos

    folder = tmp_path_factory.mktemp("face_photos")
    for name, rgb in portrait_photos().items():
        if not cv2.imwrite(str(folder / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {folder / name}")
    return folder


@pytest.fixture(scope="session")
def synthetic_flame_dir(tmp_path_factory) -> Path:
    """A synthetic FLAME in the real formats (generic_model.pkl, landmark_embedding.npy,
    FLAME_masks.pkl, head_template.obj) on the small random topology, whether or not ../shared exists."""
    from tests.synthetic_flame import write_synthetic_flame

    return write_synthetic_flame(tmp_path_factory.mktemp("flame"), real=False)


@pytest.fixture(scope="session")
def real_flame_dir(tmp_path_factory, flame_public_dir) -> Path:
    """The synthetic FLAME on the real topology, landmark embedding and masks (../shared/data/flame_public;
    skips when absent): for the ``shared_data`` variants of tests where the real template matters."""
    from tests.synthetic_flame import write_synthetic_flame

    return write_synthetic_flame(tmp_path_factory.mktemp("real_flame"), real=True)


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


@pytest.fixture(scope="module")
def exact_clip(tmp_path_factory) -> Path:
    """A clip tracked by track.py from the FLAME-like synthetic FLAME (NAME.glb written by track.py)."""
    from tests.synthetic_tracking import flame_like_assets, track_clip

    return track_clip(tmp_path_factory.mktemp("exact"), flame_like_assets)

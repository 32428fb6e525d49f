"""The MICA training/validation dataset: one item = one actor with K aligned face images.

Layout of one dataset ``NAME`` under ``ROOT`` (the official MICA dataset layout)::

    ROOT/NAME/FLAME_parameters/ACTOR/FIT.npz      betas (400,) = 300 shape + 100 expression, pose (15,)
    ROOT/NAME/arcface_input/ACTOR/IMAGE.jpg|png   224x224 aligned crop (for visualisation)
    ROOT/NAME/arcface_input/ACTOR/IMAGE.npy       3x112x112 float32 network input, (RGB - 127.5) / 127.5

and an image list ``NAME.npy`` (:mod:`datasets.image_lists`).

Sampling
    Training: K distinct images of the actor, drawn without replacement. Validation (``is_eval``):
    the first ``min(200, smallest image count in the list)`` images of the actor, in list order.
    Every item draws from its own generator seeded by ``(seed, epoch, dataset name, index)``, never
    from global state, so an item is the same whenever it is loaded with the same seed and epoch
    (bit-identical resume; any number of DataLoader workers). Call :meth:`MICADataset.set_epoch`
    before each epoch (with ``persistent_workers=False``, the default, workers see the new epoch).

Missing or unreadable files
    A missing/corrupt ``.npy`` is reported once per process with a
    loguru warning naming the path, and the next image of the actor's draw order is used instead.
    An actor whose fit ``.npz`` is unusable, or that has fewer than K usable images (validation:
    fewer than its eval count), is SKIPPED: it is reported once and the item is replaced by another
    actor drawn from the item's own generator, so every item has the same number of images and the
    batch shapes stay fixed. If no usable actor is found after a few tries a ``MICAError`` is raised.
"""
from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from loguru import logger
from torch.utils.data import ConcatDataset, Dataset

from datasets.image_lists import ImageList, load_image_list
from utils.errors import MICAError, UserError

PathLike = str | os.PathLike

ARCFACE_FOLDER = "arcface_input"
FLAME_FOLDER = "FLAME_parameters"
INPUT_SHAPE = (3, 112, 112)
MAX_EVAL_IMAGES = 200
# How many replacement actors an item tries before giving up.
MAX_ACTOR_TRIES = 20


def find_dataset_dir(root: PathLike, name: str) -> Path | None:
    """``ROOT/NAME`` for a dataset name: upper-case folder first, then as written, then any case."""
    root = Path(root)
    for cand in (root / name.upper(), root / name):
        if cand.is_dir():
            return cand
    if root.is_dir():
        for child in sorted(root.iterdir()):
            if child.is_dir() and child.name.upper() == name.upper():
                return child
    return None


class MICADataset(Dataset):
    """One dataset of the MICA training data; item ``i`` is actor ``i`` of the image list.

    Args:
        dataset_dir: the dataset folder ``ROOT/NAME`` (holds ``arcface_input/`` and ``FLAME_parameters/``).
        name: dataset name (upper-cased; returned with every item and mixed into the item seed).
        image_list: path of the list ``NAME.npy`` or an already loaded list.
        K: images per training item (drawn without replacement).
        is_eval: validation mode (first ``min(200, smallest count)`` images in list order).
        seed: base seed of the per-item generators.
        n_shape: number of identity coefficients returned (first ``n_shape`` of the 400 betas).
    """

    def __init__(self, dataset_dir: PathLike, name: str, image_list: PathLike | ImageList, K: int = 2,
                 is_eval: bool = False, seed: int = 0, n_shape: int = 300) -> None:
        super().__init__()
        self.name = str(name).upper()
        self.dataset_dir = Path(dataset_dir)
        self.image_dir = self.dataset_dir / ARCFACE_FOLDER
        self.flame_dir = self.dataset_dir / FLAME_FOLDER
        self.face_dict: ImageList = image_list if isinstance(image_list, dict) else load_image_list(image_list)
        self.actors: list[str] = list(self.face_dict.keys())
        if not self.actors:
            raise MICAError(f"image list of dataset {self.name} has no actors (rebuild it with "
                            f"python -m datasets.build_lists {self.dataset_dir})")
        if K < 1:
            raise ValueError(f"K must be >= 1, not {K}")
        self.K = int(K)
        self.is_eval = bool(is_eval)
        self.seed = int(seed)
        self.n_shape = int(n_shape)
        self.epoch = 0
        self.min_images = min(len(imgs) for imgs, _ in self.face_dict.values())
        # Validation: first min(200, smallest image count of this dataset) images of each actor.
        self.eval_K = max(1, min(MAX_EVAL_IMAGES, self.min_images))
        self._name_key = zlib.crc32(self.name.encode("utf-8"))
        self._reported: set = set()  # paths/actors already warned about in this process

    # ----------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.actors)

    @property
    def images_per_item(self) -> int:
        """Images in every item: ``K`` for training, ``eval_K`` for validation."""
        return self.eval_K if self.is_eval else self.K

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose draws ``__getitem__`` returns."""
        self.epoch = int(epoch)

    def item_rng(self, index: int) -> np.random.Generator:
        """The generator of item ``index`` in the current epoch (independent of global RNG state)."""
        mask = (1 << 64) - 1  # SeedSequence needs non-negative entropy
        return np.random.default_rng([self.seed & mask, self.epoch & mask, self._name_key, int(index)])

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._reported:
            self._reported.add(key)
            logger.warning(message)

    # ----------------------------------------------------------------------------------------------
    def _load_identity(self, actor: str) -> np.ndarray | None:
        """The first ``n_shape`` of the actor's fit ``betas`` (the identity), or None (reported once)."""
        npz_path = self.flame_dir / self.face_dict[actor][1]
        try:
            with np.load(npz_path, allow_pickle=False) as data:
                betas = np.asarray(data["betas"], dtype=np.float32).reshape(-1)
            if betas.shape[0] < self.n_shape or not np.isfinite(betas[: self.n_shape]).all():
                raise UserError(f"betas has {betas.shape[0]} values or non-finite ones, need {self.n_shape} finite")
        except Exception as e:  # missing file, corrupt zip, missing key, bad values
            self._warn_once(str(npz_path), f"{self.name}: skipping actor {actor}: unusable FLAME fit {npz_path} ({e})")
            return None
        return betas[: self.n_shape].copy()

    def _load_input(self, image_path: Path) -> np.ndarray | None:
        npy_path = image_path.with_suffix(".npy")
        try:
            arr = np.load(npy_path, allow_pickle=False)
            if arr.shape != INPUT_SHAPE:
                raise UserError(f"shape {arr.shape}, expected {INPUT_SHAPE}")
            arr = arr.astype(np.float32, copy=False)
            if not np.isfinite(arr).all():
                raise UserError("non-finite values")
        except Exception as e:
            self._warn_once(str(npy_path), f"{self.name}: skipping unreadable network input {npy_path} ({e})")
            return None
        return arr

    def _try_actor(self, actor: str, rng: np.random.Generator) -> dict | None:
        """The item for ``actor``, or None when the actor is unusable (reported once)."""
        images, _ = self.face_dict[actor]
        n_wanted = self.images_per_item
        identity = self._load_identity(actor)
        if identity is None:
            return None
        order = range(len(images)) if self.is_eval else rng.permutation(len(images))
        inputs, paths = [], []
        for i in order:
            path = self.image_dir / images[int(i)]
            if str(path.with_suffix(".npy")) in self._reported:
                continue
            arr = self._load_input(path)
            if arr is None:
                continue
            inputs.append(arr)
            paths.append(str(path))
            if len(inputs) == n_wanted:
                break
        if len(inputs) < n_wanted:
            self._warn_once(f"actor:{actor}", f"{self.name}: skipping actor {actor}: {len(inputs)} usable images, "
                                              f"{n_wanted} needed per item")
            return None
        return {
            "arcface": torch.from_numpy(np.stack(inputs)),
            "identity": torch.from_numpy(identity),
            "image_paths": paths,
            "actor": actor,
            "dataset": self.name,
        }

    def __getitem__(self, index: int) -> dict:
        """Item ``index`` (deterministic given seed, epoch and index).

        Returns:
            dict with ``arcface`` (K, 3, 112, 112) float32 network inputs, ``identity`` (n_shape,)
            float32 FLAME identity coefficients (the fit's first ``n_shape`` betas; ground truth =
            canonical FLAME of these), ``image_paths`` (K absolute paths of the 224 crops), ``actor`` (str), ``dataset`` (str, upper-case).
            K = ``images_per_item``.
        """
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} actors")
        rng = self.item_rng(index)
        actor = self.actors[index]
        for _ in range(MAX_ACTOR_TRIES):
            item = self._try_actor(actor, rng)
            if item is not None:
                return item
            actor = self.actors[int(rng.integers(len(self.actors)))]
        raise MICAError(f"{self.name}: no usable actor found after {MAX_ACTOR_TRIES} tries under {self.dataset_dir} "
                        f"(check the warnings above; regenerate the data or rebuild the list with "
                        f"python -m datasets.build_lists {self.dataset_dir})")


class MICAConcatDataset(ConcatDataset):
    """ConcatDataset of :class:`MICADataset` whose ``set_epoch`` reaches every part."""

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of every part."""
        for ds in self.datasets:
            ds.set_epoch(epoch)

    @property
    def names(self) -> list[str]:
        """Dataset names in order."""
        return [ds.name for ds in self.datasets]


def collate_mica(batch: Sequence[dict]) -> dict:
    """Collate items into a batch: tensors stacked, strings kept as lists.

    Returns:
        dict with ``arcface`` (B, K, 3, 112, 112), ``identity`` (B, n_shape), ``image_paths`` (B lists of K str), ``actor`` and ``dataset`` (lists of B str).
    """
    out: dict = {
        "arcface": torch.stack([b["arcface"] for b in batch]),
        "identity": torch.stack([b["identity"] for b in batch]),
        "image_paths": [list(b["image_paths"]) for b in batch],
        "actor": [b["actor"] for b in batch],
        "dataset": [b["dataset"] for b in batch],
    }
    if "image" in batch[0]:
        out["image"] = torch.stack([b["image"] for b in batch])
    return out

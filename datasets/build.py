"""Build the training / validation datasets from the config (the only place here that reads it).

Keys used: ``dataset.root``, ``dataset.image_lists``, ``dataset.training_data``, ``dataset.eval_data``,
``dataset.K``, ``dataset.batch_size``, ``model.n_shape``, ``seed``. Every configuration mistake fails
here, before training starts, with one ``MICAError`` line naming the key or path and the fix.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from loguru import logger

from configs.config import resolve_path
from datasets.image_lists import load_image_list
from datasets.mica_dataset import ARCFACE_FOLDER, FLAME_FOLDER, MICAConcatDataset, MICADataset, find_dataset_dir
from utils.errors import MICAError

# The eight datasets of MICA (upper-case names of the lists / folders).
KNOWN_DATASETS = ("LYHM", "FRGC", "STIRLING", "FACEWAREHOUSE", "BP4D", "BU3DFE", "FLORENCE", "D3DFACS")


def _dataset_root(cfg) -> Path:
    root = resolve_path(cfg.dataset.root)
    if not root.is_dir():
        raise MICAError(f"dataset.root: folder {root} does not exist (set dataset.root to the folder holding "
                        f"one sub-folder per dataset, e.g. LYHM/ and FLORENCE/)")
    return root


def _make_dataset(cfg, name: str, key: str, is_eval: bool) -> MICADataset:
    """One dataset ``name`` listed under config key ``key``."""
    upper = str(name).upper()
    lists_dir = resolve_path(cfg.dataset.image_lists)
    list_path = lists_dir / f"{upper}.npy"
    root = _dataset_root(cfg)
    if not list_path.is_file():
        if upper not in KNOWN_DATASETS:
            raise MICAError(f"{key}: unknown dataset '{name}' (no list {list_path}; known: {', '.join(KNOWN_DATASETS)}; "
                            f"for new data run python -m datasets.build_lists {root / upper} -o {list_path})")
        raise MICAError(f"{key}: image list {list_path} is missing (set dataset.image_lists to the folder of the "
                        f"lists, or build it with python -m datasets.build_lists {root / upper} -o {list_path})")
    dataset_dir = find_dataset_dir(root, upper)
    if dataset_dir is None:
        raise MICAError(f"{key}: dataset folder {root / upper} does not exist (put dataset '{name}' there or "
                        f"fix dataset.root / remove it from {key})")
    for sub in (ARCFACE_FOLDER, FLAME_FOLDER):
        if not (dataset_dir / sub).is_dir():
            raise MICAError(f"{key}: {dataset_dir / sub} does not exist (dataset '{name}' must hold "
                            f"{ARCFACE_FOLDER}/ and {FLAME_FOLDER}/; create it with python -m datasets.creation.generate)")
    image_list = load_image_list(list_path)
    if not image_list:
        raise MICAError(f"{key}: image list {list_path} has no actors (rebuild it with "
                        f"python -m datasets.build_lists {dataset_dir} -o {list_path})")
    K = int(cfg.dataset.K)
    if not is_eval:
        n_enough = sum(len(imgs) >= K for imgs, _ in image_list.values())
        if n_enough == 0:
            raise MICAError(f"dataset.K = {K} but no actor of {upper} has {K} images (largest count "
                            f"{max(len(i) for i, _ in image_list.values())}); lower dataset.K or remove {upper} from {key}")
        if n_enough < len(image_list):
            logger.warning(f"{upper}: {len(image_list) - n_enough} of {len(image_list)} actors have fewer than "
                           f"dataset.K = {K} images and will be skipped")
    return MICADataset(dataset_dir, upper, image_list, K=K, is_eval=is_eval, seed=int(cfg.seed),
                       n_shape=int(cfg.model.n_shape))


def _names(cfg, key: str, required: bool = True) -> Sequence[str]:
    names = list(cfg.dataset[key])
    if not names and required:
        raise MICAError(f"dataset.{key} is empty (list at least one dataset, e.g. [LYHM] or [FLORENCE])")
    return names


def build_train_dataset(cfg) -> MICAConcatDataset:
    """The training set: a :class:`MICAConcatDataset` over ``dataset.training_data``.

    Raises:
        MICAError: unknown dataset, missing root/folder/list, K larger than every actor's image count,
            or ``dataset.batch_size`` larger than the number of training actors.
    """
    datasets = [_make_dataset(cfg, n, "dataset.training_data", is_eval=False) for n in _names(cfg, "training_data")]
    concat = MICAConcatDataset(datasets)
    n_actors = len(concat)
    if int(cfg.dataset.batch_size) > n_actors:
        raise MICAError(f"dataset.batch_size = {cfg.dataset.batch_size} is larger than the number of training actors "
                        f"({n_actors} in {', '.join(concat.names)}); lower dataset.batch_size or add datasets")
    logger.info("training data: " + ", ".join(f"{d.name} ({len(d)} actors)" for d in datasets))
    return concat


def build_val_datasets(cfg) -> list[MICADataset]:
    """One validation :class:`MICADataset` (``is_eval``) per name in ``dataset.eval_data`` (empty list: none)."""
    names = _names(cfg, "eval_data", required=False)
    datasets = [_make_dataset(cfg, n, "dataset.eval_data", is_eval=True) for n in names]
    logger.info("validation data: " + ", ".join(f"{d.name} ({len(d)} actors x {d.eval_K} images)" for d in datasets))
    return datasets

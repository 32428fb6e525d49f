"""Default configuration of MICA (yacs).

One tree of defaults, built at import and never mutated: ``get_cfg_defaults()`` returns a clone.
Entry scripts call ``load_cfg(cfg_file, opts)``, which merges a YAML file (``configs/mica.yml``)
and trailing ``KEY VALUE`` command-line pairs, checks the result (``check_cfg``) and freezes it.
An unknown key or a value of the wrong type is a one-line ``UserError`` (also a ``ValueError``). Keys of the original
MICA configs that have no effect here (``LEGACY_KEYS``) are accepted; setting one to a value other
than its default logs one warning line.

Relative paths are relative to the project root (the folder holding this ``configs/`` package);
``resolve_path`` turns them into absolute ones.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from yacs.config import CfgNode as CN

from utils.errors import UserError, UserFileNotFound, check_range
from utils.image_io import DEFAULT_MAX_PIXELS

PROJECT_ROOT = Path(__file__).resolve().parent.parent

_C = CN()
# Version of this key set; a YAML file that sets another VERSION is refused (keys were renamed).
_C.VERSION = 1

# Compute device: "auto" (cuda, else mps, else cpu), "cpu", "cuda", "cuda:N" or "mps".
_C.device = "auto"
# GPU index used when device is exactly "cuda" (device "cuda:N" wins); a key of the original configs
# (a string there: '0' still loads, as yacs reads quoted numbers as numbers).
_C.device_id = 0
# Numeric precision of the networks: "fp32" (default, the original's numbers), "bf16", "fp16" or
# "auto" (bf16 on CPUs with native bf16 support, fp16/bf16 on CUDA, else fp32).
_C.precision = "fp32"
# Seed of every random number generator (each rank adds its rank).
_C.seed = 0
# The MICA checkpoint (mica.tar format) used by demo.py and test.py, and to initialise training
# when model.use_pretrained is True. Empty = none.
_C.pretrained_model_path = "data/pretrained/mica.tar"
# Output folder of training runs / tests. Empty = "output/<config file stem>".
_C.output_dir = ""

# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
_C.model = CN()
# Legacy key of the original configs (no effect here).
_C.model.testing = False
# Name of the model (only "mica" exists; anything else is refused).
_C.model.name = "mica"
# Legacy key of the original configs (no effect: the mesh faces come from flame_model_path).
_C.model.topology_path = "data/FLAME2020/head_template.obj"
# FLAME 2020 files (see data/README.md for where to get them).
_C.model.flame_model_path = "data/FLAME2020/generic_model.pkl"
_C.model.flame_lmk_embedding_path = "data/FLAME2020/landmark_embedding.npy"
_C.model.flame_masks_path = "data/FLAME2020/FLAME_masks/FLAME_masks.pkl"
# Number of FLAME identity (shape) coefficients predicted (at most 300 of FLAME's 400 columns;
# the last 100 are expression).
_C.model.n_shape = 300
# Number of FLAME expression coefficients of the FLAME layer (zero for MICA's canonical shape).
_C.model.n_exp = 100
# Legacy keys of the original configs, unused by MICA's mapping network (no effect).
_C.model.layers = 8
_C.model.hidden_layers_size = 256
# Hidden 300x300 layers of the mapping network (a skip connection is added when > 5).
_C.model.mapping_layers = 3
# ArcFace backbone architecture: iresnet18/34/50/100/200.
_C.model.arch = "iresnet100"
# Start training from pretrained_model_path (True) or from the ArcFace weights below (False).
_C.model.use_pretrained = True
# arcface_torch backbone.pth (Glint360K) used to initialise ArcFace when training from scratch.
_C.model.arcface_pretrained_model = "data/pretrained/backbone.pth"
# Training: False (default, as MICA) lets the BatchNorm layers of ArcFace's frozen stages (stem,
# layer1..3; no gradient) use batch statistics and update their running statistics; True keeps them
# in eval mode (unlike MICA: the frozen stages then stay exactly as loaded).
_C.model.freeze_bn = False

# ---------------------------------------------------------------------------------------------
# Face detection (demo / benchmark export)
# ---------------------------------------------------------------------------------------------
_C.detector = CN()
# "auto" (SCRFD when antelopev2 is present, else MTCNN), "scrfd" or "mtcnn".
_C.detector.name = "auto"
# Folder of insightface antelopev2 (holds scrfd_10g_bnkps.onnx).
_C.detector.antelopev2_dir = "~/.insightface/models/antelopev2"
# Detection input size (width, height) of SCRFD, as in MICA's demo.
_C.detector.det_size = (224, 224)
# Minimum detection score, in (0, 1].
_C.detector.threshold = 0.5
# MTCNN (the fallback detector) searches photos shrunk to this longer side in pixels, finding faces
# down to 20 px there (6% of the photo's longer side, about what SCRFD finds at 224x224); raise it
# for small faces in large photos (the detection time grows with it). 0 = the photo's own size.
_C.detector.mtcnn_max_side = 320
# MTCNN searches for faces of at least this fraction of the photo's longer side first (MICA's inputs
# are portraits; its finest pyramid level, for small faces, costs ~20% of the detection). A photo
# with no face or a smaller one is searched again fully. 0 = always the full search down to 20 px at
# mtcnn_max_side (group photos; demo.py --all-faces always searches so).
_C.detector.mtcnn_min_face = 0.15

# ---------------------------------------------------------------------------------------------
# Reading photos (utils/image_io.py)
# ---------------------------------------------------------------------------------------------
_C.image = CN()
# Largest accepted width x height of an input image, checked from the file's header before it is
# decoded (for every decoder), so a small file claiming a huge size cannot exhaust the memory.
# 0 = no limit. 100 Mpx is twice a 50-megapixel camera photo.
_C.image.max_pixels = DEFAULT_MAX_PIXELS

# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------
_C.dataset = CN()
# Names of the training datasets (upper-cased on lookup; lists in datasets/image_paths/).
_C.dataset.training_data = ["LYHM"]
# Names of the validation datasets.
_C.dataset.eval_data = ["FLORENCE"]
# Actors per batch (1..4096); each brings K images.
_C.dataset.batch_size = 2
# Images drawn per actor, without replacement.
_C.dataset.K = 4
# Legacy key of the original configs (no effect).
_C.dataset.n_train = 100000
# DataLoader worker processes, 0..64 (0 = load in the main process).
_C.dataset.num_workers = 4
# Root holding one folder per dataset (NAME/FLAME_parameters, NAME/arcface_input).
_C.dataset.root = "/datasets/MICA/"
# Folder of the per-dataset image lists (NAME.npy).
_C.dataset.image_lists = "datasets/image_paths"

# ---------------------------------------------------------------------------------------------
# Per-vertex loss weights from FLAME_masks.pkl (assigned in the order whole, eyes, ears, face;
# later assignments win). nose, lips, forehead, lr_eye_region and eye_region are legacy keys of the
# original configs, unused by MICA's loss (no effect).
# ---------------------------------------------------------------------------------------------
_C.mask_weights = CN()
_C.mask_weights.face = 150.0
_C.mask_weights.nose = 50.0
_C.mask_weights.lips = 50.0
_C.mask_weights.forehead = 50.0
_C.mask_weights.lr_eye_region = 50.0
_C.mask_weights.eye_region = 50.0
_C.mask_weights.whole = 1.0
_C.mask_weights.ears = 0.01
_C.mask_weights.eyes = 0.01

# Window of the running average of the validation loss used to keep "best" models.
_C.running_average = 7

# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
_C.train = CN()
# Weight the per-vertex loss with mask_weights (False = uniform weights).
_C.train.use_mask = False
# Legacy key of the original configs (no effect: training stops at max_steps).
_C.train.max_epochs = 50
_C.train.max_steps = 100000
# Learning rate of the mapping network.
_C.train.lr = 1e-4
# Learning rate of the trainable ArcFace part (layer4 and head).
_C.train.arcface_lr = 1e-3
_C.train.weight_decay = 0.0
# StepLR: multiply both learning rates by 0.1 every lr_update_step steps.
_C.train.lr_update_step = 100000000
# Sub-folders of output_dir.
_C.train.log_dir = "logs"
_C.train.vis_dir = "train_images"
# Legacy key of the original configs (no effect: no validation images are written).
_C.train.val_vis_dir = "val_images"
# Periods in steps (0 = never).
_C.train.log_steps = 10
_C.train.vis_steps = 200
_C.train.checkpoint_steps = 1000
_C.train.checkpoint_epochs_steps = 2
_C.train.val_steps = 1000
# Legacy keys of the original configs (no effect: no benchmark runs and no validation images during training).
_C.train.eval_steps = 5000
_C.train.val_save_img = 5000
# Write TensorBoard curves to output_dir/log_dir (micalib/engine/builder.py).
_C.train.write_summary = True
# Start a fresh optimiser when loading a training checkpoint.
_C.train.reset_optimizer = False
# Resume from output_dir's last checkpoint if there is one.
_C.train.resume = True
# Keep this many periodic checkpoints (0 = keep all).
_C.train.keep_checkpoints = 3
# Deterministic algorithms (bit-identical resume; slower).
_C.train.deterministic = False
# Speed (no effect on what is computed, only on how; see README "Training"):
# ArcFace and its input in channels-last memory format (faster convolutions on CPU, esp. with bf16).
_C.train.channels_last = False
# AdamW implementation: "auto" (torch's default: for-loop on CPU, foreach on CUDA), "foreach" or "fused".
_C.train.optimizer_impl = "auto"

# Benchmark used by test.py when --benchmark is not given ("now" or "stirling").
_C.test_dataset = "now"

# ---------------------------------------------------------------------------------------------
# Benchmarks (test.py)
# ---------------------------------------------------------------------------------------------
_C.test = CN()
# NoW root (holds imagepathsvalidation.txt, NoW_Dataset/, scans/, scans_lmks_onlypp/).
_C.test.now_root = ""
# Stirling/ESRC root (holds images/Real_images__Subset_2D_FG2018/{HQ,LQ}).
_C.test.stirling_root = ""
# Tag appended to the output folder name (now_test_TAG / stirling_test_TAG).
_C.test.tag = "mica"


# Keys of the original configs that are accepted but have no effect here (a warning names any that
# a config file or override sets to a value other than its default).
LEGACY_KEYS = (
    "model.testing", "model.topology_path", "model.layers", "model.hidden_layers_size", "dataset.n_train",
    "mask_weights.nose", "mask_weights.lips", "mask_weights.forehead", "mask_weights.lr_eye_region",
    "mask_weights.eye_region", "train.max_epochs", "train.val_vis_dir", "train.eval_steps", "train.val_save_img",
)
CONFIG_VERSION = 1
# ---------------------------------------------------------------------------------------------
# Tracking (track.py; configs/tracker.yml)
# ---------------------------------------------------------------------------------------------
# The keys and defaults of TrackOptions / FitSettings (micalib/tracking/options.py), which read them from here.
_C.tracker = CN()
# Assets of the original tracker (install.sh --download); tracked without eyelids when absent.
_C.tracker.mediapipe_embedding_path = "data/tracker/mediapipe_landmark_embedding.npz"
_C.tracker.l_eyelid_path = "data/tracker/l_eyelid.npy"
_C.tracker.r_eyelid_path = "data/tracker/r_eyelid.npy"
# FLAME vertices of MediaPipe's iris points 468..477 (the original's).
_C.tracker.iris_vertices = [4597, 4542, 4510, 4603, 4570, 4051, 3996, 3964, 3932, 4028]
# insightface buffalo_l's 1k3d68.onnx for 68 iBUG points beside MediaPipe; empty = the one in
# ~/.insightface/models/buffalo_l when present, else MediaPipe only.
_C.tracker.ibug68_model = ""
# Crop: one square box from the first frame's landmarks times bbox_scale (False = the whole frame).
_C.tracker.crop = True
_C.tracker.bbox_scale = 2.5
# Where MediaPipe finds no face on the whole frame (small faces), windows of the frame are searched
# (micalib/tracking/landmarks.py FaceSearch): every frame until the first face, then every Nth faceless one.
_C.tracker.search_every = 10
# Follow the face with a box per frame (smoothed) instead of one box.
_C.tracker.follow_face = False
# Frames with a face used to compute the identity with MICA when no --identity is given.
_C.tracker.identity_frames = 8
# Deflate level of input/NNNNN.png (0-9, utils/png.py: 0 stored, 1-3 ISA-L: fast, 4-9 zlib: smaller, slower).
_C.tracker.png_compression = 1
# Threads writing the per-frame files.
_C.tracker.workers = 2
# Fit the frames in a forked process beside the writer threads (Linux, fresh runs without the
# photometric stage; micalib/tracking/fit_ahead.py): the same numbers, less waiting for the GIL.
_C.tracker.fit_process = True
# Landmark fitting (micalib/tracking/options.py FitSettings).
_C.tracker.fit = CN()
# Levenberg-Marquardt steps per frame (warm-started).
_C.tracker.fit.iters = 4
# Radians the jaw/eyes may move before the expression Jacobian (exact at its pose) is recomputed.
_C.tracker.fit.basis_tolerance = 0.02
# Stop a frame's steps when one lowers the cost by less than this fraction.
_C.tracker.fit.rel_tol = 0.001
# Steps for a frame without a warm start.
_C.tracker.fit.first_iters = 15
# Joint steps over the keyframes.
_C.tracker.fit.key_iters = 25
# Keyframes spread over the sequence for the intrinsics.
_C.tracker.fit.keyframes = 8
# Calibration window (seconds of the source from the first frame with a face): the keyframes for the
# intrinsics are chosen among the frames with a face in it, so every run that contains those seconds
# (a preview of the first seconds and the whole clip, a recording processed in parts from its start,
# a re-run of a longer cut) gets the same camera when they share the identity (--identity; MICA's
# own comes from frames spread over each whole run), and the live tracker with --warmup equal to it fits
# from the same seconds. The cost: motion after the window does not inform the focal length (the
# run record's interval says how sure the window made it). 4 s holds a few head turns of a talking
# head and equals 100 frames at 25 fps, the preview length issue 22 measures (bench/README.md gives
# both figures). 0 = the whole clip.
_C.tracker.fit.calib_window_s = 4.0
# Landmark residual scale (pixels of the crop).
_C.tracker.fit.sigma_px = 1.0
# Residuals beyond this many sigma are down-weighted (Huber).
_C.tracker.fit.huber_px = 3.0
# Weights of the landmark sets (MediaPipe, its iris points, the 68 iBUG points).
_C.tracker.fit.w_mediapipe = 1.0
_C.tracker.fit.w_iris = 1.0
_C.tracker.fit.w_ibug68 = 0.5
# Prior: expression coefficients ~ N(0, exp_sigma^2).
_C.tracker.fit.exp_sigma = 1.0
# Jaw opening (about x), radians.
_C.tracker.fit.jaw_sigma = 0.35
# Jaw rotation about y and z, radians (small in real faces).
_C.tracker.fit.jaw_side_sigma = 0.01
# Eye rotations, radians; eye_symmetry_sigma: left/right difference.
_C.tracker.fit.eye_sigma = 0.35
_C.tracker.fit.eye_symmetry_sigma = 0.35
# Eyelids; eyelid_symmetry_sigma: left/right difference.
_C.tracker.fit.eyelid_sigma = 1.0
_C.tracker.fit.eyelid_symmetry_sigma = 1.0
# Per-frame change: expression units, jaw (rad), eyes (rad; saccades are fast), eyelids,
# camera rotation (rad), camera translation (metres).
_C.tracker.fit.smooth_exp = 0.7
_C.tracker.fit.smooth_pose = 0.05
_C.tracker.fit.smooth_eyes = 0.35
_C.tracker.fit.smooth_eyelids = 0.3
_C.tracker.fit.smooth_rot = 0.03
_C.tracker.fit.smooth_t = 0.01
# Focal length prior (micalib/tracking/focal_prior.py): the source camera's field of view across
# the source frame's larger side (degrees), log-normal with this standard deviation of log focal
# (band +-2 sigma: 32-98 degrees). A face spanning more than face_fraction of the frame's larger
# side marks a pre-cropped input: the source frame is then taken as the one in which the face spans
# precrop_face_fraction (in 1080p talking-head clips the face spans 0.08-0.18 of the width), with
# the width precrop_log_sigma. focal > 0 (--focal PX, source pixels) fixes the focal length (and the
# principal point at the crop centre) instead of fitting it.
_C.tracker.fit.fov_deg = 60.0
_C.tracker.fit.focal_log_sigma = 0.35
_C.tracker.fit.face_fraction = 0.25
_C.tracker.fit.precrop_face_fraction = 0.12
_C.tracker.fit.precrop_log_sigma = 0.5
_C.tracker.fit.focal = 0.0
# Principal point prior around the centre, times the crop size.
_C.tracker.fit.pp_sigma = 0.01
# Principal point: "centre" pins it at the centre of the image the camera is fitted in (the crop:
# FlashAvatar ignores cx, cy and renders a symmetric frustum; INSTA and RGBAvatar read them, so a
# centred K is right for all three; the landmarks barely constrain it: its offset is nearly a small
# camera rotation); "fitted" fits it on the keyframes, pulled to the centre by pp_sigma.
_C.tracker.fit.principal_point = "centre"
# Refine MICA's identity on the keyframes (jointly with the intrinsics), pulled towards MICA's:
# identity coefficients ~ N(MICA's, identity_sigma^2) (the original: shape regulariser 0.3).
_C.tracker.fit.refine_identity = False
_C.tracker.fit.identity_sigma = 0.3
# Photometric refinement (--photometric): iterations per frame (the step sizes are PhotometricStage's
# defaults, not a config key).
_C.tracker.photometric_iters = 20


def get_cfg_defaults() -> CN:
    """A clone of the default configuration (safe to modify)."""
    return _C.clone()


def resolve_path(path: str) -> Path:
    """Absolute path: ``~`` expanded, relative paths taken from the project root."""
    p = Path(os.path.expanduser(str(path)))
    return p if p.is_absolute() else PROJECT_ROOT / p


def _merge_yaml(cfg: CN, cfg_file: str | os.PathLike) -> None:
    path = Path(cfg_file)
    if not path.is_file():
        raise UserFileNotFound(f"config file {path} does not exist (try configs/mica.yml)")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise UserError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of keys, not {type(data).__name__}")
    if "VERSION" in data and data["VERSION"] != CONFIG_VERSION:
        raise UserError(f"config file {path} sets VERSION {data['VERSION']!r}, but this project reads version "
                         f"{CONFIG_VERSION} (compare it with configs/mica.yml, then set VERSION {CONFIG_VERSION} or drop it)")
    try:
        cfg.merge_from_other_cfg(CN(_whole_numbers_as_floats(cfg, data)))
    except (KeyError, ValueError) as e:
        raise UserError(f"config file {path}: {_yacs_message(e)}") from None


def _value(cfg: CN, key: str) -> Any:
    """The value of the dotted ``key`` in ``cfg``, None when there is no such key."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, CN) or part not in node:
            return None
        node = node[part]
    return node


def _whole_numbers_as_floats(cfg: CN, data: dict, prefix: str = "") -> dict:
    """``data`` (a YAML mapping) with whole numbers given for float keys written as floats: yacs
    refuses ``calib_window_s: 0`` for a float key, which no user means as an error."""
    out = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            out[key] = _whole_numbers_as_floats(cfg, value, full + ".")
        elif isinstance(_value(cfg, full), float) and isinstance(value, int) and not isinstance(value, bool):
            out[key] = float(value)
        else:
            out[key] = value
    return out


def _yacs_message(e: Exception) -> str:
    msg = str(e.args[0]) if e.args else str(e)
    if msg.startswith(("Non-existent config key", "Non-existent key")):
        key = msg.split(":", 1)[1].strip()
        return f"unknown config key '{key}' (see configs/config.py for the valid keys)"
    return msg.replace("\n", " ")


def merge_opts(cfg: CN, opts: Sequence[str]) -> None:
    """Merge trailing ``KEY VALUE`` pairs (e.g. ``train.lr 1e-4``) into ``cfg``."""
    opts = list(opts or [])
    if len(opts) % 2:
        raise UserError(f"command-line overrides must be KEY VALUE pairs, got an odd number: {opts}")
    for i in range(0, len(opts), 2):  # a whole number for a float key, e.g. tracker.fit.calib_window_s 0
        if isinstance(_value(cfg, str(opts[i])), float) and re.fullmatch(r"[+-]?\d+", str(opts[i + 1]).strip()):
            opts[i + 1] = str(float(str(opts[i + 1]).strip()))
    try:
        cfg.merge_from_list(opts)
    except (KeyError, ValueError, AssertionError) as e:
        raise UserError(f"command-line override: {_yacs_message(e)}") from None


def check_cfg(cfg: CN) -> None:
    """Cross-key checks; raises ``ValueError`` naming the key and the allowed values."""
    if cfg.VERSION != CONFIG_VERSION:
        raise UserError(f"VERSION must be {CONFIG_VERSION} (the version of this project's config keys), not {cfg.VERSION}")
    if cfg.model.name != "mica":
        raise UserError(f"model.name must be 'mica' (the only model), not '{cfg.model.name}'")
    if cfg.device_id < 0:
        raise UserError(f"device_id must be a GPU index (0, 1, ...), not {cfg.device_id}")
    if cfg.precision not in ("fp32", "bf16", "fp16", "auto"):
        raise UserError(f"precision must be fp32, bf16, fp16 or auto, not '{cfg.precision}'")
    dev = str(cfg.device)
    if not (dev in ("auto", "cpu", "mps", "cuda") or dev.startswith("cuda:")):
        raise UserError(f"device must be auto, cpu, cuda, cuda:N or mps, not '{dev}'")
    if not 1 <= cfg.model.n_shape <= 300:
        raise UserError(f"model.n_shape must be in 1..300 (FLAME identity space), not {cfg.model.n_shape}")
    if not 0 <= cfg.model.n_exp <= 100:
        raise UserError(f"model.n_exp must be in 0..100, not {cfg.model.n_exp}")
    if cfg.model.mapping_layers < 0:
        raise UserError(f"model.mapping_layers must be >= 0, not {cfg.model.mapping_layers}")
    if cfg.model.arch not in ("iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet200"):
        raise UserError(f"model.arch must be one of iresnet18/34/50/100/200, not '{cfg.model.arch}'")
    if cfg.detector.mtcnn_max_side < 0:
        raise UserError(f"detector.mtcnn_max_side must be >= 0 (0 = no shrinking), not {cfg.detector.mtcnn_max_side}")
    check_range("detector.mtcnn_min_face", cfg.detector.mtcnn_min_face, 0, 0.9,
                hint="a fraction of the photo's longer side, 0 = MTCNN's full search")
    if cfg.detector.name not in ("auto", "scrfd", "mtcnn"):
        raise UserError(f"detector.name must be auto, scrfd or mtcnn, not '{cfg.detector.name}'")
    check_range("detector.threshold", cfg.detector.threshold, 0, 1, low_open=True, hint="a detection score")
    if cfg.image.max_pixels < 0:
        raise UserError(f"image.max_pixels must be >= 0 (0 = no limit), not {cfg.image.max_pixels}")
    check_range("dataset.batch_size", cfg.dataset.batch_size, 1, 4096)
    if cfg.dataset.K < 1:
        raise UserError(f"dataset.K must be >= 1, not {cfg.dataset.K}")
    check_range("dataset.num_workers", cfg.dataset.num_workers, 0, 64, hint="0 = load in the main process")
    for key in ("lr", "arcface_lr", "weight_decay"):
        if cfg.train[key] < 0:
            raise UserError(f"train.{key} must be >= 0, not {cfg.train[key]}")
    if cfg.train.lr_update_step < 1:
        raise UserError("train.lr_update_step must be >= 1")
    if cfg.train.optimizer_impl not in ("auto", "foreach", "fused"):
        raise UserError(f"train.optimizer_impl must be auto, foreach or fused, not '{cfg.train.optimizer_impl}'")


def warn_legacy_keys(cfg: CN) -> list:
    """One warning line naming the ``LEGACY_KEYS`` that ``cfg`` sets to a value other than the default
    (a saved ``config.yaml``, which repeats the defaults, stays quiet); returns their names."""
    legacy = [k for k in LEGACY_KEYS if _value(cfg, k) != _value(_C, k)]
    if legacy and os.environ.get("RANK", "0") == "0":  # under torchrun: once, not once per process
        from loguru import logger

        what = f"keys {', '.join(legacy)} have" if len(legacy) > 1 else f"key {legacy[0]} has"
        logger.warning(f"config {what} no effect here (legacy keys of the original MICA configs; remove them "
                       f"from the config to silence this)")
    return legacy


def load_cfg(cfg_file: str | os.PathLike | None = None, opts: Iterable[str] = (), freeze: bool = True,
             flags: Iterable[tuple[str, Any]] = ()) -> CN:
    """Defaults, then ``cfg_file`` (YAML), then ``opts``, then ``flags`` (``(key, value)`` of the
    command-line flags that stand for config keys; ``None`` = not given); checked and (by default)
    frozen.

    ``device "cuda"`` with ``device_id N`` becomes ``cuda:N``; legacy keys set to a non-default
    value get one warning line (:func:`warn_legacy_keys`).

    Raises:
        FileNotFoundError: ``cfg_file`` does not exist.
        ValueError: invalid YAML, unknown key, wrong value type or a failed cross-key check.
    """
    cfg = get_cfg_defaults()
    if cfg_file:
        _merge_yaml(cfg, cfg_file)
        if not cfg.output_dir:
            cfg.output_dir = str(Path("output") / Path(cfg_file).stem)
    merge_opts(cfg, list(opts) + [str(x) for key, value in flags if value is not None for x in (key, value)])
    check_cfg(cfg)
    if str(cfg.device) == "cuda" and cfg.device_id != 0:
        cfg.device = f"cuda:{cfg.device_id}"
    warn_legacy_keys(cfg)
    if freeze:
        cfg.freeze()
    return cfg

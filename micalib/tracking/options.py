"""What a tracking run does: ``TrackOptions`` (frozen, like the demo's ``DemoOptions``) and the
landmark fit's ``FitSettings``.

Each tracker default is written once, in the config's ``tracker`` section (``configs/config.py``,
with what each key does): the config fields of these dataclasses (one per key, same name) take
their defaults from there, and ``TrackRunner.from_config`` reads a config back with
:meth:`TrackOptions.from_section`. The fields that are not config keys come from track.py's
command line.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from configs.config import get_cfg_defaults
from utils.errors import MICAError

_TRACKER = get_cfg_defaults().tracker  # the defaults
# tracker.fit.principal_point: pinned at the centre of the fitted image, or fitted on the keyframes
PRINCIPAL_POINT_MODES = ("centre", "fitted")
_FIT = _TRACKER.fit


@dataclass(frozen=True)
class FitSettings:
    """Weights and iteration counts of the landmark fit (``tracker.fit`` in the config: the meaning
    and default of each field there)."""

    iters: int = _FIT.iters
    rel_tol: float = _FIT.rel_tol
    basis_tolerance: float = _FIT.basis_tolerance
    first_iters: int = _FIT.first_iters
    key_iters: int = _FIT.key_iters
    keyframes: int = _FIT.keyframes
    calib_window_s: float = _FIT.calib_window_s
    sigma_px: float = _FIT.sigma_px
    huber_px: float = _FIT.huber_px
    w_mediapipe: float = _FIT.w_mediapipe
    w_iris: float = _FIT.w_iris
    w_ibug68: float = _FIT.w_ibug68
    exp_sigma: float = _FIT.exp_sigma
    jaw_sigma: float = _FIT.jaw_sigma
    jaw_side_sigma: float = _FIT.jaw_side_sigma
    eye_sigma: float = _FIT.eye_sigma
    eye_symmetry_sigma: float = _FIT.eye_symmetry_sigma
    eyelid_sigma: float = _FIT.eyelid_sigma
    eyelid_symmetry_sigma: float = _FIT.eyelid_symmetry_sigma
    smooth_exp: float = _FIT.smooth_exp
    smooth_pose: float = _FIT.smooth_pose
    smooth_eyes: float = _FIT.smooth_eyes
    smooth_eyelids: float = _FIT.smooth_eyelids
    smooth_rot: float = _FIT.smooth_rot
    smooth_t: float = _FIT.smooth_t
    fov_deg: float = _FIT.fov_deg
    focal_log_sigma: float = _FIT.focal_log_sigma
    face_fraction: float = _FIT.face_fraction
    precrop_face_fraction: float = _FIT.precrop_face_fraction
    precrop_log_sigma: float = _FIT.precrop_log_sigma
    focal: float = _FIT.focal
    pp_sigma: float = _FIT.pp_sigma
    principal_point: str = _FIT.principal_point
    refine_identity: bool = _FIT.refine_identity
    identity_sigma: float = _FIT.identity_sigma

    def __post_init__(self) -> None:
        mode = str(self.principal_point).strip().lower()
        if mode not in PRINCIPAL_POINT_MODES:
            raise MICAError(f"tracker.fit.principal_point is {self.principal_point!r}; "
                            f"use one of {', '.join(PRINCIPAL_POINT_MODES)}")
        object.__setattr__(self, "principal_point", mode)

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> FitSettings:
        """From the config's ``tracker.fit`` mapping (one key per field, each converted to the field's type)."""
        return cls(**{f.name: _convert(f, section[f.name]) for f in fields(cls)})


def _config(default=MISSING, **kw):
    """A field that is also a key of the config's ``tracker`` section."""
    return field(default=default, metadata={"config": True}, **kw)


@dataclass(frozen=True)
class TrackOptions:
    """What a tracking run does (``TrackRunner``); ``TrackRunner.from_config`` builds it.

    Config fields (``CONFIG_KEYS``): one per key of the config's ``tracker`` section, same name,
    default and meaning as there (``configs/config.py``); ``fit`` is its ``tracker.fit`` section.

    Run options (track.py's command line):
        image_size: side of the square crop. fps: output frame rate of a video (None = every frame).
        begin_frame: output frames of the input skipped before output frame 0 (``FrameSource.skip_first``).
        video: write ``video.mp4``. photometric: refine each frame photometrically.
        device: of MICA and the photometric stage. overwrite: remove this input's earlier outputs first.
    """

    mediapipe_embedding_path: str = _config(_TRACKER.mediapipe_embedding_path)
    l_eyelid_path: str = _config(_TRACKER.l_eyelid_path)
    r_eyelid_path: str = _config(_TRACKER.r_eyelid_path)
    iris_vertices: tuple = _config(tuple(_TRACKER.iris_vertices))
    ibug68_model: str = _config(_TRACKER.ibug68_model)
    crop: bool = _config(_TRACKER.crop)
    bbox_scale: float = _config(_TRACKER.bbox_scale)
    search_every: int = _config(_TRACKER.search_every)
    follow_face: bool = _config(_TRACKER.follow_face)
    identity_frames: int = _config(_TRACKER.identity_frames)
    png_compression: int = _config(_TRACKER.png_compression)
    workers: int = _config(_TRACKER.workers)
    fit_process: bool = _config(_TRACKER.fit_process)
    fit: FitSettings = _config(default_factory=FitSettings)
    photometric_iters: int = _config(_TRACKER.photometric_iters)
    image_size: int = 512
    fps: float | None = 25.0
    begin_frame: int = 0
    video: bool = True
    photometric: bool = False
    device: str = "cpu"
    overwrite: bool = False

    @classmethod
    def from_section(cls, section: Mapping[str, Any], **run) -> TrackOptions:
        """From the config's ``tracker`` mapping (every ``CONFIG_KEYS`` key) and the run options."""
        values = {}
        for f in fields(cls):
            if f.metadata.get("config"):
                values[f.name] = (FitSettings.from_section(section[f.name]) if f.name == "fit"
                                  else _convert(f, section[f.name]))
        return cls(**values, **run)

    @property
    def follow(self) -> bool:
        """A moving crop: the camera is fitted in input pixels (see ``TrackRunner``)."""
        return bool(self.crop and self.follow_face)

    def config_values(self) -> dict[str, Any]:
        """The ``tracker`` section these options were read from (plain values, ``fit`` a dict)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.metadata.get("config")}


CONFIG_KEYS = tuple(f.name for f in fields(TrackOptions) if f.metadata.get("config"))


def _default(f):
    return f.default if f.default is not MISSING else f.default_factory()


def _convert(f, value):
    """``value`` as the type of field ``f``'s default (tuples of ints stay tuples of ints)."""
    kind = type(_default(f))
    if kind is tuple:
        return tuple(int(v) for v in value)
    return kind(value)


def _plain(value):
    if isinstance(value, FitSettings):
        return asdict(value)
    if isinstance(value, tuple):
        return list(value)
    return value

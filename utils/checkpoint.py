"""Reading and writing MICA checkpoints (``mica.tar`` format) and arcface_torch ``backbone.pth``.

``mica.tar`` is ``torch.save`` of a dict::

    {'arcface': IResNet state dict,
     'flameModel': {'regressor.network.{i}.weight/bias', 'regressor.output.weight/bias',
                    'generator.<FLAME buffers>' ...},
     # training checkpoints only:
     'opt', 'scheduler', 'validator', 'epoch', 'global_step', 'batch_size', ...}

Loading always uses ``torch.load(weights_only=True)`` inside
``torch.serialization.safe_globals(utils.safe_pickle.torch_numpy_safe_globals())``: numpy arrays,
scalars and dtypes are data (the official trainer's checkpoints hold numpy arrays in
``validator['embeddings_lyhm']``, pickled under numpy 1's ``numpy.core.multiarray`` names; numpy 2
writes ``numpy._core.multiarray``; both are accepted), anything else a pickle names is refused (and
nothing of it runs). The model weights are checked for NaN / infinite values. Keys are mapped by name only (``module.`` and
``_orig_mod.`` prefixes stripped, ``regressor.`` removed for the mapping network); the
``generator.*`` FLAME buffers are not loaded (FLAME comes from the user's ``generic_model.pkl``) but
may be compared with it. Every problem is one line naming the file, what was expected and the fix.
"""
from __future__ import annotations

import io
import pickle
import re
import struct
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from loguru import logger
from torch import nn

from utils.errors import MICAError, UserFileNotFound
from utils.io import atomic_save
from utils.safe_pickle import torch_numpy_safe_globals

__all__ = [
    "load_checkpoint_file",
    "check_finite",
    "load_mica_checkpoint",
    "load_arcface_backbone",
    "save_mica_checkpoint",
    "load_state_dict_checked",
    "clean_state_dict",
    "guess_arcface_layers",
    "check_flame_template",
    "load_arcface_into",
    "load_regressor_into",
]

PathLike = str | Path
MICA_KEYS = ("arcface", "flameModel")
REGRESSOR_PREFIX = "regressor."
GENERATOR_PREFIX = "generator."
_STRIP_PREFIXES = ("module.", "_orig_mod.")
# Largest template difference (metres) tolerated silently between the checkpoint's FLAME and ours.
TEMPLATE_TOLERANCE_M = 1e-6
# Published insightface depths (blocks per stage), to name the architecture of a state dict.
# Mirrors models.arcface.ARCFACE_ARCHS (utils must not import models; a test checks they agree).
KNOWN_IRESNETS = {
    "iresnet18": [2, 2, 2, 2],
    "iresnet34": [3, 4, 6, 3],
    "iresnet50": [3, 4, 14, 3],
    "iresnet100": [3, 13, 30, 3],
    "iresnet200": [6, 26, 60, 6],
}
# Key groups listed in one error line before "... and N more".
_MAX_GROUPS = 6


def _damage(path: Path, exc: BaseException) -> str:
    """What a failed read of ``path`` says, in a few words (torch's messages run to paragraphs)."""
    try:
        if path.stat().st_size == 0:
            return "empty file"
    except OSError:
        pass
    text = str(exc)
    found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    if found:  # "Unsupported operand 95": bytes that are no pickle torch writes
        text = found.group(1)
    found = re.search(r"failed reading zip archive: ([^.]+)", text)
    if found:  # a cut-short zip: its directory at the end is gone
        text = f"incomplete zip archive: {found.group(1)}"
    first = (text.strip().splitlines() or [""])[0][:120]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def load_checkpoint_file(path: PathLike, what: str = "checkpoint", fix: str = "download or copy it again",
                         refused_fix: str = "use an original checkpoint file from a trusted source") -> Any:
    """``torch.load(path, map_location='cpu', weights_only=True)`` with numpy allowed, one-line errors.

    The one reader of every ``torch.save`` file of the project (checkpoints, ``backbone.pth``,
    tracker ``.frame`` files): tensors, plain containers, numbers, strings and numpy arrays /
    scalars / dtypes (numpy-1 and numpy-2 names) load; any other global is refused unexecuted.
    ``fix``: the advice for a damaged file (truncated, corrupt, empty, random bytes, a pickle that
    is no ``torch.save`` file); ``refused_fix``: for a file that names a global outside the list.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        MICAError: damaged (truncated, corrupt or not a PyTorch file at all), or it holds objects
            other than tensors and plain containers (refused by ``weights_only``; nothing was executed).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserFileNotFound(f"{what} {path} not found (check the path in the config / command line)")
    damaged = f"{what} {path} is damaged ({{}}): it is truncated or corrupt, or not a {what} at all - {fix}"
    try:
        with torch.serialization.safe_globals(torch_numpy_safe_globals()), warnings.catch_warnings():
            # a plain pickle of protocol 4+ makes torch warn before it fails; the error says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # only a named global is a foreign object; torch words every other unpickling failure
        # ("Unsupported operand", a bad magic number) as a weights-only refusal too
        found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", str(e))
        if found:
            raise MICAError(f"{what} {path} refused: it holds Python objects other than tensors and numpy arrays "
                            f"({found.group(1)}); it was not executed - {refused_fix}") from None
        raise MICAError(damaged.format(_damage(path, e))) from None
    except PermissionError:
        raise MICAError(f"{what} {path} cannot be read: permission denied - give your user read access "
                        f"(chmod/chown) or copy it somewhere readable") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, AttributeError, LookupError,
            TypeError, UnicodeDecodeError, struct.error) as e:  # LookupError: a damaged encoding name for numpy
        raise MICAError(damaged.format(_damage(path, e))) from None


# No weight or BatchNorm statistic of a trained network comes near this; a file that holds one is
# damaged (issue 21, D21: regressor weights x1e30 gave identities of 8e29 and no warning).
MAX_ABS_WEIGHT = 1e6


def check_finite(state: Mapping[str, Any], source: str) -> None:
    """Raise one ``MICAError`` line naming ``source`` and the first tensor holding NaN or inf, or a
    value beyond ``MAX_ABS_WEIGHT`` in magnitude."""
    for key, value in state.items():
        if not (torch.is_tensor(value) and value.is_floating_point()) or value.numel() == 0:
            continue
        if not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise MICAError(f"{source}: tensor '{key}' holds {bad} NaN or infinite values - the file is damaged "
                            f"or comes from a diverged training run; use another checkpoint")
        biggest = float(value.abs().max())
        if biggest > MAX_ABS_WEIGHT:
            raise MICAError(f"{source}: tensor '{key}' holds values up to {biggest:.3g} in magnitude, beyond the "
                            f"{MAX_ABS_WEIGHT:.0e} no trained network reaches - the file is damaged; use another checkpoint")


def clean_state_dict(state: Mapping[str, Any]) -> OrderedDict[str, torch.Tensor]:
    """Strip DDP ``module.`` and torch.compile ``_orig_mod.`` prefixes (repeatedly) from every key."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in state.items():
        k = str(key)
        changed = True
        while changed:
            changed = False
            for prefix in _STRIP_PREFIXES:
                if k.startswith(prefix):
                    k, changed = k[len(prefix):], True
        out[k] = value
    return out


def guess_arcface_layers(state: Mapping[str, Any]) -> list[int] | None:
    """Blocks per stage of an IResNet state dict (from ``layer{s}.{i}.`` keys), or None."""
    counts = [0, 0, 0, 0]
    for key in state:
        m = re.match(r"layer([1-4])\.(\d+)\.", key)
        if m:
            s = int(m.group(1)) - 1
            counts[s] = max(counts[s], int(m.group(2)) + 1)
    return counts if all(counts) else None


def _arch_name(layers: list[int] | None) -> str:
    if layers is None:
        return "not an IResNet"
    for name, blocks in KNOWN_IRESNETS.items():
        if list(blocks) == list(layers):
            return name
    return f"an IResNet with blocks {layers}"


def _group(keys: Iterable[str]) -> str:
    """Compact one-line listing of keys grouped by module prefix: ``layer4.2.{bn1,conv1}.*, ...``."""
    groups: OrderedDict[str, list[str]] = OrderedDict()
    for k in keys:
        parts = k.split(".")
        head = ".".join(parts[:-1]) if len(parts) > 1 else ""
        groups.setdefault(head, []).append(parts[-1])
    items = [f"{h}.{{{','.join(v)}}}" if h else ",".join(v) for h, v in groups.items()]
    text = ", ".join(items[:_MAX_GROUPS])
    if len(items) > _MAX_GROUPS:
        text += f" ... and {len(items) - _MAX_GROUPS} more groups"
    return text


def load_state_dict_checked(module: nn.Module, state: Mapping[str, Any], source: str, fix: str) -> None:
    """Load ``state`` into ``module`` strictly; any mismatch is one ``MICAError`` line.

    Args:
        module: target module.
        state: cleaned state dict (names already mapped).
        source: what is being loaded, e.g. ``"mica.tar 'arcface'"`` (appears in the message).
        fix: what the user should do, appended to the message.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shaped = [k for k in own if k in state and (not torch.is_tensor(state[k]) or tuple(state[k].shape) != tuple(own[k].shape))]
    if not (missing or unexpected or shaped):
        module.load_state_dict(state, strict=True)
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys ({_group(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({_group(unexpected)})")
    if shaped:
        k = shaped[0]
        got = tuple(state[k].shape) if torch.is_tensor(state[k]) else type(state[k]).__name__
        parts.append(f"{len(shaped)} mis-shaped tensors (e.g. {k}: file {got}, model {tuple(own[k].shape)}; {_group(shaped)})")
    raise MICAError(f"{source} does not match the model: {'; '.join(parts)} - {fix}")


def _check_arcface(state: Mapping[str, Any], model: nn.Module | None, source: str) -> None:
    """Raise a clear error when ``state`` is an IResNet of another depth than ``model``."""
    if model is None or not hasattr(model, "layers_per_stage"):
        return
    file_layers = guess_arcface_layers(state)
    if file_layers != list(model.layers_per_stage):
        raise MICAError(f"{source} looks like {_arch_name(file_layers)} but the model is "
                        f"{_arch_name(list(model.layers_per_stage))} - set model.arch to match the checkpoint "
                        f"or use a checkpoint of that architecture")


def load_mica_checkpoint(path: PathLike, fix: str = "download or copy it again") -> dict[str, Any]:
    """Read a ``mica.tar``-format file (``fix``: the advice when it is unreadable).

    Returns:
        dict with ``arcface`` (IResNet state dict), ``regressor`` (mapping-network state dict,
        ``network.{i}.*``/``output.*``), ``generator`` (the checkpoint's FLAME buffers, names
        without ``generator.``; informative only) and ``extra`` (every other top-level entry of a
        training checkpoint: ``opt``, ``scheduler``, ``epoch``, ...).

    Raises:
        FileNotFoundError, MICAError: unreadable file or not the mica.tar layout.
    """
    path = Path(path).expanduser()
    data = load_checkpoint_file(path, "MICA checkpoint", fix)
    if not isinstance(data, Mapping) or any(k not in data for k in MICA_KEYS):
        if isinstance(data, Mapping) and guess_arcface_layers(clean_state_dict(data)) is not None:
            raise MICAError(f"MICA checkpoint {path} is a bare ArcFace backbone ({_arch_name(guess_arcface_layers(clean_state_dict(data)))}), "
                            f"not a mica.tar - set model.arcface_pretrained_model to it with model.use_pretrained False")
        found = sorted(map(str, data.keys()))[:8] if isinstance(data, Mapping) else type(data).__name__
        raise MICAError(f"MICA checkpoint {path} lacks the keys 'arcface' and 'flameModel' (found {found}) - "
                        f"use the official mica.tar or a checkpoint saved by this project")
    if not isinstance(data["arcface"], Mapping) or not isinstance(data["flameModel"], Mapping):
        raise MICAError(f"MICA checkpoint {path}: 'arcface' and 'flameModel' must be state dicts - the file is not in mica.tar format")
    flame_model = clean_state_dict(data["flameModel"])
    regressor: OrderedDict[str, torch.Tensor] = OrderedDict()
    generator: OrderedDict[str, torch.Tensor] = OrderedDict()
    other = []
    for k, v in flame_model.items():
        if k.startswith(REGRESSOR_PREFIX):
            regressor[k[len(REGRESSOR_PREFIX):]] = v
        elif k.startswith(GENERATOR_PREFIX):
            generator[k[len(GENERATOR_PREFIX):]] = v
        else:
            other.append(k)
    if other:
        raise MICAError(f"MICA checkpoint {path}: 'flameModel' has keys outside regressor.*/generator.* "
                        f"({_group(other)}) - the file is not in mica.tar format")
    if not regressor:
        raise MICAError(f"MICA checkpoint {path}: 'flameModel' holds no regressor.* (mapping network) weights - "
                        f"use the official mica.tar or a checkpoint saved by this project")
    extra = {k: v for k, v in data.items() if k not in MICA_KEYS}
    arcface = clean_state_dict(data["arcface"])
    check_finite(arcface, f"MICA checkpoint {path} 'arcface'")
    check_finite(regressor, f"MICA checkpoint {path} 'flameModel' regressor")
    return {"arcface": arcface, "regressor": regressor, "generator": generator, "extra": extra}


def load_arcface_backbone(path: PathLike) -> OrderedDict[str, torch.Tensor]:
    """Read an insightface arcface_torch ``backbone.pth`` (bare IResNet state dict).

    Also accepts a ``mica.tar`` (its ``arcface`` entry) and dicts wrapping the weights under
    ``state_dict``/``model``.

    Raises:
        FileNotFoundError, MICAError: unreadable file or no IResNet weights in it.
    """
    path = Path(path).expanduser()
    data = load_checkpoint_file(path, "ArcFace backbone")
    if isinstance(data, Mapping):
        for key in ("arcface", "state_dict", "model"):
            if key in data and isinstance(data[key], Mapping):
                data = data[key]
                break
    if not isinstance(data, Mapping) or guess_arcface_layers(clean_state_dict(data)) is None:
        raise MICAError(f"ArcFace backbone {path} holds no IResNet weights (no layer1..layer4 keys) - "
                        f"use insightface arcface_torch's backbone.pth (e.g. Glint360K iresnet100)")
    state = clean_state_dict(data)
    check_finite(state, f"ArcFace backbone {path}")
    return state


def load_arcface_into(model: nn.Module, state: Mapping[str, Any], source: str) -> None:
    """Architecture check, then strict load of an IResNet state dict into ``model``."""
    _check_arcface(state, model, source)
    load_state_dict_checked(model, state, source, "use a checkpoint of the architecture in model.arch")


def load_regressor_into(model: nn.Module, state: Mapping[str, Any], source: str) -> None:
    """Strict load of mapping-network weights with a hint on mapping_layers / n_shape."""
    layers = sorted({int(m.group(1)) for k in state for m in [re.match(r"network\.(\d+)\.", k)] if m})
    out = state.get("output.weight")
    hint = ""
    if layers and out is not None and torch.is_tensor(out):
        hint = f" (the file has mapping_layers={len(layers) - 1}, n_shape={out.shape[0]})"
    load_state_dict_checked(model, state, source, f"set model.mapping_layers / model.n_shape to the checkpoint's values{hint}")


def check_flame_template(generator: Mapping[str, Any], flame: nn.Module | None, source: str) -> float | None:
    """Compare the checkpoint's ``v_template`` with our FLAME's; warn when they differ.

    Returns the largest difference in metres, or None when it cannot be compared.
    """
    theirs = generator.get("v_template")
    ours = getattr(flame, "v_template", None) if flame is not None else None
    if not (torch.is_tensor(theirs) and torch.is_tensor(ours)):
        return None
    theirs, ours = theirs.detach().double().cpu(), ours.detach().double().cpu().reshape(-1, 3)
    if theirs.reshape(-1, 3).shape != ours.shape:
        logger.warning(f"{source}: the checkpoint's FLAME has {theirs.reshape(-1, 3).shape[0]} vertices, yours "
                       f"{ours.shape[0]}; the mapping network was trained for another FLAME model")
        return None
    diff = float((theirs.reshape(-1, 3) - ours).abs().max())
    if diff > TEMPLATE_TOLERANCE_M:
        logger.warning(f"{source}: the checkpoint's FLAME template differs from your generic_model.pkl by up to "
                       f"{diff * 1000:.3f} mm; meshes use your FLAME file (check it is FLAME 2020)")
    return diff


def _module_state(obj: nn.Module | Mapping[str, Any]) -> OrderedDict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    # contiguous copies: a channels-last model (train.channels_last) saves the same file as any other
    return OrderedDict((k, v.detach().cpu().clone(memory_format=torch.contiguous_format) if torch.is_tensor(v) else v)
                       for k, v in clean_state_dict(obj).items())


def save_mica_checkpoint(path: PathLike, arcface: nn.Module | Mapping[str, Any],
                         regressor: nn.Module | Mapping[str, Any], flame: nn.Module | None = None,
                         extra: Mapping[str, Any] | None = None) -> Path:
    """Write a ``mica.tar``-format checkpoint atomically (tensors on CPU).

    Args:
        path: output file.
        arcface: IResNet (or its state dict) -> ``arcface``.
        regressor: mapping network (or its state dict) -> ``flameModel['regressor.*']``.
        flame: our FLAME module; its ``mica_buffers()`` become ``flameModel['generator.*']`` so the
            official code can read the file. None leaves them out.
        extra: further top-level entries (training state: ``opt``, ``scheduler``, ``epoch``, ...).

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    flame_model: OrderedDict[str, Any] = OrderedDict()
    for k, v in _module_state(regressor).items():
        flame_model[REGRESSOR_PREFIX + k] = v
    if flame is not None:
        buffers = flame.mica_buffers() if hasattr(flame, "mica_buffers") else {}
        for k, v in buffers.items():
            name = k if k.startswith(GENERATOR_PREFIX) else GENERATOR_PREFIX + k
            flame_model[name] = v.detach().cpu().clone() if torch.is_tensor(v) else v
    data: dict[str, Any] = {"arcface": _module_state(arcface), "flameModel": flame_model}
    for k, v in (extra or {}).items():
        if k in MICA_KEYS:
            raise ValueError(f"extra checkpoint entry '{k}' would overwrite the model weights; rename it")
        data[k] = v
    buf = io.BytesIO()
    torch.save(data, buf)
    atomic_save(path, lambda tmp: tmp.write_bytes(buf.getvalue()))
    return path

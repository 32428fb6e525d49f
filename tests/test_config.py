"""Configuration: defaults of the original, YAML merge, command-line overrides, clear errors."""
from __future__ import annotations

import pytest

from configs.config import PROJECT_ROOT, get_cfg_defaults, load_cfg, resolve_path
from utils.errors import UserError


def test_defaults_match_the_original():
    cfg = get_cfg_defaults()
    assert cfg.model.n_shape == 300
    assert cfg.model.mapping_layers == 3
    assert cfg.model.arch == "iresnet100"
    assert cfg.mask_weights.face == 150.0 and cfg.mask_weights.ears == 0.01 and cfg.mask_weights.eyes == 0.01
    assert cfg.mask_weights.whole == 1.0 and cfg.mask_weights.nose == 50.0
    assert cfg.running_average == 7
    assert cfg.dataset.eval_data == ["FLORENCE"]


def test_defaults_are_a_clone():
    a = get_cfg_defaults()
    a.train.lr = 123.0
    assert get_cfg_defaults().train.lr != 123.0


def test_mica_yml_values():
    cfg = load_cfg(PROJECT_ROOT / "configs" / "mica.yml")
    assert cfg.train.lr == pytest.approx(1e-5) and isinstance(cfg.train.lr, float)
    assert cfg.train.arcface_lr == pytest.approx(1e-5)
    assert cfg.train.weight_decay == pytest.approx(2e-4)
    assert cfg.train.max_steps == 160000
    assert cfg.train.use_mask is True
    assert cfg.dataset.batch_size == 8 and cfg.dataset.K == 2
    assert cfg.dataset.training_data == ["LYHM", "D3DFACS", "BU3DFE", "FRGC", "Stirling", "FaceWarehouse", "BP4D"]
    assert cfg.output_dir == "output/mica"
    assert cfg.is_frozen()


def test_command_line_overrides():
    cfg = load_cfg(PROJECT_ROOT / "configs" / "mica.yml", ["train.lr", "3e-4", "dataset.K", "4", "device", "cpu"])
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.dataset.K == 4
    assert cfg.device == "cpu"


@pytest.mark.parametrize(
    "opts, fragment",
    [
        (["train.lrr", "1"], "unknown config key 'train.lrr'"),
        (["train.lr"], "KEY VALUE pairs"),
        (["precision", "fp8"], "precision must be"),
        (["model.n_shape", "400"], "model.n_shape"),
        (["dataset.K", "0"], "dataset.K"),
        (["model.arch", "resnet50"], "model.arch"),
        (["detector.mtcnn_max_side", "-1"], "detector.mtcnn_max_side"),
        (["detector.mtcnn_min_face", "1.0"], "detector.mtcnn_min_face"),
    ],
)
def test_bad_overrides_give_one_line_errors(opts, fragment):
    with pytest.raises(ValueError) as e:
        load_cfg(None, opts)
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_yaml_files(tmp_path):
    missing = tmp_path / "nope.yml"
    with pytest.raises(FileNotFoundError, match="nope.yml"):
        load_cfg(missing)
    unknown = tmp_path / "unknown.yml"
    unknown.write_text("train:\n  learning_rate: 1.0\n")
    with pytest.raises(ValueError, match="unknown config key 'train.learning_rate'"):
        load_cfg(unknown)
    broken = tmp_path / "broken.yml"
    broken.write_text("train: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_cfg(broken)
    wrong_type = tmp_path / "type.yml"
    wrong_type.write_text("dataset:\n  batch_size: 'eight'\n")
    with pytest.raises(ValueError, match="batch_size"):
        load_cfg(wrong_type)


def test_unsafe_yaml_is_not_executed(tmp_path):
    evil = tmp_path / "evil.yml"
    evil.write_text("device: !!python/object/apply:os.system ['touch " + str(tmp_path / "pwned") + "']\n")
    with pytest.raises(ValueError):
        load_cfg(evil)
    assert not (tmp_path / "pwned").exists()


def test_resolve_path(tmp_path):
    assert resolve_path("data/x.pkl") == PROJECT_ROOT / "data" / "x.pkl"
    assert resolve_path(str(tmp_path)) == tmp_path


# ------------------------------------------------------------------------------------------------
# Keys the code never reads: each is either used or a declared legacy key that warns
# ------------------------------------------------------------------------------------------------
def _leaves(node, prefix=""):
    for k, v in node.items():
        if hasattr(v, "items"):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def _project_source(skip: tuple[str, ...] = ()) -> str:
    """All Python source of the project except the tests (the defaults are `_C.` lines, not `cfg.`)
    and the files in ``skip``."""
    parts = []
    for path in sorted(PROJECT_ROOT.rglob("*.py")):
        rel = path.relative_to(PROJECT_ROOT).as_posix()
        if rel.startswith((".venv", "tests/")) or "/." in rel or rel in skip:  # .venv, .venv-numpy1
            continue
        parts.append(path.read_text(encoding="utf-8"))
    return "\n".join(parts)


def test_every_key_is_read_or_a_declared_legacy_key():
    """Oracle: the source text. A key counts as read when some module accesses ``cfg.<key>`` (mask
    weights are read as one dict, of which ``models.masks`` uses the names in DEFAULT_WEIGHTS)."""
    import re

    from configs.config import LEGACY_KEYS
    from models.masks import DEFAULT_WEIGHTS

    source = _project_source()
    # the tracker section is read as a whole into TrackOptions / FitSettings (one field per key,
    # micalib/tracking/options.py): a key counts as read when its field is used outside that file
    options_users = _project_source(skip=("micalib/tracking/options.py", "configs/config.py"))
    unread = []
    for key in _leaves(get_cfg_defaults()):
        if key == "VERSION" or key in LEGACY_KEYS:
            continue
        section, _, name = key.rpartition(".")
        if section == "mask_weights":
            if name not in DEFAULT_WEIGHTS or "cfg.mask_weights" not in source:
                unread.append(key)
            continue
        if section.split(".")[0] == "tracker":
            if "cfg.tracker" not in source or not re.search(r"\.\s*" + re.escape(name) + r"\b", options_users):
                unread.append(key)
            continue
        # cfg.<key>, or the key's name passed as a string to a helper (``_names(cfg, "eval_data")``)
        if not re.search(r"\bcfg\." + re.escape(key) + r"\b", source) and not re.search(f"[\"']{name}[\"']", source):
            unread.append(key)
    assert unread == []
    # and no legacy key is secretly read (it would then not be "without effect")
    for key in LEGACY_KEYS:
        assert not re.search(r"\bcfg\." + re.escape(key) + r"\b", source), key


@pytest.fixture()
def warnings_logged():
    from loguru import logger

    lines = []
    sink = logger.add(lambda m: lines.append(str(m).rstrip("\n")), level="WARNING", format="{message}")
    yield lines
    logger.remove(sink)


def test_legacy_keys_warn_once_in_one_line(tmp_path, warnings_logged):
    original = tmp_path / "original.yml"  # an excerpt of the original MICA's mica.yml
    original.write_text("train:\n  val_save_img: 1200\n  max_epochs: 10\nmodel:\n  name: 'mica'\n")
    cfg = load_cfg(original, ["mask_weights.nose", "20.0"])
    assert cfg.train.val_save_img == 1200  # accepted
    assert len(warnings_logged) == 1 and "\n" not in warnings_logged[0]
    msg = warnings_logged[0]
    for key in ("train.val_save_img", "train.max_epochs", "mask_weights.nose"):
        assert key in msg
    assert "no effect" in msg and "model.name" not in msg


def test_legacy_warning_once_under_torchrun(tmp_path, warnings_logged, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert load_cfg(None, ["train.eval_steps", "10"]).train.eval_steps == 10
    assert warnings_logged == []  # rank 0 says it
    monkeypatch.setenv("RANK", "0")
    load_cfg(None, ["train.eval_steps", "10"])
    assert len(warnings_logged) == 1 and "key train.eval_steps has no effect" in warnings_logged[0]


def test_shipped_and_saved_configs_do_not_warn(tmp_path, warnings_logged):
    cfg = load_cfg(PROJECT_ROOT / "configs" / "mica.yml")
    saved = tmp_path / "config.yaml"  # what train.py writes into the run folder: every key, defaults included
    saved.write_text(cfg.dump())
    load_cfg(saved)
    assert warnings_logged == []


def test_version_device_id_and_model_name(tmp_path):
    newer = tmp_path / "v2.yml"
    newer.write_text("VERSION: 2\n")
    with pytest.raises(ValueError, match="VERSION 2") as e:
        load_cfg(newer)
    assert "\n" not in str(e.value)
    same = tmp_path / "v1.yml"
    same.write_text("VERSION: 1\n")
    assert load_cfg(same).VERSION == 1
    assert load_cfg(None, ["device", "cuda", "device_id", "1"]).device == "cuda:1"  # not resolved: no GPU needed
    quoted = tmp_path / "quoted.yml"  # the original configs write device_id as a string
    quoted.write_text("device: cuda\ndevice_id: '3'\n")
    assert load_cfg(quoted).device == "cuda:3"
    assert load_cfg(None, ["device", "cuda:2", "device_id", "1"]).device == "cuda:2"  # explicit index wins
    assert load_cfg(None, ["device", "cpu", "device_id", "1"]).device == "cpu"
    for bad in ("gpu0", "-1"):
        with pytest.raises(ValueError, match="device_id"):
            load_cfg(None, ["device_id", bad])
    with pytest.raises(ValueError, match="model.name"):
        load_cfg(None, ["model.name", "deca"])


def test_freeze_bn_default_is_mica():
    assert get_cfg_defaults().model.freeze_bn is False
    assert load_cfg(None, ["model.freeze_bn", "True"]).model.freeze_bn is True


def test_whole_numbers_for_float_keys_are_floats(tmp_path):
    """yacs refuses an int for a float key; a user writing `calib_window_s 0` means 0.0 (command line
    and YAML), while ints stay ints and non-numbers are still refused."""
    cfg = load_cfg(None, ["tracker.fit.calib_window_s", "0", "train.lr", "+2", "dataset.batch_size", "3"])
    assert isinstance(cfg.tracker.fit.calib_window_s, float) and cfg.tracker.fit.calib_window_s == 0.0
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == 2.0
    assert isinstance(cfg.dataset.batch_size, int) and cfg.dataset.batch_size == 3
    y = tmp_path / "c.yml"
    y.write_text("tracker:\n  fit:\n    calib_window_s: 2\n")
    cfg = load_cfg(y)
    assert isinstance(cfg.tracker.fit.calib_window_s, float) and cfg.tracker.fit.calib_window_s == 2.0
    with pytest.raises(ValueError, match="calib_window_s"):
        load_cfg(None, ["tracker.fit.calib_window_s", "abc"])


def test_a_digit_that_is_no_number_for_a_float_key_is_one_line():
    """'²' is a digit to str.isdigit and '--3' all digits after lstrip('+-'), but neither is a number to float(): the override is refused in one line
    naming the key (a UserError, as 'abc'), not a ValueError traceback from the coercion."""
    for value in ("²", "--3", "+-3"):  # '--3' and '+-3': two signs, no number either
        with pytest.raises(UserError, match="calib_window_s") as e:
            load_cfg(None, ["tracker.fit.calib_window_s", value])
        assert "\n" not in str(e.value)
    assert load_cfg(None, ["tracker.fit.calib_window_s", "\uff13"]).tracker.fit.calib_window_s == 3.0  # fullwidth 3

"""Configuration: defaults of the original, YAML merge, command-line overrides, clear errors."""
from __future__ import annotations

import pytest

from configs.config import PROJECT_ROOT, get_cfg_defaults, load_cfg, resolve_path


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

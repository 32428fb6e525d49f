"""Command-line conventions shared by every entry point: one checkpoint flag ``-m/--model``, messages
that name only flags that exist, no pointers to files a user does not have."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _parsers():
    import demo
    import test as test_py
    import train
    from micalib.export import cli as export

    base = {"demo.py": (demo.parse_args, []), "test.py": (test_py.parse_args, []),
            "train.py": (train.parse_args, []), "micalib.export": (export._parse, ["--onnx", "x.onnx"])}
    return base


@pytest.mark.parametrize("cli", ["demo.py", "test.py", "train.py", "micalib.export"])
@pytest.mark.parametrize("flag", ["-m", "--model"])
def test_every_cli_takes_the_checkpoint_as_m_model(cli, flag):
    parse, required = _parsers()[cli]
    assert parse([*required, flag, "some/mica.tar"]).model == "some/mica.tar"
    assert parse(required).model in (None, "")


def test_export_keeps_checkpoint_as_an_alias():
    from micalib.export import cli as export

    assert export._parse(["--onnx", "x.onnx", "--checkpoint", "a.tar"]).model == "a.tar"


def test_train_model_flag_is_the_initial_checkpoint(train_setup_dir, tmp_path):
    """``train.py -m X`` starts from X: a missing X is named in the one-line error."""
    import train
    from tests.test_trainer import make_opts

    opts = make_opts(train_setup_dir, tmp_path / "t", **{"model.use_pretrained": False})
    with pytest.raises(FileNotFoundError, match="nope.tar") as e:
        train.main(["--cfg", str(ROOT / "configs/mica.yml"), "-m", str(tmp_path / "nope.tar"), *opts])
    assert "-m/--model" in str(e.value)


def _messages_source() -> dict:
    """Source of every project module and script (tests and bench excluded)."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith((".venv", "tests/", "bench/")) or "/." in rel:  # .venv, .venv-numpy1
            continue
        out[rel] = path.read_text(encoding="utf-8")
    return out


def test_no_message_names_a_flag_that_does_not_exist():
    for rel, text in _messages_source().items():
        assert "--backend" not in text, rel  # there is no such flag: --onnx selects onnxruntime
        for m in re.finditer(r"--checkpoint\b", text):
            line = text[text.rfind("\n", 0, m.start()) + 1:text.find("\n", m.end())]
            assert "add_argument" in line, f"{rel}: {line.strip()} (name -m/--model)"


def test_no_message_points_at_facts_files():
    """The facts files are the developers' notes, not shipped: nothing a user reads may refer to them."""
    for rel, text in _messages_source().items():
        for word in ("MICA_FACTS", "BENCHMARK_FACTS", "TRACKER_FACTS", "shared/docs"):
            assert word not in text, f"{rel} mentions {word}"

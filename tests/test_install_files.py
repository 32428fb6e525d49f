"""The install files agree: every pin in requirements*.txt is the same in environment.yml and
install.sh, torch is pinned, torchvision/chumpy never appear."""
from __future__ import annotations

import re

from configs.config import PROJECT_ROOT


def _pins(text: str) -> dict[str, str]:
    return {m.group(1).lower(): m.group(2) for m in re.finditer(r"^\s*-?\s*([A-Za-z0-9_.\-]+)==([^\s#]+)", text, re.M)}


def test_requirements_are_pinned_and_mirrored_in_environment_yml():
    req = _pins((PROJECT_ROOT / "requirements.txt").read_text())
    req_test = _pins((PROJECT_ROOT / "requirements-test.txt").read_text())
    env = _pins((PROJECT_ROOT / "environment.yml").read_text())
    assert "torch" in req  # pinned (the line check below)
    for name, version in {**req, **req_test}.items():
        assert env.get(name) == version, f"{name}: requirements {version} vs environment.yml {env.get(name)}"
    for path in ("requirements.txt", "requirements-test.txt"):
        for line in (PROJECT_ROOT / path).read_text().splitlines():
            line = line.split("#")[0].strip()
            assert not line or "==" in line, f"{path}: unpinned requirement '{line}'"


def test_no_forbidden_dependencies():
    files = ("requirements.txt", "requirements-test.txt", "environment.yml", "install.sh")
    # comments may explain why a package is avoided; only the commands and pins count
    text = "\n".join(line.split("#")[0] for p in files for line in (PROJECT_ROOT / p).read_text().splitlines())
    for bad in ("torchvision", "chumpy", "pytorch3d"):
        assert bad not in text.lower()
    install = (PROJECT_ROOT / "install.sh").read_text()
    assert "onnxruntime-gpu==" + _pins((PROJECT_ROOT / "requirements.txt").read_text())["onnxruntime"] in install


def test_mediapipe_installed_without_its_declared_dependencies():
    """mediapipe 0.10.14 declares protobuf<5 (onnx/tensorboard need >=6.31.1; it fails on 7.x) and
    opencv-contrib-python (clashes with our OpenCV): install.sh installs it with --no-deps, the
    requirements files never name it, and what FaceMesh imports is pinned."""
    install = (PROJECT_ROOT / "install.sh").read_text()
    commands = "\n".join(line.split("#")[0] for line in install.splitlines())
    assert "--no-deps mediapipe==0.10.14" in commands
    req = _pins((PROJECT_ROOT / "requirements.txt").read_text())
    for path in ("requirements.txt", "requirements-test.txt", "environment.yml"):
        text = "\n".join(line.split("#")[0] for line in (PROJECT_ROOT / path).read_text().splitlines()).lower()
        assert "mediapipe" not in text and "opencv-contrib" not in text and "jax" not in text, path
    major, minor, patch = (int(v) for v in req["protobuf"].split("."))
    assert (6, 31, 1) <= (major, minor, patch) < (7, 0, 0)
    for name in ("absl-py", "attrs", "flatbuffers", "matplotlib"):
        assert name in req, name

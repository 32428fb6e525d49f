"""utils/mesh.py: .ply/.obj round trips in millimetres, atomic writes, clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from utils.errors import MICAError
from utils.mesh import read_mesh, write_mesh


def _mesh(seed: int = 0):
    rng = np.random.default_rng(seed)
    verts = rng.uniform(-120, 120, size=(40, 3))  # millimetres, head-sized
    faces = np.stack([rng.permutation(40)[:3] for _ in range(60)])
    return verts, faces


@pytest.mark.parametrize("suffix,atol", [(".ply", 1e-4), (".obj", 1e-6)])
def test_roundtrip_mm(tmp_path, suffix, atol):
    verts, faces = _mesh()
    path = tmp_path / "sub" / f"mesh{suffix}"
    assert write_mesh(path, verts, faces) == path
    v, f = read_mesh(path)
    np.testing.assert_allclose(v, verts, atol=atol, rtol=0)  # float32 in PLY: ~1e-5 mm at 120 mm
    np.testing.assert_array_equal(f, faces)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_torch_input_and_no_colours(tmp_path):
    verts, faces = _mesh(1)
    write_mesh(tmp_path / "m.obj", torch.tensor(verts), torch.tensor(faces))
    lines = (tmp_path / "m.obj").read_text().splitlines()
    vlines = [ln for ln in lines if ln.startswith("v ")]
    assert len(vlines) == 40 and all(len(ln.split()) == 4 for ln in vlines)  # x y z, no colour
    assert not any(ln.startswith(("vn ", "vt ")) for ln in lines)
    write_mesh(tmp_path / "m.ply", verts, faces)
    header = (tmp_path / "m.ply").read_bytes().split(b"end_header")[0]
    assert b"red" not in header and b"binary" in header


def test_real_template_order(flame_public_dir):
    v, f = read_mesh(flame_public_dir / "head_template.obj")
    assert v.shape == (5023, 3) and f.shape == (9976, 3)


def test_errors(tmp_path):
    verts, faces = _mesh()
    with pytest.raises(ValueError, match=".ply or .obj"):
        write_mesh(tmp_path / "m.stl", verts, faces)
    with pytest.raises(ValueError, match="faces"):
        write_mesh(tmp_path / "m.ply", verts, faces + 100)
    with pytest.raises(FileNotFoundError, match="nope.ply"):
        read_mesh(tmp_path / "nope.ply")
    bad = tmp_path / "bad.ply"
    bad.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 99\n")
    with pytest.raises(MICAError, match="bad.ply"):
        read_mesh(bad)


def test_obj_text_matches_trimesh_exporter() -> None:
    """Our OBJ writer gives the same lines as trimesh's exporter (the oracle; it adds a comment
    header), also when the face array changes between calls (the face-line cache)."""
    import trimesh

    from utils.mesh import obj_text

    rng = np.random.default_rng(0)
    for n_v, n_f in ((50, 80), (30, 40), (50, 80)):
        v = rng.normal(size=(n_v, 3)) * 100
        f = rng.integers(0, n_v, size=(n_f, 3))
        ref = trimesh.exchange.obj.export_obj(trimesh.Trimesh(vertices=v, faces=f, process=False),
                                              include_normals=False, include_color=False,
                                              include_texture=False, digits=6)
        ours = obj_text(v, f).decode()
        assert ours.split() == [t for line in ref.splitlines() if not line.startswith("#") for t in line.split()]

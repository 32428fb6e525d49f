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


@pytest.mark.shared_data
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


def test_obj_vertex_lines_of_float32_match_printf() -> None:
    """The numpy-built vertex lines (float32 input) equal Python's "%.6f" formatting (C's printf),
    including signs of values that round to zero, exact ties, carries into the whole part and
    magnitudes up to 1e8; float64 values take the %-formatting path."""
    from utils.mesh import _fixed6_vertex_lines, obj_text

    rng = np.random.default_rng(1)
    special = [-0.0, 0.0, -1e-7, 1e-7, 1 / 128, -3 / 128, 0.5, 999.9999995, -999.9999995, 9.9999996,
               1e8, -12345.678, 5e-7, -5e-7, 0.0000005, 2.5e-6]
    blocks = [np.array(special + [0.0, 0.0], np.float32).reshape(-1, 3)]
    for scale in (1e-6, 1e-3, 1.0, 120.0, 1e5):
        blocks.append((rng.normal(size=(200, 3)) * scale).astype(np.float32))
    faces = np.array([[0, 1, 2]])
    for v32 in blocks:
        v = v32.astype(np.float64)
        expected = ("v %.6f %.6f %.6f\n" * len(v)) % tuple(v.ravel().tolist())
        assert _fixed6_vertex_lines(v) is not None  # the fast path really ran
        assert obj_text(v, faces).decode() == expected + "f 1 2 3\n"
    v64 = np.array([[0.1, 0.2, 1 / 3]])  # not float32 values: formatted by %
    assert _fixed6_vertex_lines(v64) is None
    assert obj_text(v64, faces).decode() == "v 0.100000 0.200000 0.333333\nf 1 2 3\n"


def test_ply_bytes_unit_is_named_in_the_header(tmp_path) -> None:
    import trimesh

    from utils.mesh import ply_bytes

    verts, faces = _mesh()
    for unit in ("millimetres", "metres"):
        data = ply_bytes(verts, faces, unit=unit)
        header = data[: data.index(b"end_header\n")].decode("ascii").splitlines()
        assert [ln for ln in header if ln.startswith("comment")] == [f"comment MICA FLAME mesh, {unit}"]
        (tmp_path / f"{unit}.ply").write_bytes(data)
        mesh = trimesh.load(tmp_path / f"{unit}.ply", process=False)
        np.testing.assert_array_equal(mesh.vertices, verts.astype(np.float32))
        np.testing.assert_array_equal(mesh.faces, faces)
    with pytest.raises(ValueError, match="unit"):
        ply_bytes(verts, faces, unit="metres\nend_header")


def test_ply_bytes_match_trimesh_exporter(tmp_path) -> None:
    import trimesh

    from utils.mesh import ply_bytes

    verts, faces = _mesh()
    ref = trimesh.exchange.ply.export_ply(trimesh.Trimesh(vertices=verts, faces=faces, process=False),
                                          encoding="binary", vertex_normal=False, include_attributes=False)
    ours = ply_bytes(verts.astype(np.float64), faces)
    drop_comment = lambda b: b"\n".join(x for x in b.split(b"\n") if not x.startswith(b"comment"))  # noqa: E731
    assert drop_comment(ours) == drop_comment(ref)

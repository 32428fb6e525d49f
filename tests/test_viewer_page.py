"""The viewer page in headless Chromium, opened from file:// as a user's double-click opens it:
without ``--allow-file-access-from-files`` or ``--disable-web-security`` (WebGL through SwiftShader,
console on stderr). The tracked clip's silhouette at frame k, drawn by three.js through the
camera of the .glb with the principal point of its extras, overlaps the silhouette our rasteriser
(``micalib/render/raster.py``) draws of ``mesh/NNNNN.ply`` through the ``.frame`` camera by >= 0.98
(IoU). Skipped without ``chromium``."""
from __future__ import annotations

import base64
import html
import os
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from micalib.tracking.outputs import read_frame
from micalib.viewer.__main__ import main as viewer_main
from tests.test_gltf import N_FRAMES, exact_clip  # noqa: F401  (fixture)
from utils.mesh import read_mesh, write_mesh

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")]


def _open(url: str, *extra: str) -> tuple[str, list[str]]:
    """(DOM after the page ran, console lines) of ``url`` in headless Chromium."""
    args = [CHROMIUM, "--headless", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
            "--enable-logging=stderr", "--virtual-time-budget=20000", "--window-size=900,900", *extra]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    out = subprocess.run(args + ["--dump-dom", url], capture_output=True, text=True, timeout=180)
    console = [line for line in out.stderr.splitlines() if ":CONSOLE" in line]
    return out.stdout, console


def _silhouette(dom: str) -> np.ndarray:
    m = re.search(r'<pre id="result">data:image/png;base64,([^<]+)</pre>', dom)
    assert m, dom[-500:]
    png = base64.b64decode(html.unescape(m.group(1)))
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    return img > 127


def _our_silhouette(clip: Path, k: int) -> np.ndarray:
    from micalib.render.raster import rasterize

    verts, faces = read_mesh(clip / "mesh" / f"{k:05d}.ply")
    frame = read_frame(clip / "checkpoint" / f"{k:05d}.frame")
    cv = frame["opencv"]
    kk, r, t = (np.asarray(cv[n], np.float64).reshape(s) for n, s in (("K", (3, 3)), ("R", (3, 3)), ("t", (3,))))
    cam = verts @ r.T + t
    uvw = cam @ kk.T
    # the rasteriser's pixels have their centres at integers (OpenCV)
    screen = np.concatenate([uvw[:, :2] / uvw[:, 2:] - 0.5, cam[:, 2:]], 1)  # the .frame K: centres at i + 0.5
    h, w = (int(x) for x in np.asarray(frame["img_size"]).reshape(2))
    return rasterize(screen, faces, h, w).mask.reshape(h, w).numpy().astype(bool)


def test_clip_page_silhouettes_match_our_rasteriser(exact_clip):  # noqa: F811
    index = exact_clip / "index.html"
    assert index.is_file()  # written by track.py
    for k in (0, N_FRAMES // 2, N_FRAMES - 1):
        dom, console = _open(index.as_uri() + f"?frame={k}&silhouette=1")
        assert console == []
        ours, theirs = _our_silhouette(exact_clip, k), _silhouette(dom)
        assert ours.shape == theirs.shape and ours.sum() > 1000
        iou = (ours & theirs).sum() / (ours | theirs).sum()
        print(f"frame {k}: IoU {iou:.4f}, {ours.sum()} px")
        assert iou >= 0.98, (k, iou)


def test_clip_page_opens_without_console_messages(exact_clip):  # noqa: F811
    dom, console = _open((exact_clip / "index.html").as_uri() + "?frame=3")
    assert console == []
    assert "wireframe" in dom and "landmarks" in dom and 'src="input/00003.png"' in dom


def test_page_without_webgl_says_so(exact_clip):  # noqa: F811
    dom, _ = _open((exact_clip / "index.html").as_uri(), "--disable-webgl", "--disable-3d-apis")
    assert "<title>no WebGL</title>" in dom


def test_demo_page_lists_meshes_and_loads_one(tmp_path, capsys):
    rng = np.random.default_rng(0)
    from tests.synthetic_flame import _random_topology

    verts, faces = _random_topology(rng)
    for name in ("alice", "bob", "group/fused"):
        (tmp_path / name).mkdir(parents=True)
        write_mesh(tmp_path / name / "mesh.ply", verts * 1000.0, faces)
    assert viewer_main([str(tmp_path)]) == 0
    index = Path(capsys.readouterr().out.strip())
    assert index == tmp_path / "index.html"
    assert len(list((tmp_path / "viewer" / "meshes").glob("*.js"))) == 3
    dom, console = _open(index.as_uri())
    assert console == []
    assert dom.count('class="row') == 3 and "alice (drag to orbit" in dom
    # only the shown mesh's script was loaded
    assert 'src="viewer/meshes/00000.js"' in dom and "meshes/00001.js" not in dom

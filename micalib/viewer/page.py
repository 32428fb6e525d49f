"""The viewer page: one ``index.html`` that opens by double-click (``file://``, no server, no network).

What a ``file://`` page may do in Chromium shapes the layout: no ``fetch``/XHR of files and no
ES-module imports from files, so everything is a classic ``<script src>``: three.js bundled into
one classic script (``static/three.bundle.js``, built by ``micalib/viewer/build/build.sh`` from
npm's ``three``, MIT licence beside it), ``static/viewer.js``, and the data as ``data.js``
(``window.MICA_VIEW = {...}``, the ``.glb`` base64-encoded). Input frames are ``<img>`` elements
under a transparent WebGL canvas (file images are cross-origin for WebGL textures).

- ``write_tracking_page(folder, glb_path)``: a tracked clip ``OUT/NAME`` -> ``OUT/NAME/index.html``
  + ``OUT/NAME/viewer/{data.js, three.bundle.js, viewer.js, THREE_LICENSE.txt}``: the frames
  (``input/NNNNN.png``) with the animated mesh drawn through the tracked camera, principal point
  applied through a custom projection matrix; play/pause, a frame slider, wireframe and landmark
  toggles (the detected landmarks of ``landmarks.npz``, mapped into the crop by ``crop.json``).
- ``write_demo_page(output_dir, arcface_dir)``: a demo folder -> ``OUTPUT/index.html`` + ``viewer/``:
  a row per mesh (crop, summary row) and an orbitable 3D view; each mesh's ``.glb`` is its own
  ``viewer/meshes/NNNNN.js``, loaded when the mesh is shown, so any number of meshes is fine. A
  re-run with fewer meshes removes the scripts of its own naming (``NNNNN.js`` in ``viewer/meshes``)
  that the new page does not name, after the new ``data.js`` is in place (the page never names a
  missing script); other files there are left alone.

The page's query string drives the tests: ``?frame=K&silhouette=1`` renders frame K's silhouette
(white on black, the frame's pixel size) and writes its PNG data URL into ``#result``.
"""
from __future__ import annotations

import base64
import csv
import html
import json
import os
import re
import shutil
from pathlib import Path
from typing import Union
from urllib.parse import quote

import numpy as np
from loguru import logger

from utils.errors import MICAError
from utils.io import atomic_write_text

PathLike = Union[str, os.PathLike]  # noqa: UP007
STATIC = Path(__file__).resolve().parent / "static"
STATIC_FILES = ("three.bundle.js", "viewer.js", "THREE_LICENSE.txt")
VIEWER_DIR = "viewer"
MESHES_DIR = "meshes"
# the demo page's per-mesh scripts, viewer/meshes/00000.js ... (more digits past 99999)
MESH_SCRIPT = re.compile(r"\d{5,}\.js")

_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<style>
body {{ font-family: sans-serif; margin: 0; background: #1e1f22; color: #ddd; }}
#app {{ padding: 8px; }}
.stage {{ position: relative; display: inline-block; background: #000; }}
.stage img, .stage canvas {{ position: absolute; left: 0; top: 0; width: 100%; height: 100%; }}
.controls {{ margin: 6px 0; display: flex; gap: 10px; align-items: center; flex-wrap: wrap; }}
.controls input[type=range] {{ width: 360px; }}
#app.demo {{ display: flex; gap: 8px; align-items: flex-start; }}
.list {{ flex: 0 0 360px; max-height: 92vh; overflow-y: auto; }}
.row {{ display: flex; gap: 8px; padding: 4px; cursor: pointer; border-bottom: 1px solid #333; }}
.row.sel {{ background: #2f3b52; }}
.row img {{ width: 72px; height: 72px; object-fit: cover; background: #000; }}
.row table {{ font-size: 11px; }}
.panel {{ flex: 0 0 auto; }}
.panel canvas {{ background: #2a2b30; }}
#nowebgl {{ color: #f88; font-size: 18px; display: none; }}
#result {{ display: none; }}
</style></head>
<body><div id="app"><div id="nowebgl">This page needs WebGL, which this browser has switched off or lacks.</div></div>
<pre id="result"></pre>
<script src="{v}/three.bundle.js"></script>
<script src="{v}/data.js"></script>
<script src="{v}/viewer.js"></script>
</body></html>
"""


def _copy_static(dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in STATIC_FILES:
        shutil.copyfile(STATIC / name, dst / name)


def _write_page(folder: Path, title: str, data: dict) -> Path:
    vdir = folder / VIEWER_DIR
    _copy_static(vdir)
    atomic_write_text(vdir / "data.js", "window.MICA_VIEW = " + json.dumps(data, separators=(",", ":")) + ";\n",
                      fsync=False)
    index = folder / "index.html"
    title = title.encode("utf-8", "surrogateescape").decode("utf-8", "replace")  # a name of non-UTF-8 bytes
    atomic_write_text(index, _HTML.format(title=html.escape(title), v=VIEWER_DIR), fsync=False)
    return index


def _landmarks(folder: Path, n: int, path: Path | None = None) -> dict | None:
    """Detected landmarks (``path``, default ``folder/landmarks.npz``: the ``--landmarks`` schema,
    input pixels) in crop pixels per output frame, int16 quarter pixels (-32768 = missing), base64;
    None without them or ``crop.json``."""
    try:
        crop = json.loads((folder / "crop.json").read_text())
        with np.load(folder / "landmarks.npz" if path is None else path, allow_pickle=False) as z:
            sets = {k: np.asarray(z[k], np.float64) for k in ("mediapipe", "ibug68") if k in z.files}
    except (OSError, ValueError, KeyError):
        return None
    if not sets or len(crop.get("frames", [])) < n:
        return None
    key = "mediapipe" if "mediapipe" in sets else "ibug68"
    pts = sets[key]
    out = np.full((n, pts.shape[1], 2), -32768, np.int16)
    for k in range(n):
        entry = crop["frames"][k]
        i = int(entry.get("input_frame", k))
        if i >= len(pts):
            continue
        m = np.asarray(entry["matrix"], np.float64)
        p = pts[i] @ m[:, :2].T + m[:, 2]
        ok = np.isfinite(p).all(1) & (np.abs(p) < 8000).all(1)
        out[k, ok] = np.round(p[ok] * 4).astype(np.int16)
    return {"set": key, "points": int(pts.shape[1]), "data": base64.b64encode(out.tobytes()).decode()}


def write_tracking_page(folder: PathLike, glb_path: PathLike, landmarks_path: PathLike | None = None) -> Path:
    """The page of a tracked clip (see the module docstring); returns ``folder/index.html``.
    ``landmarks_path``: track.py's ``--landmarks`` file (default: the folder's ``landmarks.npz``)."""
    from micalib.export.gltf import clip_fps

    folder = Path(folder)
    from micalib.tracking.layout import CHECKPOINT, FRAME_FILES, INPUT
    from micalib.tracking.outputs import frame_name

    n = sum(1 for p in (folder / CHECKPOINT).glob("*.frame") if FRAME_FILES[CHECKPOINT].fullmatch(p.name))
    # frame k's crop, or None (a live run from landmark rows has none): one entry per tracked frame
    frames = [f"{INPUT}/{frame_name(k)}.png" if (folder / INPUT / f"{frame_name(k)}.png").is_file() else None
              for k in range(n)]
    data = {"mode": "clip", "name": folder.name, "fps": clip_fps(folder),
            "frames": frames,
            "glb": base64.b64encode(Path(glb_path).read_bytes()).decode(),
            "landmarks": _landmarks(folder, n, None if landmarks_path is None else Path(landmarks_path))}
    return _write_page(folder, f"{folder.name}: tracked clip", data)


def _summary_rows(output_dir: Path) -> dict[str, dict]:
    """Output folder name -> its summary row (``summary.csv``)."""
    rows: dict[str, dict] = {}
    try:
        with open(output_dir / "summary.csv", newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                for name in filter(None, str(row.get("outputs", "")).replace(",", ";").split(";")):
                    rows[name.strip()] = row
    except OSError:
        pass
    return rows


def write_demo_page(output_dir: PathLike, arcface_dir: PathLike | None = None) -> Path:
    """The page of a demo output folder (see the module docstring); returns ``OUTPUT/index.html``."""
    from micalib.export.gltf import mesh_glb_bytes
    from utils.mesh import read_mesh

    output_dir = Path(output_dir)
    meshes = output_dir / VIEWER_DIR / MESHES_DIR
    meshes.mkdir(parents=True, exist_ok=True)
    rows = _summary_rows(output_dir)
    items = []
    for ply in sorted(output_dir.rglob("mesh.ply")):
        name = ply.parent.relative_to(output_dir).as_posix()
        glb = ply.with_suffix(".glb")
        if glb.is_file() and glb.stat().st_mtime_ns >= ply.stat().st_mtime_ns:
            data = glb.read_bytes()
        else:
            try:
                v_mm, faces = read_mesh(ply)
            except MICAError as e:  # one unreadable mesh is left off the page, not the whole page
                logger.warning(f"{e}; left off the viewer page")
                continue
            data = mesh_glb_bytes(v_mm / 1000.0, faces, name)
        script = f"{MESHES_DIR}/{len(items):05d}.js"
        atomic_write_text(output_dir / VIEWER_DIR / script, f"window.MICA_MESH[{json.dumps(name)}] = "
                          f"{json.dumps(base64.b64encode(data).decode())};\n", fsync=False)
        crop = None  # a URL relative to index.html: percent-encoded, so '#', '?', '%' in names stay in the path
        if arcface_dir is not None and (Path(arcface_dir) / f"{name}.jpg").is_file():
            crop = quote(Path(os.path.relpath(Path(arcface_dir) / f"{name}.jpg", output_dir)).as_posix(), errors="surrogateescape")
        elif (ply.parent / "render.png").is_file():
            crop = quote(f"{name}/render.png", errors="surrogateescape")  # non-UTF-8 names: their bytes
        row = rows.get(name, {})
        items.append({"name": name, "script": f"{VIEWER_DIR}/{script}", "crop": crop,
                      "summary": {k2: row[k2] for k2 in ("input", "status", "faces", "score") if row.get(k2)}})
    index = _write_page(output_dir, f"{output_dir.name}: MICA meshes", {"mode": "demo", "items": items})
    _remove_stale_scripts(meshes, {Path(item["script"]).name for item in items})
    return index


def _remove_stale_scripts(meshes: Path, named: set[str]) -> None:
    """Remove the mesh scripts (``MESH_SCRIPT`` names, files only) of an earlier page from
    ``meshes`` that the page just written does not name; call it after ``data.js`` is written."""
    stale = [p for p in meshes.iterdir() if MESH_SCRIPT.fullmatch(p.name) and p.name not in named
             and (p.is_symlink() or p.is_file())]
    for p in stale:
        try:
            p.unlink()
        except FileNotFoundError:  # removed meanwhile
            continue
    if stale:
        logger.info(f"viewer page: removed {len(stale)} mesh script(s) of an earlier page from {meshes}")

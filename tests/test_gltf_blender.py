"""The tracked clip's .glb in Blender (Debian's ``blender``, its bundled glTF importer): imported
with the default options and no fixes after import, the scene's frame rate set to the clip's
first (the importer maps time t to frame t x scene fps), the evaluated mesh at three frames equals
the tracker's ``mesh/NNNNN.ply`` within 0.01 mm, and the imported camera with the README's lens
shift (from the principal point in the camera's extras) projects it onto the ``.frame``'s pixels
within 0.1 px. Skipped without ``blender``.

Blender 3.4's importer calls ``np.bool`` (gone since numpy 1.24): the script sets ``numpy.bool =
bool`` first. Debian's ``blender`` runs on the system Python and needs ``python3-numpy``
(``scripts/install_readers.sh``); where that is missing and the test's Python has Blender's version,
the test lends Blender its own numpy (a folder of links on ``PYTHONPATH``). Blender is Z-up: its importer maps glTF (x, y, z) to (x, -z, y); mapped back here.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.gltf_spec import Glb
from tests.test_gltf import N_FRAMES, exact_clip  # noqa: F401  (fixture)
from utils.mesh import read_mesh

BLENDER = shutil.which("blender")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(BLENDER is None, reason="blender is not installed")]

SCRIPT = """
import numpy
numpy.bool = bool
import json, bpy
glb, fps, frames, out = {glb!r}, {fps!r}, {frames!r}, {out!r}
bpy.ops.wm.read_factory_settings(use_empty=True)
scene = bpy.context.scene
whole = round(fps)
scene.render.fps, scene.render.fps_base = whole, whole / fps
bpy.ops.import_scene.gltf(filepath=glb)
obj = [o for o in scene.objects if o.type == "MESH"][0]
from bpy_extras.object_utils import world_to_camera_view
cam = [o for o in scene.objects if o.type == "CAMERA"][0]
w, h = cam["imageSize"] if "imageSize" in cam.keys() else cam.data["imageSize"]
scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = w, h, 100
extras = cam if "ndcOffset" in cam.keys() else cam.data
ox, oy = extras["ndcOffset"]
cam.data.shift_x, cam.data.shift_y = -ox * w / (2 * max(w, h)), -oy * h / (2 * max(w, h))  # README's steps
result = {{"version": bpy.app.version_string, "frames": {{}}, "pixels": {{}}}}
for k in frames:
    scene.frame_set(k)
    ev = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
    me = ev.to_mesh()
    mw = ev.matrix_world
    co = [mw @ v.co for v in me.vertices]
    result["frames"][str(k)] = [list(c) for c in co]
    ndc = [world_to_camera_view(scene, cam, c) for c in co]
    result["pixels"][str(k)] = [[p.x * w, (1 - p.y) * h] for p in ndc]
    ev.to_mesh_clear()
with open(out, "w") as f:
    json.dump(result, f)
"""


def _blender_env(tmp: Path) -> dict:
    """Environment for Blender: its own numpy, or the test's when it has none."""
    probe = [BLENDER, "-b", "--factory-startup", "--python-use-system-env", "--python-exit-code", "1",
             "--python-expr", "import numpy"]
    env = dict(os.environ)
    if subprocess.run(probe, capture_output=True, timeout=120, env=env).returncode == 0:
        return env
    site = Path(np.__file__).resolve().parent.parent
    links = tmp / "blender_numpy"
    links.mkdir()
    for name in ("numpy", "numpy.libs"):
        if (site / name).exists():
            (links / name).symlink_to(site / name)
    env["PYTHONPATH"] = str(links)
    if subprocess.run(probe, capture_output=True, timeout=120, env=env).returncode != 0:
        pytest.skip("Blender's Python has no numpy (install python3-numpy: scripts/install_readers.sh)")
    return env


def test_blender_evaluates_the_tracker_meshes(exact_clip, tmp_path):  # noqa: F811
    glb = exact_clip / f"{exact_clip.name}.glb"
    g = Glb(glb.read_bytes())
    times = g.accessor(g.json["animations"][0]["samplers"][0]["input"])[:, 0]
    fps = float(round((len(times) - 1) / times[-1], 6))
    frames = [0, N_FRAMES // 2, N_FRAMES - 1]
    out = tmp_path / "blender.json"
    script = SCRIPT.format(glb=str(glb), fps=fps, frames=frames, out=str(out))
    run = subprocess.run([BLENDER, "-b", "--factory-startup", "--python-use-system-env", "--python-exit-code", "1",
                          "--python-expr", script], capture_output=True, text=True, timeout=300,
                         env=_blender_env(tmp_path))
    assert run.returncode == 0 and out.is_file(), run.stdout[-2000:] + run.stderr[-2000:]
    result = json.loads(out.read_text())
    worst = 0.0
    for k in frames:
        b = np.asarray(result["frames"][str(k)], np.float64)
        gltf = np.stack([b[:, 0], b[:, 2], -b[:, 1]], 1)  # Blender Z-up -> glTF Y-up
        ply = read_mesh(exact_clip / "mesh" / f"{k:05d}.ply")[0]
        assert gltf.shape == ply.shape
        worst = max(worst, float(np.abs(gltf - ply).max()))
    print(f"Blender {result['version']}: largest vertex difference {worst * 1e3:.5f} mm over frames {frames}")
    assert worst < 1e-5
    # the imported camera with the README's lens shift projects onto the .frame's pixels
    from micalib.tracking.outputs import read_frame

    px_err = 0.0
    for k in frames:
        cv = read_frame(exact_clip / "checkpoint" / f"{k:05d}.frame")["opencv"]
        kk, r, t = (np.asarray(cv[n], np.float64).reshape(s) for n, s in (("K", (3, 3)), ("R", (3, 3)), ("t", (3,))))
        ply = read_mesh(exact_clip / "mesh" / f"{k:05d}.ply")[0]
        uvw = (ply @ r.T + t) @ kk.T
        want = uvw[:, :2] / uvw[:, 2:]  # the .frame K: pixel i spans [i, i + 1], as Blender's
        px_err = max(px_err, float(np.abs(np.asarray(result["pixels"][str(k)]) - want).max()))
    print(f"Blender camera: largest pixel difference {px_err:.4f} px")
    assert px_err < 0.1

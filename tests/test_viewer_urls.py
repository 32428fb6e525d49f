"""The viewer pages' links with odd file names (no browser): every URL the page hands the
browser (``img.src`` of the crops, ``script.src`` of the meshes) resolves, by RFC 3986 as a
browser resolves it against ``index.html``'s file:// URL (``urllib.parse.urljoin``), to the file
it names. A name with ``#``, ``?`` or ``%`` cut the URL short (fragment / query) or decoded to
another file before the crop paths were percent-encoded. Also what one bad clip or mesh costs the
page of a folder: only its own row / page."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from urllib.parse import unquote, unquote_to_bytes, urljoin, urlsplit

import numpy as np
import pytest

from micalib.viewer.page import write_demo_page
from tests.synthetic_flame import _random_topology
from utils.errors import MICAError
from utils.mesh import write_mesh

NAMES = ("photo #1", "what?", "100% me", "café", "it's \"quoted\"", "a</script><script>alert(1)", os.fsdecode(b"latin1 caf\xe9"))  # the last: not UTF-8


def _data(index: Path) -> dict:
    text = (index.parent / "viewer" / "data.js").read_text()
    m = re.fullmatch(r"window\.MICA_VIEW = (.*);\n", text, re.S)
    assert m, text[:200]
    return json.loads(m.group(1))


def _target(index: Path, url: str) -> Path:
    """The file a browser opens for ``url`` written in ``index``."""
    parts = urlsplit(urljoin(index.as_uri(), url))
    assert parts.scheme == "file" and not parts.query and not parts.fragment, url
    return Path(os.fsdecode(unquote_to_bytes(parts.path)))  # the bytes of the file name


@pytest.mark.parametrize("with_arcface", [False, True])
def test_demo_page_urls_reach_their_files_with_odd_names(tmp_path, with_arcface):
    verts, faces = _random_topology(np.random.default_rng(0))
    out, arc = tmp_path / "out dir", tmp_path / "arc#face"
    for name in NAMES:
        (out / name).mkdir(parents=True)
        write_mesh(out / name / "mesh.ply", verts * 1000.0, faces)
        (out / name / "render.png").write_bytes(b"render of " + os.fsencode(name))
        (arc / name).parent.mkdir(parents=True, exist_ok=True)
        (arc / f"{name}.jpg").write_bytes(b"crop of " + os.fsencode(name))
    index = write_demo_page(out, arc if with_arcface else None)
    items = _data(index)["items"]
    assert sorted(i["name"] for i in items) == sorted(NAMES)
    for item in items:
        expected = arc / f"{item['name']}.jpg" if with_arcface else out / item["name"] / "render.png"
        assert _target(index, item["crop"]).resolve() == expected.resolve(), item["crop"]
        script = _target(index, item["script"])
        assert f"window.MICA_MESH[{json.dumps(item['name'])}]" in script.read_text()
    # no name reaches the HTML itself: the page is the same whatever the names
    assert all(unquote(n) not in index.read_text() for n in NAMES)


def test_one_unreadable_mesh_costs_only_itself(tmp_path):
    """demo.py --glb's last steps (``demo_glb``, the page) go on past a ``mesh.ply`` they cannot
    read (a user's file, a cut-short copy): the readable meshes get their .glb and their row."""
    from micalib.export.gltf import demo_glb

    verts, faces = _random_topology(np.random.default_rng(0))
    for name in ("a", "c"):
        (tmp_path / name).mkdir()
        write_mesh(tmp_path / name / "mesh.ply", verts * 1000.0, faces)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "mesh.ply").write_text("ply\nformat ascii 1.0\nelement vertex 5\n")
    written = demo_glb(tmp_path)
    assert sorted(p.parent.name for p in written) == ["a", "c"]
    assert not (tmp_path / "b" / "mesh.glb").exists()
    index = write_demo_page(tmp_path)
    items = _data(index)["items"]
    assert [i["name"] for i in items] == ["a", "c"]
    for item in items:  # each row's script holds that row's mesh
        assert f"window.MICA_MESH[{json.dumps(item['name'])}]" in _target(index, item["script"]).read_text()


def _clip(root: Path, name: str, glb_age_s: float | None) -> Path:
    """A tracked-clip folder with one .frame and (unless None) NAME.glb ``glb_age_s`` older than it."""
    import os

    clip = root / name
    (clip / "checkpoint").mkdir(parents=True)
    frame = clip / "checkpoint" / "00000.frame"
    frame.write_bytes(b"frame")
    if glb_age_s is not None:
        glb = clip / f"{name}.glb"
        glb.write_bytes(b"glTF")
        t = frame.stat().st_mtime_ns - int(glb_age_s * 1e9)
        os.utime(glb, ns=(t, t))
    return clip


def test_viewer_of_a_track_folder_goes_past_a_clip_without_its_glb(tmp_path, capsys):
    """``python -m micalib.viewer OUT`` over several clips: a clip without NAME.glb, or with one
    older than its frames (a run went on after it), is named with the fix and costs only its page."""
    from micalib.viewer.__main__ import main

    _clip(tmp_path, "a", None)
    _clip(tmp_path, "b", 0.0)
    _clip(tmp_path, "c", 60.0)
    assert main([str(tmp_path)]) == 1
    assert capsys.readouterr().out.split() == [str(tmp_path / "b" / "index.html")]
    assert (tmp_path / "b" / "index.html").is_file()
    assert not (tmp_path / "a" / "index.html").exists() and not (tmp_path / "c" / "index.html").exists()
    with pytest.raises(MICAError, match="older than the clip's checkpoint"):
        main([str(tmp_path / "c")])


def test_clip_page_has_one_entry_per_tracked_frame(tmp_path):
    """Frame k's background is ``input/k.png`` or none: a live run from landmark rows writes no
    crops (its page had zero frames, so no slider, no animation); a missing crop shifted every later
    frame's background onto the wrong frame; a stray PNG in input/ is not a frame."""
    from micalib.viewer.page import write_tracking_page

    clip = _clip(tmp_path, "c", 0.0)
    for k in (1, 2):
        (clip / "checkpoint" / f"{k:05d}.frame").write_bytes(b"frame")
    (clip / "input").mkdir()
    for name in ("00000.png", "00002.png", "notes.png"):
        (clip / "input" / name).write_bytes(b"png")
    frames = _data(write_tracking_page(clip, clip / "c.glb"))["frames"]
    assert frames == [quote_path(clip, "input/00000.png"), None, quote_path(clip, "input/00002.png")]
    for name in ("00000.png", "00002.png", "notes.png"):
        (clip / "input" / name).unlink()
    assert _data(write_tracking_page(clip, clip / "c.glb"))["frames"] == [None, None, None]


def quote_path(clip: Path, rel: str) -> str:
    """``rel`` if it reaches ``clip/rel`` from the page (a URL of an existing file)."""
    assert _target(clip / "index.html", rel) == clip / rel and (clip / rel).is_file()
    return rel


def test_rerun_with_fewer_meshes_removes_only_its_own_stale_scripts(tmp_path, monkeypatch):
    """A re-run into the same OUTPUT with fewer meshes left viewer/meshes/00002.js ... of the first
    page behind. Now exactly the scripts data.js names remain, removed only after data.js names the
    new set, and nothing but the page's own NNNNN.js files is touched."""
    import shutil

    verts, faces = _random_topology(np.random.default_rng(0))
    for name in ("a", "b", "c", "d"):
        (tmp_path / name).mkdir()
        write_mesh(tmp_path / name / "mesh.ply", verts * 1000.0, faces)
    index = write_demo_page(tmp_path)
    meshes = tmp_path / "viewer" / "meshes"
    assert sorted(p.name for p in meshes.iterdir()) == [f"{k:05d}.js" for k in range(4)]
    users = ["notes.txt", "00001.js.bak", "abc.js", "0001.js", "123456.json"]
    for name in users:
        (meshes / name).write_text("the user's")
    (meshes / "00009.js").mkdir()  # a folder of that name is not a script the page wrote
    shutil.rmtree(tmp_path / "b")
    shutil.rmtree(tmp_path / "d")
    seen = []
    unlink = Path.unlink

    def watched(self, *args, **kwargs):
        if self.parent == meshes:
            seen.append([i["name"] for i in _data(index)["items"]])
        return unlink(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", watched)
    write_demo_page(tmp_path)
    items = _data(index)["items"]
    assert [i["name"] for i in items] == ["a", "c"]
    assert seen == [["a", "c"], ["a", "c"]]  # two stale scripts, each removed once data.js named the new set
    left = sorted(p.name for p in meshes.iterdir())
    assert left == sorted(["00000.js", "00001.js", "00009.js", *users])
    assert all((meshes / n).read_text() == "the user's" for n in users)
    for item in items:
        assert f"window.MICA_MESH[{json.dumps(item['name'])}]" in _target(index, item["script"]).read_text()

"""``python -m micalib.viewer FOLDER``: write the viewer page (``micalib/viewer/page.py``) of a
tracking folder (``OUT/NAME``, needs ``NAME.glb``: ``python -m micalib.export.gltf OUT/NAME``), of
every clip in a ``track.py -o`` folder, or of a demo output folder; prints the page paths."""
from __future__ import annotations

import argparse
from pathlib import Path

from loguru import logger

from utils.errors import MICAError, run_main
from utils.log_setup import setup_logging


def _glb_problem(clip: Path) -> str | None:
    """Why ``clip/NAME.glb`` cannot make the page (absent, or older than a ``.frame``: a run that went
    on after it was written), with the fix; None when it can."""
    glb = clip / f"{clip.name}.glb"
    fix = f"write it with: python -m micalib.export.gltf {clip}"
    if not glb.is_file():
        return f"{glb} not found; {fix}"
    newest = max((p.stat().st_mtime_ns for p in (clip / "checkpoint").glob("*.frame")), default=0)
    if glb.stat().st_mtime_ns < newest:
        return f"{glb} is older than the clip's checkpoint/*.frame (it lacks the frames tracked since); {fix}"
    return None


def main(argv=None) -> int:
    from micalib.viewer.page import write_demo_page, write_tracking_page

    p = argparse.ArgumentParser(prog="python -m micalib.viewer", description="write index.html to look at results")
    p.add_argument("folder", help="tracking folder OUT/NAME, track.py's -o folder, or demo.py's -o folder")
    p.add_argument("-a", "--arcface", default=None, help="demo.py's -a folder (the crops shown beside the meshes)")
    args = p.parse_args(argv)
    folder = Path(args.folder)
    if not folder.is_dir():
        raise MICAError(f"{folder} is not a folder; pass a tracking folder OUT/NAME or a demo output folder")
    clips = [folder] if (folder / "checkpoint").is_dir() else sorted(d for d in folder.iterdir() if (d / "checkpoint").is_dir())
    if clips and not any(folder.rglob("mesh.ply")):
        problems = [p for p in map(_glb_problem, clips) if p]
        if len(problems) == len(clips):
            raise MICAError(problems[0])
        for clip in clips:  # a clip without its .glb costs only its own page
            if not _glb_problem(clip):
                print(write_tracking_page(clip, clip / f"{clip.name}.glb"))
        for problem in problems:
            logger.warning(problem)
        return 1 if problems else 0
    if not any(folder.rglob("mesh.ply")):
        raise MICAError(f"{folder} holds no tracked clip (checkpoint/) and no demo mesh (NAME/mesh.ply)")
    print(write_demo_page(folder, args.arcface))
    return 0


if __name__ == "__main__":
    setup_logging()
    run_main(main)

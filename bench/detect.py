"""Photo preparation speed: read, detect (MTCNN, and SCRFD when antelopev2 is installed), align,
and the CPU preview render of a FLAME-sized mesh.

Median milliseconds per image over ``--repeat`` passes, stages interleaved per image so all
numbers come from the same (noisy, shared) machine state.

Usage::

    python bench/detect.py [--images ../shared/data/faces] [--antelopev2 ~/.insightface/models/antelopev2]
                           [--repeat 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from micalib.render.preview import render_preview  # noqa: E402
from models.detectors import MTCNN, SCRFD, SCRFD_FILE, pick_centre_face  # noqa: E402
from utils.alignment import norm_crop, to_network_input  # noqa: E402
from utils.errors import MICAError, run_main  # noqa: E402
from utils.image_io import list_images, read_image  # noqa: E402


def _mesh(shared: Path) -> tuple[np.ndarray, np.ndarray]:
    """FLAME's template when ../shared is present, else an icosphere of similar size (10242 v / 20480 f)."""
    import trimesh

    obj = shared / "data" / "flame_public" / "head_template.obj"
    mesh = trimesh.load(obj, process=False) if obj.is_file() else trimesh.creation.icosphere(subdivisions=5)
    return np.asarray(mesh.vertices) * 1000.0, np.asarray(mesh.faces)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", default=str(ROOT.parent / "shared" / "data" / "faces"))
    ap.add_argument("--antelopev2", default="~/.insightface/models/antelopev2")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    paths = list_images(args.images)
    if not paths:
        raise MICAError(f"no images in {args.images} (pass --images FOLDER)")
    detectors = {"mtcnn": MTCNN()}
    scrfd_path = Path(args.antelopev2).expanduser() / SCRFD_FILE
    if scrfd_path.is_file():
        detectors["scrfd"] = SCRFD(scrfd_path, det_size=(224, 224))
    verts, faces = _mesh(ROOT.parent / "shared")
    times: dict[str, list[float]] = defaultdict(list)
    sizes = []
    for _ in range(args.repeat):
        for p in paths:
            t = time.perf_counter()
            img = read_image(p)
            times["read"].append(time.perf_counter() - t)
            sizes.append(img.shape[:2])
            face = None
            for name, det in detectors.items():
                t = time.perf_counter()
                found = det.detect(img)
                times[f"detect {name}"].append(time.perf_counter() - t)
                face = face or pick_centre_face(found, img.shape)
            if face is None:
                continue
            t = time.perf_counter()
            crop = norm_crop(img, face.kps, 224)
            to_network_input(norm_crop(img, face.kps, 112))
            times["align (224 + 112)"].append(time.perf_counter() - t)
            t = time.perf_counter()
            render_preview(verts, faces, crop, size=256)
            times["render_preview 256"].append(time.perf_counter() - t)
    px = [h * w / 1e6 for h, w in sizes[: len(paths)]]
    print(f"{len(paths)} images ({min(px):.1f}-{max(px):.1f} Mpx), {args.repeat} passes; mesh {len(verts)} v / "
          f"{len(faces)} f; {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{args.threads} thread(s)")
    print("| stage | median ms / image |\n| --- | ---: |")
    for k, v in times.items():
        print(f"| {k} | {1000 * statistics.median(v):.0f} |")
    return 0


if __name__ == "__main__":
    run_main(main)

"""Scan-to-mesh distance speed: 100k scan points against the 5023-vertex FLAME mesh.

Timed (median of ``--repeat`` runs, methods interleaved):
- ``MeshDistance``: ``testing.geometry`` (exact point-to-triangle, KD-trees of triangle centres,
  proven candidate sets): index build, and the query of all points;
- ``trimesh``: ``trimesh.proximity.closest_point`` (rtree), on a subset, scaled per point;
- ``brute force``: every point against every triangle (Ericson's routine), on a subset, scaled.
Also checks that the three agree (max |difference|) on the subset, and times one whole-image NoW
score (landmark Procrustes + refinement + distances) on a face crop of the scan.

The scan is ``--points`` points sampled uniformly on the mesh surface, moved along the normals by
Gaussian noise (``--noise`` mm). The mesh is ``../shared/data/flame_public/head_template.obj``
scaled to mm (or ``--mesh``); without either, an ellipsoid (icosphere, 10242 vertices).

Usage::

    python bench/eval.py [--points 100000] [--subset 2000] [--repeat 3] [--write-readme]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from testing.geometry import MeshDistance, closest_points_on_triangles  # noqa: E402
from testing.now_eval import score_mesh  # noqa: E402
from utils.errors import run_main  # noqa: E402
from utils.io import atomic_write_text  # noqa: E402

SECTION = "## Evaluation"


def load_bench_mesh(path: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    """(vertices mm, faces, description)."""
    import trimesh

    from utils.mesh import read_mesh

    if path:
        v, f = read_mesh(path)
        return v, f, Path(path).name
    shared = Path(os.environ.get("MICA_SHARED_DIR", ROOT.parent / "shared"))
    tmpl = shared / "data" / "flame_public" / "head_template.obj"
    if tmpl.is_file():
        v, f = read_mesh(tmpl)
        return v * 1000.0, f, "FLAME head_template.obj (x1000, mm)"
    s = trimesh.creation.icosphere(subdivisions=5)
    return np.asarray(s.vertices) * np.array([75.0, 105.0, 95.0]), np.asarray(s.faces), "ellipsoid (icosphere 5)"


def sample_scan(v: np.ndarray, f: np.ndarray, n: int, noise: float, seed: int = 0) -> np.ndarray:
    """n points uniformly on the surface, offset along the face normals by N(0, noise) mm."""
    rng = np.random.default_rng(seed)
    tri = v[f]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    face = rng.choice(len(f), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    bary = np.column_stack([1 - s, s * (1 - r2), s * r2])
    pts = (tri[face] * bary[:, :, None]).sum(axis=1)
    nrm = np.cross(tri[face, 1] - tri[face, 0], tri[face, 2] - tri[face, 0])
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True) + 1e-30
    return pts + rng.normal(scale=noise, size=(n, 1)) * nrm


def brute_force(points: np.ndarray, v: np.ndarray, f: np.ndarray, chunk: int = 50) -> np.ndarray:
    """Every point against every triangle (the oracle; O(N F))."""
    tri = v[f]
    out = np.empty(len(points))
    for s in range(0, len(points), chunk):
        p = points[s:s + chunk]
        q, _ = closest_points_on_triangles(p[:, None], tri[None, :, 0], tri[None, :, 1], tri[None, :, 2])
        out[s:s + chunk] = np.linalg.norm(q - p[:, None], axis=2).min(axis=1)
    return out


def _median_time(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def run(args: argparse.Namespace) -> str:
    import trimesh

    v, f, desc = load_bench_mesh(args.mesh)
    pts = sample_scan(v, f, args.points, args.noise)
    sub = pts[np.linspace(0, len(pts) - 1, args.subset).round().astype(int)]
    tm = trimesh.Trimesh(v, f, process=False)

    rows = []
    t_build, md = _median_time(lambda: MeshDistance(v, f), args.repeat)
    t_query, d_ours = _median_time(lambda: md.query(pts).distances, args.repeat)
    t_sub_ours, d_sub = _median_time(lambda: md.query(sub).distances, args.repeat)
    t_tm, (_, d_tm, _) = _median_time(lambda: trimesh.proximity.closest_point(tm, sub), 1)
    t_bf, d_bf = _median_time(lambda: brute_force(sub, v, f), 1)
    per = args.points / args.subset
    rows.append(("MeshDistance (index build)", t_build, "-"))
    rows.append((f"MeshDistance query, {args.points:,} points", t_query, "1.0x"))
    rows.append((f"trimesh closest_point, {args.subset:,} points x {per:.0f}", t_tm * per, f"{t_tm * per / t_query:.1f}x"))
    rows.append((f"brute force, {args.subset:,} points x {per:.0f}", t_bf * per, f"{t_bf * per / t_query:.1f}x"))
    err_tm = float(np.abs(d_sub - d_tm).max())
    err_bf = float(np.abs(d_sub - d_bf).max())

    # One whole NoW score on a face crop of this scan (front half, like a NoW crop).
    face = pts[pts[:, 2] > np.percentile(pts[:, 2], 80)]
    lm_idx = np.argsort(-v[:, 2])[:7]
    t_score, res = _median_time(lambda: score_mesh(face, v[lm_idx] + 1.0, v, f, v[lm_idx], crop=False), 1)
    rows.append((f"whole NoW score ({len(face):,}-point crop: Procrustes + refinement + distances)", t_score, "-"))

    lines = [
        f"Command: `python bench/eval.py --points {args.points} --subset {args.subset} --repeat {args.repeat}`. "
        "Median seconds; trimesh and brute force are timed on an evenly spread subset and scaled per point.",
        "Goal: 100k scan points in a few seconds on one core, exact (agrees with brute force).",
        "",
        f"Last run: {desc}, {len(v)} vertices / {len(f)} triangles ({md.n_triangles} indexed after splitting); "
        f"scan {args.points:,} surface points + N(0, {args.noise} mm) normal noise; "
        f"{platform.machine()}, {os.cpu_count()} cores (shared), numpy {np.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}.",
        "",
        "| method | seconds | time vs MeshDistance |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {name} | {t:.3f} | {ratio} |" for name, t, ratio in rows]
    lines += [
        "",
        f"Agreement on the subset: max |MeshDistance - brute force| = {err_bf:.1e} mm, "
        f"max |MeshDistance - trimesh| = {err_tm:.1e} mm; whole-score mean error {res.distances.mean():.3f} mm "
        f"for {args.noise} mm noise (expected {args.noise * 0.798:.3f}).",
    ]
    return "\n".join(lines) + "\n"


def write_readme(section_body: str, readme: Path) -> None:
    """Replace the body of the '## Evaluation' section of bench/README.md."""
    text = readme.read_text(encoding="utf-8")
    start = text.index(SECTION) + len(SECTION)
    nxt = text.find("\n## ", start)
    end = len(text) if nxt < 0 else nxt + 1
    atomic_write_text(readme, text[:start] + "\n\n" + section_body + "\n" + text[end:])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mesh", default=None, help="mesh in mm (default: FLAME template from ../shared)")
    p.add_argument("--points", type=int, default=100000)
    p.add_argument("--subset", type=int, default=2000)
    p.add_argument("--noise", type=float, default=0.5)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--write-readme", action="store_true", help="replace the Evaluation section of bench/README.md")
    args = p.parse_args(argv)
    body = run(args)
    print(body)
    if args.write_readme:
        write_readme(body, ROOT / "bench" / "README.md")
    return 0


if __name__ == "__main__":
    run_main(main)

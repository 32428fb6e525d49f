"""Benchmark reports: cumulative error curves (PNG, drawn with Pillow), Markdown tables, JSON summary."""
from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from testing.now_eval import NOW_CHALLENGES, EvalResult
from utils.io import atomic_write_bytes, atomic_write_text

PathLike = str | os.PathLike

# Published NoW numbers (median / mean / std, mm), non-metrical challenge.
PUBLISHED_NOW = {
    "MICA (published)": (0.90, 1.11, 0.92),
    "DECA (published)": (1.09, 1.38, 1.18),
    "Deep3DFaceRecon (published)": (1.11, 1.41, 1.21),
    "RingNet (published)": (1.21, 1.53, 1.31),
    "3DDFA-V2 (published)": (1.23, 1.57, 1.39),
}

_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]

__all__ = ["PUBLISHED_NOW", "cumulative_error_curve", "plot_cumulative_curves", "markdown_table",
           "summary_dict", "write_summary_json"]


def cumulative_error_curve(distances: np.ndarray, bins: int = 100000) -> tuple[np.ndarray, np.ndarray]:
    """NoW's cumulative error curve: histogram of all distances, cumulative percentage.

    Args:
        distances: (N,) mm.
        bins: histogram bins (100000 in NoW).

    Returns:
        x (bins,) the bins' upper edges (mm) and y (bins,) the percentage of distances <= x.
    """
    d = np.asarray(distances, dtype=np.float64).ravel()
    if d.size == 0:
        return np.zeros(0), np.zeros(0)
    counts, edges = np.histogram(d, bins=bins)
    return edges[1:], 100.0 * np.cumsum(counts) / d.size


def plot_cumulative_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: PathLike,
                           x_max: float = 7.0, size: tuple[int, int] = (800, 560), title: str = "") -> None:
    """Draw cumulative error curves (percentage vs error in mm, 0..``x_max``) to a PNG file."""
    w, h = size
    left, right, top, bottom = 70, 20, 40 if title else 20, 60
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    pw, ph = w - left - right, h - top - bottom

    def to_px(x: np.ndarray, y: np.ndarray) -> list[tuple[float, float]]:
        return list(zip((left + np.clip(x / x_max, 0, 1) * pw).tolist(), (top + ph - np.clip(y / 100.0, 0, 1) * ph).tolist(), strict=True))

    for k in range(0, 11):  # grid and y ticks every 10 %
        y = top + ph - k * ph / 10
        draw.line([(left, y), (left + pw, y)], fill=(230, 230, 230))
        draw.text((left - 35, y - 6), f"{10 * k}", fill="black", font=font)
    for k in range(int(np.floor(x_max)) + 1):
        x = left + k * pw / x_max
        draw.line([(x, top), (x, top + ph)], fill=(230, 230, 230))
        draw.text((x - 3, top + ph + 6), f"{k}", fill="black", font=font)
    draw.rectangle([left, top, left + pw, top + ph], outline="black")
    draw.text((left + pw / 2 - 30, h - 30), "error (mm)", fill="black", font=font)
    draw.text((5, top + ph / 2), "%", fill="black", font=font)
    if title:
        draw.text((left, 12), title, fill="black", font=font)
    for i, (name, (x, y)) in enumerate(curves.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        x, y = np.asarray(x), np.asarray(y)
        if x.size:
            keep = np.concatenate([[0.0], x[x <= x_max]]), np.concatenate([[0.0], y[x <= x_max]])
            xs, ys = keep
            xs = np.append(xs, x_max)  # to the right border, at the level reached there
            ys = np.append(ys, np.interp(x_max, x, y))
            step = max(1, len(xs) // 2000)  # 100000 bins: thin out for drawing
            pts = to_px(np.append(xs[::step], xs[-1]), np.append(ys[::step], ys[-1]))
            draw.line(pts, fill=colour, width=2)
        ly = top + 10 + 16 * i
        draw.line([(left + pw - 190, ly + 6), (left + pw - 165, ly + 6)], fill=colour, width=3)
        draw.text((left + pw - 160, ly), name[:28], fill="black", font=font)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def _fmt(v: float) -> str:
    return "-" if v != v else f"{v:.3f}"


def markdown_table(results: Sequence[EvalResult], published: Mapping[str, tuple[float, float, float]] | None = None,
                   groups: Sequence[str] = NOW_CHALLENGES) -> str:
    """Markdown table: one row per method, overall median/mean/std (mm) and per-group medians/means.

    ``published`` rows (name -> (median, mean, std)) are appended for reference (overall only).
    """
    present = [g for g in groups if any(g in r.groups for r in results)]
    present += sorted({g for r in results for g in r.groups} - set(present))
    head = ["method", "metrical", "images", "missing", "median", "mean", "std"] + [f"{g} median / mean" for g in present]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r.method, "yes" if r.metrical else "no", str(r.overall.n_images), str(len(r.missing)),
                 _fmt(r.overall.median), _fmt(r.overall.mean), _fmt(r.overall.std)]
        for g in present:
            st = r.groups.get(g)
            cells.append("-" if st is None else f"{_fmt(st.median)} / {_fmt(st.mean)}")
        rows.append("| " + " | ".join(cells) + " |")
    for name, (med, mean, std) in (published or {}).items():
        rows.append("| " + " | ".join([name, "no", "-", "-", _fmt(med), _fmt(mean), _fmt(std)] + ["-"] * len(present)) + " |")
    return "\n".join(rows) + "\n"


def summary_dict(result: EvalResult) -> dict:
    """JSON-ready summary of one method (numbers in mm)."""
    return {
        "method": result.method,
        "metrical": result.metrical,
        "overall": asdict(result.overall),
        "groups": {g: asdict(s) for g, s in result.groups.items()},
        "missing": result.missing,
        "failed": result.failed,
    }


def write_summary_json(results: Sequence[EvalResult], path: PathLike) -> None:
    """Write the summaries of several methods as one JSON list (atomic)."""
    atomic_write_text(path, json.dumps([summary_dict(r) for r in results], indent=2) + "\n")


def write_reports(results: Sequence[EvalResult], out_dir: PathLike, published: Mapping[str, tuple[float, float, float]] | None = None) -> dict[str, Path]:
    """Everything a run of the scorer leaves in ``out_dir``.

    Per method the official ``METHOD_computed_distances.npy`` (+ ``.meanmedian``); for all methods
    ``cumulative_errors.png`` (all images) and ``cumulative_errors_GROUP.png`` per group,
    ``results.md`` (table) and ``results.json``. Returns the written paths by name.
    """
    from testing.now_eval import write_official_outputs

    out = Path(out_dir)
    written: dict[str, Path] = {}
    for r in results:
        npy, mm = write_official_outputs(r, out)
        written[f"{r.method}_distances"] = npy
        written[f"{r.method}_meanmedian"] = mm
    curves = {r.method: cumulative_error_curve(r.all_distances) for r in results}
    written["curve"] = out / "cumulative_errors.png"
    plot_cumulative_curves(curves, written["curve"], title="cumulative error, all images")
    for g in sorted({g for r in results for g in r.groups}):
        gc = {r.method: cumulative_error_curve(np.concatenate(_group_distances(r, g))) for r in results if g in r.groups}
        written[f"curve_{g}"] = out / f"cumulative_errors_{g}.png"
        plot_cumulative_curves(gc, written[f"curve_{g}"], title=f"cumulative error, {g}")
    groups = [g for g in NOW_CHALLENGES] + sorted({g for r in results for g in r.groups} - set(NOW_CHALLENGES))
    written["table"] = out / "results.md"
    atomic_write_text(written["table"], markdown_table(results, published, groups))
    written["json"] = out / "results.json"
    write_summary_json(results, written["json"])
    return written


def _group_distances(result: EvalResult, group: str) -> list[np.ndarray]:
    return [d for d, g in zip(result.distances, result.item_groups, strict=True) if g == group]

"""The demo pipeline: a folder of photos -> one metrical FLAME reconstruction per face.

Stages (timed separately, see ``DemoRunner.timings``): read + detect, align, network (ArcFace +
mapping), FLAME decode, writing. Bad inputs never stop the run: each gets one line in the log and a
row in ``summary.csv`` / ``summary.json``; the caller turns failures into the exit code.
"""
from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import os
import threading
import time
from collections import defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
from loguru import logger
from tqdm import tqdm

from micalib.face_prep import AlignedFace, aligned_input, detect_and_align
from micalib.outputs import outputs_done, write_reconstruction
from models.flame import M_TO_MM
from utils.errors import MICAError
from utils.image_io import ImageList, list_images, read_image, write_image
from utils.io import atomic_save_npy, atomic_write_text



def _one_torch_thread() -> None:
    """Worker-thread initializer: this thread's torch operations (MTCNN's small convolutions) use one
    core. The workers already share the cores out between images; each of them starting as many
    OpenMP threads as there are cores oversubscribed the CPU (detection took ~10% more CPU time).
    Only with torch's OpenMP backend, where the thread count belongs to the calling thread: with the
    native backend it is global and would also slow the network."""
    if "ATen parallel backend: OpenMP" in torch.__config__.parallel_info():
        torch.set_num_threads(1)


def default_workers() -> int:
    """Worker threads for preparing and writing: the CPU cores this process may use, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


@dataclass
class ItemResult:
    """One row of the summary: an input image and what became of it."""

    input: str
    status: str  # ok | done (finished by an earlier run) | failed
    outputs: List[str] = field(default_factory=list)
    message: str = ""
    faces: int = 0
    score: Optional[float] = None


@dataclass
class _Job:
    """One aligned face waiting for the network."""

    name: str
    item: ItemResult
    aligned: AlignedFace


class StageTimer:
    """Seconds spent per named stage: ``with timer("network"): ...`` (thread-safe; time spent in
    worker threads at once is summed, so the stages can add up to more than the wall time)."""

    def __init__(self) -> None:
        self.seconds: Dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            with self._lock:
                self.seconds[stage] += elapsed


class DemoRunner:
    """Runs the demo over a folder.

    Args:
        predictor: a ``micalib.predictor.Predictor`` (torch or onnxruntime backend).
        detector: object with ``detect(rgb) -> list[Face]``; unused with ``aligned=True``.
        faces: (F, 3) FLAME triangles for the meshes.
        output_dir: per-face folders go here, plus ``summary.csv`` / ``summary.json``.
        arcface_dir: the aligned 224 crops (``NAME.jpg``) and network inputs (``NAME.npy``).
        batch_size: faces per network call.
        all_faces: reconstruct every face (``NAME_0``, ``NAME_1``, ...) instead of the central one.
        aligned: inputs are already ArcFace crops (112 or 224), skip detection.
        render: write ``render.png`` previews.
        overwrite: redo items whose outputs already exist.
        fuse: also average the identity of all images of each sub-folder (one person) into
            ``OUTPUT/SUBFOLDER/fused/`` with ``spread.json`` (per-image deviation in mm).
        prefetch: images read, detected and aligned ahead in worker threads while the network
            runs (0 = never during a network call). Stage timings then overlap.
        workers: threads that read, detect and align the images of a batch at the same time and
            write its outputs at the same time (1 = one after the other). Without ``prefetch`` they
            run between network calls, so they never compete with a network running on the CPU.
            With batch size 1 there is one image at a time, so only ``prefetch`` can use them; with
            ``prefetch`` they prepare, and the outputs are written by the calling thread.
    """

    def __init__(self, predictor, detector, faces: np.ndarray, output_dir: Path, arcface_dir: Path,
                 batch_size: int = 8, all_faces: bool = False, aligned: bool = False, render: bool = True,
                 overwrite: bool = False, fuse: bool = False, prefetch: int = 0, workers: int = 1):
        self.predictor = predictor
        self.detector = detector
        self.faces = np.asarray(faces)
        self.output_dir = Path(output_dir)
        self.arcface_dir = Path(arcface_dir)
        self.batch_size = max(1, int(batch_size))
        self.all_faces = all_faces
        self.aligned = aligned
        self.render = render
        self.overwrite = overwrite
        self.fuse = fuse
        self.prefetch = max(0, int(prefetch))
        self.workers = max(1, int(workers))
        self.timings = StageTimer()
        self._pool: Optional[ThreadPoolExecutor] = None  # set while run() works

    # ------------------------------------------------------------------ inputs
    def _name(self, path: Path, root: Path) -> str:
        rel = path.relative_to(root) if path.is_relative_to(root) else Path(path.name)
        return str(rel.with_suffix("")).replace("\\", "/")

    def _already_done(self, name: str) -> bool:
        if self.overwrite:
            return False
        first = name + ("_0" if self.all_faces else "")
        return outputs_done(self.output_dir / first, self.render)

    def _prepare(self, path: Path, name: str, item: ItemResult) -> List[_Job]:
        with self.timings("read+detect"):
            image = read_image(path)
            if self.aligned:
                aligned = [aligned_input(image)]
            else:
                faces = self.detector.detect(image)
        if not self.aligned:
            with self.timings("align"):
                aligned = detect_and_align(image, _Fixed(faces), self.all_faces, source=str(path))
        item.faces = len(aligned)
        scores = [a.face.score for a in aligned if a.face is not None]
        item.score = float(max(scores)) if scores else None
        names = [f"{name}_{i}" for i in range(len(aligned))] if self.all_faces else [name]
        jobs = []
        for job_name, a in zip(names, aligned):
            with self.timings("crops"):
                write_image(self.arcface_dir / f"{job_name}.jpg", a.crop224, fsync=False)  # bulk: see utils.io
                atomic_save_npy(self.arcface_dir / f"{job_name}.npy", a.input112, fsync=False)
            jobs.append(_Job(job_name, item, a))
        return jobs

    def _prepare_or_error(self, path: Path, name: str, item: ItemResult) -> Union[List[_Job], Exception]:
        try:
            return self._prepare(path, name, item)
        except (MICAError, OSError, ValueError) as e:  # one bad image never stops the run
            return e if isinstance(e, MICAError) else MICAError(f"{path}: {e}")

    def _prepare_all(self, todo: Sequence[tuple], wanted: Callable[[], int]) -> Iterator[tuple]:
        """``(item, jobs or error)`` in input order.

        Without a worker pool one image after the other. With one and ``prefetch > 0``, that many
        images are kept in preparation, also while the network runs. With one and no prefetch, the
        ``wanted()`` images that complete the next batch are prepared at the same time, and all of
        them are finished before the first is handed on, so nothing is prepared while the caller
        runs the network.
        """
        if self._pool is None:
            for path, name, item in todo:
                yield item, self._prepare_or_error(path, name, item)
            return
        rest = iter(todo)
        if self.prefetch > 0:
            queue: deque = deque()
            while True:
                while len(queue) < self.prefetch and (entry := next(rest, None)) is not None:
                    queue.append((entry[2], self._pool.submit(self._prepare_or_error, *entry)))
                if not queue:
                    return
                item, future = queue.popleft()
                yield item, future.result()
        while chunk := list(itertools.islice(rest, max(1, wanted()))):
            futures = [self._pool.submit(self._prepare_or_error, *entry) for entry in chunk]
            prepared = [f.result() for f in futures]
            for (_, _, item), jobs in zip(chunk, prepared):
                yield item, jobs

    # ------------------------------------------------------------------ network + outputs
    def _flush(self, jobs: List[_Job], fused_codes: Dict[str, list]) -> None:
        if not jobs:
            return
        batch = np.stack([j.aligned.input112 for j in jobs]).astype(np.float32)
        with self.timings("network"):
            identity = self.predictor.predict_identity(batch)
        with self.timings("flame"):
            decoded = self.predictor.decode(identity)

        def write(i: int) -> Optional[OSError]:
            try:
                self._write(jobs[i].name, decoded, i, identity[i], jobs[i].aligned.crop224)
            except OSError as e:
                return e
            return None

        indices = range(len(jobs))
        if self._pool is not None and self.prefetch == 0:  # the workers are idle between batches
            errors = list(self._pool.map(write, indices))
        else:  # with prefetch they are busy preparing: the writes would queue behind them
            errors = [write(i) for i in indices]
        for i, (job, error) in enumerate(zip(jobs, errors)):  # bookkeeping in input order
            if error is None:
                job.item.outputs.append(job.name)
                if self.fuse:
                    fused_codes[str(Path(job.item.input).parent)].append((job.name, identity[i]))
            else:
                job.item.status, job.item.message = "failed", f"could not write outputs: {error}"
                logger.error(f"{job.item.input}: {job.item.message}")

    def _write(self, name: str, decoded: dict, i: int, identity: np.ndarray, crop: Optional[np.ndarray]) -> None:
        vertices_mm = decoded["vertices"][i] * M_TO_MM
        preview = None
        if self.render:
            from micalib.renderer import render_preview

            with self.timings("render"):
                preview = render_preview(vertices_mm, self.faces, crop)
        with self.timings("write"):
            write_reconstruction(self.output_dir / name, vertices_mm, self.faces, identity,
                                 decoded["landmarks68"][i] * M_TO_MM, decoded["landmarks7"][i] * M_TO_MM, preview)

    def _write_fused(self, fused_codes: Dict[str, list]) -> List[str]:
        written = []
        for group, members in sorted(fused_codes.items()):
            if len(members) < 2:
                continue
            codes = np.stack([c for _, c in members]).astype(np.float32)
            mean = codes.mean(0, keepdims=True)
            decoded = self.predictor.decode(np.concatenate([mean, codes]))
            verts = decoded["vertices"] * M_TO_MM
            per_image = np.linalg.norm(verts[1:] - verts[:1], axis=-1)  # (N, V) mm
            dst_name = str(Path(group) / "fused") if group != "." else "fused"
            self._write(dst_name, {k: v[:1] for k, v in decoded.items()}, 0, mean[0], None)
            spread = {
                "images": [n for n, _ in members],
                "mean_vertex_deviation_mm": [float(x) for x in per_image.mean(1)],
                "max_vertex_deviation_mm": [float(x) for x in per_image.max(1)],
                "coefficient_std": float(codes.std(0).mean()),
            }
            atomic_write_text(self.output_dir / dst_name / "spread.json", json.dumps(spread, indent=2))
            logger.info(f"fused {len(members)} images of '{group}': mean deviation "
                        f"{np.mean(spread['mean_vertex_deviation_mm']):.3f} mm -> {self.output_dir / dst_name}")
            written.append(dst_name)
        return written

    # ------------------------------------------------------------------ driver
    def run(self, input_dir: Path) -> List[ItemResult]:
        """Process every image under ``input_dir`` (recursively); returns one result per image."""
        input_dir = Path(input_dir)
        if not input_dir.exists():
            raise MICAError(f"input folder {input_dir} does not exist")
        paths = ImageList([input_dir]) if input_dir.is_file() else list_images(input_dir, recursive=True)
        root = input_dir.parent if input_dir.is_file() else input_dir
        if not paths and not paths.failures:
            raise MICAError(f"no images found in {input_dir} (jpg, png, bmp, webp, tiff)")
        results: List[ItemResult] = []
        for folder, message in paths.failures:  # sub-folders that could not be listed
            results.append(ItemResult(input=str(folder.relative_to(root)), status="failed", message=message))
            logger.warning(message)
        todo = []
        for path in paths:
            name = self._name(path, root)
            item = ItemResult(input=str(path.relative_to(root)), status="ok")
            results.append(item)
            if self._already_done(name) and not self.fuse:
                item.status, item.message = "done", "outputs exist (use --overwrite to redo)"
            else:
                todo.append((path, name, item))
        pending: List[_Job] = []
        fused_codes: Dict[str, list] = defaultdict(list)
        # batch size 1 without prefetch has one image at a time: nothing for a pool to share out
        parallel = self.prefetch > 0 or (self.batch_size > 1 and self.workers > 1)
        pool = (ThreadPoolExecutor(self.workers, thread_name_prefix="demo-worker", initializer=_one_torch_thread)
                if parallel else None)
        self._pool = pool
        try:
            prepared = self._prepare_all(todo, wanted=lambda: self.batch_size - len(pending))
            for item, jobs in tqdm(prepared, total=len(todo), desc="faces", unit="img"):
                if isinstance(jobs, Exception):
                    item.status, item.message = "failed", str(jobs)
                    logger.warning(str(jobs))
                    continue
                pending.extend(jobs)
                if len(pending) >= self.batch_size:
                    self._flush(pending[: self.batch_size], fused_codes)
                    pending = pending[self.batch_size:]
            while pending:
                self._flush(pending[: self.batch_size], fused_codes)
                pending = pending[self.batch_size:]
        finally:
            self._pool = None
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        if self.fuse:
            self._write_fused(fused_codes)
        self.write_summary(results)
        return results

    def write_summary(self, results: Sequence[ItemResult]) -> None:
        rows = [asdict(r) for r in results]
        for r in rows:
            r["outputs"] = ";".join(r["outputs"])
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0].keys()) if rows else ["input"])
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.output_dir / "summary.csv", buf.getvalue())
        atomic_write_text(self.output_dir / "summary.json", json.dumps([asdict(r) for r in results], indent=2))


class _Fixed:
    """A detector that returns faces found earlier (lets detection and alignment be timed apart)."""

    def __init__(self, faces):
        self.faces = faces

    def detect(self, image):
        return self.faces


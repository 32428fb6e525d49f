"""The demo pipeline: a folder of photos -> one metrical FLAME reconstruction per face.

Stages (timed separately, see ``DemoRunner.timings``): read + detect, align, network (ArcFace +
mapping), FLAME decode, writing. Bad inputs never stop the run: each gets one line in the log and a
row in ``summary.csv`` / ``summary.json``; the caller turns failures into the exit code.

Each input is finished by its completion record (``micalib.inference.records``), written after all of its
files: a re-run redoes exactly the inputs without a complete record, also after a kill half-way
through an input's faces. Output names follow ``micalib.inference.outputs.output_names`` (no two inputs share
a folder). The summary lists every input after every run, also an interrupted one (``pending``).
"""
from __future__ import annotations

import itertools
import json
import multiprocessing
import re
from collections import defaultdict
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePath
from typing import Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
from loguru import logger

from micalib.inference.batching import BatchLoop, GpuBusy, Job, StageTimer
from micalib.inference.decoding import decoder_init, read_or_error
from micalib.inference.output_lock import output_lock
from micalib.inference.outputs import output_files, output_names, write_reconstruction
from micalib.inference.records import (
    PENDING_MESSAGE,
    STATE_DIR,
    ItemResult,
    display,
    done_record,
    rebuild_summary,
    remove_record,
    write_record,
    write_summary,
)
from micalib.inference.scheduling import Schedule
from micalib.inference.sharding import Shard, barrier, usable_cores
from models.detectors import MTCNN
from models.face_prep import aligned_input, detect_and_align
from models.flame import M_TO_MM
from utils.errors import MICAError
from utils.identity import read_identity
from utils.image_io import ImageList, list_images, read_image, write_image
from utils.io import atomic_save_npy, atomic_write_text, folder_relation

__all__ = ["DemoRunner", "DemoOptions", "ItemResult", "StageTimer", "default_workers", "list_inputs", "input_names"]


def _one_torch_thread() -> None:
    """Worker-thread initializer: this thread's torch operations (MTCNN's small convolutions) use one
    core. The workers already share the cores out between images; each of them starting as many
    OpenMP threads as there are cores oversubscribed the CPU (more CPU time per detection: bench/README.md).
    Only with torch's OpenMP backend, where the thread count belongs to the calling thread: with the
    native backend it is global and would also slow the network."""
    if "ATen parallel backend: OpenMP" in torch.__config__.parallel_info():
        torch.set_num_threads(1)


def default_workers(cores: Optional[int] = None) -> int:
    """Worker threads for preparing and writing: ``cores`` (default: the CPU cores this process may
    use; a torchrun rank passes its share, ``sharding.rank_cores``), at most 8."""
    return max(1, min(8, usable_cores() if cores is None else int(cores)))


@dataclass(frozen=True)
class DemoOptions:
    """What a demo run does (``DemoRunner``); demo.py builds it from its command line.

    Attributes:
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
        checkpoint: hash prefix of the network's file (``records.checkpoint_id``), kept in the records.
        batch_detect: detect the faces of a batch of photos in one ``detect_batch`` call (None = when
            the detector runs on a GPU, see ``DemoRunner.detects_in_batches``): the GPU pipeline.
        decode_processes: with batch detection, worker processes that read and decode the photos
            ahead (0 = the calling thread); threads stalled on the GIL in the decoders.
        lock: hold ``OUTPUT/.mica/lock`` while running (``micalib.inference.output_lock``). Shards never take it
            (each writes only its own records); rank 0 of a torchrun run holds it for the run.
        summary: write ``summary.csv`` / ``summary.json`` at the end of ``run`` (in a sharded run
            only where ``shard.writes_summary``: rank 0 of torchrun, from the records of all ranks).
        shard: the part of the inputs this process does (``micalib.inference.sharding``).
    """

    batch_size: int = 8
    all_faces: bool = False
    aligned: bool = False
    render: bool = True
    overwrite: bool = False
    fuse: bool = False
    prefetch: int = 0
    workers: int = 1
    checkpoint: str = ""
    batch_detect: Optional[bool] = None
    decode_processes: int = 0
    lock: bool = True
    summary: bool = True
    shard: Shard = field(default_factory=Shard)

    def __post_init__(self) -> None:
        object.__setattr__(self, "decode_processes", max(0, int(self.decode_processes)))
        for name in ("batch_size", "workers"):
            object.__setattr__(self, name, max(1, int(getattr(self, name))))
        object.__setattr__(self, "prefetch", max(0, int(self.prefetch)))


def list_inputs(input_dir: Path, output_dir: Path, arcface_dir: Path) -> tuple[ImageList, Path]:
    """The images a demo run on ``input_dir`` processes, and the root their names are relative to
    (an ``ImageList``: its ``failures`` are the sub-folders that could not be listed).

    Never inputs: our own output and crop folders when they lie inside the input folder (``-o X/out``
    must not feed the first run's renders and crops to the second), anything under a ``.mica``
    folder, and any folder holding one (the output and crop folders of every earlier run are marked
    so). ``-o`` or ``-a`` equal to the input folder is refused before that, by
    :func:`check_output_folders` (``DemoRunner.run``, ``demo.py``).
    """
    if input_dir.is_file():
        return ImageList([input_dir]), input_dir.parent
    root = input_dir.resolve()
    ours = [Path(d).resolve() for d in (output_dir, arcface_dir)]
    ours = [d for d in ours if d.is_relative_to(root)]  # not when -i is inside -o
    listed = list_images(input_dir, recursive=True)
    marked: Dict[Path, bool] = {}  # folder below the input -> it (or a folder above it) is one of our outputs

    def ours_by_marker(folder: Path) -> bool:
        if folder == input_dir:
            return False
        if folder not in marked:
            marked[folder] = (folder / STATE_DIR).is_dir() or ours_by_marker(folder.parent)
        return marked[folder]

    kept = [p for p in listed if STATE_DIR not in p.relative_to(input_dir).parts[:-1]
            and not ours_by_marker(p.parent)
            and not (ours and any(p.resolve().is_relative_to(d) for d in ours))]
    return ImageList(kept, listed.failures, listed.ignored), input_dir


def check_output_folders(input_dir: Path, output_dir: Path, arcface_dir: Path) -> None:
    """Refuse ``-o`` or ``-a`` equal to the input folder (one line), before anything is written.

    An output folder inside the input folder is allowed (never listed as input, ``list_inputs``),
    and so is an input folder inside ``-o``, except where an input's own output folder
    ``OUTPUT/NAME`` is or contains the input folder: that input fails (``output_folder_clash``),
    as track.py refuses its ``OUT/NAME`` overlapping the input (both by ``utils.io.folder_relation``)."""
    if not Path(input_dir).is_dir():
        return
    for flag, folder in (("-o", output_dir), ("-a", arcface_dir)):
        if folder_relation(input_dir, folder) == "same":
            raise MICAError(f"{flag} {folder} is the input folder: its files would be written among your photos "
                            f"(and overwrite those of the same name); pass another folder for {flag}")


def output_folder_clash(input_dir: Path, output_dir: Path, name: str, all_faces: bool) -> Optional[str]:
    """The one-line failure of an input whose output folder (``OUTPUT/NAME``, with ``all_faces``
    also ``OUTPUT/NAME_k``) is or contains the input folder, so its files would be written among
    the photos; None when apart."""
    try:
        rel = Path(input_dir).resolve().relative_to(Path(output_dir).resolve()).parts
    except ValueError:
        return None  # the input folder is not inside -o
    parts = PurePath(name).parts
    if len(rel) < len(parts) or rel[:len(parts) - 1] != parts[:-1]:
        return None
    last = rel[len(parts) - 1]
    if last == parts[-1] or (all_faces and re.fullmatch(re.escape(parts[-1]) + r"_\d+", last)):
        folder = Path(output_dir).joinpath(*rel[:len(parts)])
        relation = "is" if folder_relation(folder, input_dir) == "same" else "contains"
        return (f"its output folder {folder} {relation} the input folder {input_dir}: its files would be written "
                "among your photos; pass an -o outside the input folder")
    return None


def mark_crop_folder(arcface_dir: Path) -> None:
    """``ARCFACE/.mica/``: marks the crop folder as ours, so no later run reads it as input."""
    marker = Path(arcface_dir) / STATE_DIR / "crops"
    if not marker.is_file():
        atomic_write_text(marker, "aligned crops and network inputs written by demo.py; not inputs\n", fsync=False)


def input_names(paths: Sequence[Path], root: Path) -> List[tuple[PurePath, str]]:
    """``(relative input, NAME)`` of every input, NAME by ``outputs.output_names`` over the whole
    listing (also in a sharded run: a shard selects its inputs after this)."""
    rels = [PurePath(p.relative_to(root).as_posix()) for p in paths]
    names = output_names(rels)
    return [(rel, names[rel]) for rel in rels]


def write_interrupted_summary(input_dir: Path, output_dir: Path, arcface_dir: Path, all_faces: bool = False,
                              render: bool = True) -> None:
    """The summary of a run stopped before it listed its inputs (Ctrl-C while the model loads):
    every input, ``done`` where an earlier run finished it, else ``pending``."""
    paths, root = list_inputs(Path(input_dir), Path(output_dir), Path(arcface_dir))
    rows = []
    for rel, name in input_names(paths, root):
        record = done_record(output_dir, name, rel.as_posix(), output_files(render), all_faces, arcface_dir)
        rows.append(record or ItemResult(input=rel.as_posix(), status="pending", name=name, message=PENDING_MESSAGE))
    write_summary(output_dir, rows)
    logger.warning(f"stopped before any input was processed: the summary lists the {len(rows)} inputs in "
                   f"{Path(output_dir) / 'summary.csv'}; run the same command again to process them")


@dataclass
class _Item:
    """An input being processed: its summary row and how many of its faces are still unwritten."""

    path: Path
    result: ItemResult
    left: int = 0


class DemoRunner:
    """Runs the demo over a folder.

    Args:
        predictor: a ``micalib.predictor.Predictor`` (torch or onnxruntime backend).
        detector: object with ``detect(rgb) -> list[Face]``; unused with ``aligned=True``.
        faces: (F, 3) FLAME triangles for the meshes.
        output_dir: per-face folders go here, plus ``summary.csv`` / ``summary.json``.
        arcface_dir: the aligned 224 crops (``NAME.jpg``) and network inputs (``NAME.npy``).
        options: a ``DemoOptions``; keyword arguments override single fields
            (``DemoRunner(..., batch_size=4)``).
        pool: the executor that prepares and writes (default: ``options.workers`` threads when
            the options call for parallel work); injected as it is, and not shut down.
    """

    def __init__(self, predictor, detector, faces: np.ndarray, output_dir: Path, arcface_dir: Path,
                 options: Optional[DemoOptions] = None, pool: Optional[Executor] = None, **overrides):
        self.predictor = predictor
        self.detector = detector
        self.faces = np.asarray(faces)
        self.output_dir = Path(output_dir)
        self.arcface_dir = Path(arcface_dir)
        self.options = replace(options or DemoOptions(), **overrides)
        self.timings = StageTimer()
        self._injected_pool = pool
        self.gpu_busy = GpuBusy(getattr(predictor, "device", None))
        self._fused_codes: Dict[str, list] = defaultdict(list)

    # ------------------------------------------------------------------ inputs
    def _no_face_hint(self) -> str:
        if isinstance(self.detector, MTCNN):
            return (f"for a small face in a large photo raise detector.mtcnn_max_side (now "
                    f"{self.detector.max_side or 'off'} px, e.g. 1024), or use --detector scrfd with antelopev2")
        return ""

    def _prepare(self, path: Path, name: str, item: _Item) -> List[Job]:
        remove_record(self.output_dir, name)  # redone from here: a kill half-way must not leave it done
        detections = None
        with self.timings("read"):
            image = read_image(path)
        if not self.options.aligned:
            with self.timings("detect"):
                detections = self.detector.detect(image)
        return self._align(path, name, item, image, detections)

    def _align(self, path: Path, name: str, item: _Item, image: np.ndarray, detections) -> List[Job]:
        """Choose and align the ``detections`` of ``image`` (the photo itself with ``aligned``),
        write the crops; one job per face."""
        if self.options.aligned:
            aligned = [aligned_input(image)]
        else:
            with self.timings("align"):
                aligned = detect_and_align(image, _Fixed(detections), self.options.all_faces, source=str(path),
                                           hint=self._no_face_hint())
        item.result.faces = len(aligned)
        scores = [a.face.score for a in aligned if a.face is not None]
        item.result.score = float(max(scores)) if scores else None
        item.left = len(aligned)
        names = [f"{name}_{i}" for i in range(len(aligned))] if self.options.all_faces else [name]
        jobs = []
        for job_name, a in zip(names, aligned):
            with self.timings("crops"):
                write_image(self.arcface_dir / f"{job_name}.jpg", a.crop224, fsync=False)  # bulk: see utils.io
                atomic_save_npy(self.arcface_dir / f"{job_name}.npy", a.input112, fsync=False)
            item.result.crops += [f"{job_name}.jpg", f"{job_name}.npy"]
            jobs.append(Job(job_name, item, a))
        return jobs

    def _prepare_chunk(self, chunk: Sequence[tuple]) -> List[Job]:
        """Batch detection: ``chunk`` = ``((path, name, item), image or error)`` pairs, decoded
        ahead (by ``_decoded``); one ``detect_batch`` call for all photos of the chunk (on the
        detector's device), then alignment photo by photo. Failures are finished here."""
        good = []
        for entry, image in chunk:
            remove_record(self.output_dir, entry[1])
            if isinstance(image, Exception):
                self._prepare_failed(entry, image)
            else:
                good.append((entry, image))
        if not good:
            return []
        if self.options.aligned:
            found = [None] * len(good)
        else:
            with self.timings("detect"), self.gpu_busy.span():
                found = self.detector.detect_batch([image for _, image in good])
        jobs = []
        for ((path, name, item), image), detections in zip(good, found):
            try:
                jobs.extend(self._align(path, name, item, image, detections))
            except (MICAError, OSError, ValueError) as e:
                self._prepare_failed((path, name, item), e if isinstance(e, MICAError) else MICAError(f"{path}: {e}"))
        return jobs

    def _decoded(self, todo: Sequence[tuple], pool: Optional[Executor]) -> Iterator[tuple]:
        """``(entry, image or error)`` in input order: decoded in ``pool`` (worker processes; None =
        here), at most ``2 x batch size`` ahead (the bounded queue in front of the detector and the
        network)."""
        schedule = Schedule(pool, max(2 * self.options.batch_size, self.options.prefetch))
        results = iter(schedule.imap(read_or_error, [(path,) for path, _, _ in todo]))
        for entry in todo:
            with self.timings("read"):  # with worker processes: the time spent waiting for a photo
                _, image = next(results)
            yield entry, image

    def detects_in_batches(self) -> bool:
        """Detection for a whole batch at once (``detect_batch``): ``options.batch_detect``, by
        default when the detector runs on a GPU (MTCNN in torch on CUDA, SCRFD on onnxruntime's CUDA
        provider), where one call per batch instead of one per photo keeps the GPU busy."""
        if self.options.aligned:
            return bool(self.options.batch_detect)
        if not hasattr(self.detector, "detect_batch"):
            return False
        if self.options.batch_detect is not None:
            return self.options.batch_detect
        return detector_on_gpu(self.detector)

    def _prepare_or_error(self, path: Path, name: str, item: _Item) -> Union[List[Job], Exception]:
        try:
            return self._prepare(path, name, item)
        except (MICAError, OSError, ValueError) as e:  # one bad image never stops the run
            return e if isinstance(e, MICAError) else MICAError(f"{path}: {e}")

    # ------------------------------------------------------------------ network + outputs
    def _finish(self, item: _Item, error: Optional[str] = None) -> None:
        """One face of ``item`` is written (or failed, with ``error``); after its last one, its
        record makes it done (``ok``) or remembers why it failed."""
        r = item.result
        if error is not None and r.status != "failed":
            r.status, r.message = "failed", error
            logger.warning(error if r.input in error else f"{r.input}: {error}")
        item.left -= 1
        if item.left > 0:
            return
        if r.status != "failed":
            r.status, r.message = "ok", ""
        try:
            write_record(self.output_dir, r, self.arcface_dir)
        except OSError as e:
            if r.status == "ok":
                r.status, r.message = "failed", f"could not write its completion record: {e}"
                logger.error(f"{r.input}: {r.message}")
            else:
                logger.error(f"{r.input}: could not write its completion record: {e}")

    def _write_job(self, job: Job, decoded: dict, i: int) -> Optional[str]:
        try:
            self._write(job.name, decoded, i, decoded["identity"][i], job.aligned.crop224)
        except OSError as e:
            return f"could not write outputs: {e}"
        return None

    def _job_done(self, job: Job, error: Optional[str], decoded: dict, i: int) -> None:
        if error is None:
            job.item.result.outputs.append(job.name)
            if self.options.fuse:
                parent = str(PurePath(job.item.result.input).parent)
                self._fused_codes[parent].append((job.name, decoded["identity"][i]))
        self._finish(job.item, error)

    def _prepare_failed(self, entry: tuple, error: Exception) -> None:
        item = entry[2]
        item.left = 1
        self._finish(item, str(error))

    def _write(self, name: str, decoded: dict, i: int, identity: np.ndarray, crop: Optional[np.ndarray]) -> None:
        vertices_mm = decoded["vertices"][i] * M_TO_MM
        preview = None
        if self.options.render:
            from micalib.render.preview import render_preview

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
            members = sorted(members, key=lambda m: m[0])  # the same mean whichever run made each member
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
        """Process every image under ``input_dir`` (recursively), or this shard's share of them
        (``options.shard``); returns one result per processed (or already done) image.

        On an interruption (KeyboardInterrupt, which demo.py also raises on SIGTERM) the summary is
        still written, with the unprocessed inputs ``pending``, and the interruption is re-raised.
        """
        input_dir = Path(input_dir)
        if not input_dir.exists():
            raise MICAError(f"input folder {input_dir} does not exist")
        check_output_folders(input_dir, self.output_dir, self.arcface_dir)
        with output_lock(self.output_dir, enabled=self.options.lock and self.options.shard.leader):
            return self._run_locked(input_dir)

    def _record_encoder(self) -> None:
        """``OUTPUT/.mica/encoder.json``: how the network ran (backend, precision, layout, CPU's bf16),
        so that a run's numbers can be traced to the kernels that made them (the leader writes it)."""
        plan = getattr(self.predictor, "plan", None)
        if plan is None or not self.options.shard.leader:
            return
        (self.output_dir / ".mica").mkdir(parents=True, exist_ok=True)
        logger.info("encoder: " + ", ".join(f"{k} {v}" for k, v in plan.items()))
        atomic_write_text(self.output_dir / ".mica" / "encoder.json", json.dumps(plan, indent=2) + "\n", fsync=False)

    def _run_locked(self, input_dir: Path) -> List[ItemResult]:
        opts, shard = self.options, self.options.shard
        paths, root = list_inputs(input_dir, self.output_dir, self.arcface_dir)
        if not paths and not paths.failures:
            raise MICAError(f"no images found in {input_dir} (jpg, png, bmp, webp, tiff)")
        unlisted = []  # sub-folders that could not be listed: a failed row each (in the leader's summary)
        for folder, message in paths.failures if shard.leader or not shard.sharded else ():
            unlisted.append(ItemResult(input=str(folder.relative_to(root)), status="failed", message=message))
            logger.warning(message)
        mark_crop_folder(self.arcface_dir)
        self._record_encoder()
        pairs = input_names(paths, root)  # over the whole listing: a shard selects its inputs after this
        everything = range(len(pairs))
        if opts.fuse:  # the unit is the sub-folder: its images are averaged in one process
            mine = shard.select_groups(everything, group=lambda i: pairs[i][0].parent.as_posix())
        else:
            mine = shard.select(everything, key=lambda i: pairs[i][0].as_posix())
        required = output_files(opts.render)
        # the leader of a torchrun run also looks at the other ranks' inputs: which were done before
        looked_at = everything if shard.distributed and shard.leader else mine
        items: Dict[int, _Item] = {}
        todo = []
        done_before: set = set()
        other_checkpoints = 0
        mine_set = set(mine)
        for i in looked_at:
            rel, name = pairs[i]
            rel_text = rel.as_posix()
            item = _Item(paths[i], ItemResult(input=rel_text, status="pending", name=name, checkpoint=opts.checkpoint,
                                              files=list(required), message=PENDING_MESSAGE))
            clash = output_folder_clash(input_dir, self.output_dir, name, opts.all_faces)
            if clash is not None:
                item.result = ItemResult(input=rel_text, status="failed", name=name, checkpoint=opts.checkpoint,
                                         message=f"{display(rel_text)}: {clash}")
                if i in mine_set:
                    logger.warning(item.result.message)
                    items[i] = item
                continue
            if name != rel.with_suffix("").as_posix() and i in mine_set:
                logger.info(f"{display(rel_text)}: outputs in {display(name)}/ (another input of its folder has "
                            f"the same name, or the name is reserved for --fuse/--all-faces outputs)")
            record = None if opts.overwrite else done_record(self.output_dir, name, rel_text, required,
                                                              opts.all_faces, self.arcface_dir)
            if record is not None:
                done_before.add(name)
                item.result = record
                other_checkpoints += bool(opts.checkpoint and record.checkpoint != opts.checkpoint)
            elif i in mine_set:
                todo.append((paths[i], name, item))
            if i in mine_set:
                items[i] = item
        if other_checkpoints:
            logger.warning(f"{other_checkpoints} inputs were finished with another checkpoint than this run's "
                           f"({opts.checkpoint}) and are kept; --overwrite redoes them")
        if shard.sharded:
            logger.info(f"shard {shard}: {len(mine)} of {len(pairs)} inputs, {len(todo)} to do")
        barrier(shard)  # the leader has seen every record before any rank redoes one
        results = unlisted + [items[i].result for i in mine]
        try:
            self._process(todo)
        except BaseException:  # KeyboardInterrupt, or a fatal error: still leave a summary of every input
            for r in results:
                if r.status == "pending":  # possibly half-way (--all-faces): nothing of it counts yet
                    r.outputs, r.crops, r.faces, r.score, r.message = [], [], 0, None, PENDING_MESSAGE
            if opts.summary and not shard.sharded:  # a shard's records stay; the summary comes from them
                try:
                    write_summary(self.output_dir, results)
                    pending = sum(r.status == "pending" for r in results)
                    logger.warning(f"stopped: {pending} of {len(results)} inputs are pending in "
                                   f"{self.output_dir / 'summary.csv'}; run the same command again to finish them")
                except OSError as e:
                    logger.error(f"could not write the summary to {self.output_dir}: {e}")
            raise
        if opts.fuse:  # inputs done before join their group's mean through their saved identity
            for r in results:
                if r.status == "done" and r.outputs:
                    code = read_identity(self.output_dir / r.outputs[0] / "identity.npy",
                                         "delete that output folder to redo the input, or pass --overwrite")
                    self._fused_codes[str(PurePath(r.input).parent)].append((r.outputs[0], code))
            self._write_fused(self._fused_codes)
        renamed = [r for r in results if r.name and r.name != PurePath(r.input).with_suffix("").as_posix()]
        if renamed:
            logger.info(f"{len(renamed)} inputs share a name with another input of their folder (or have a reserved "
                        f"name) and were given "
                        f"their own output names (see the name column of summary.csv)")
        if not shard.sharded:
            if opts.summary:
                write_summary(self.output_dir, results)
        elif shard.distributed:
            barrier(shard)  # every rank's records are written
            if shard.leader and opts.summary:
                rebuild_summary(self.output_dir, [(rel.as_posix(), name) for rel, name in pairs], earlier=done_before,
                                arcface_dir=self.arcface_dir)
            barrier(shard)  # no rank exits (torchrun would stop the others) before the summary is written
        return results

    def _process(self, todo: Sequence[tuple]) -> None:
        self._fused_codes = defaultdict(list)
        opts = self.options
        if self.detects_in_batches():
            self._process_batch_detection(todo)
            return
        # batch size 1 without prefetch has one image at a time: nothing for a pool to share out
        parallel = opts.prefetch > 0 or (opts.batch_size > 1 and opts.workers > 1)
        own = None
        if parallel and self._injected_pool is None:
            own = ThreadPoolExecutor(opts.workers, thread_name_prefix="demo-worker", initializer=_one_torch_thread)
        schedule = Schedule(own or (self._injected_pool if parallel else None), opts.prefetch)
        try:
            BatchLoop(self.predictor, opts.batch_size, schedule, self.timings, self.gpu_busy).run(
                todo, self._prepare_or_error, self._write_job, self._job_done, self._prepare_failed)
        finally:
            if own is not None:
                own.shutdown(wait=True, cancel_futures=True)

    def _process_batch_detection(self, todo: Sequence[tuple]) -> None:
        """The GPU pipeline: photos decoded ahead in ``decode_processes`` worker processes (bounded
        queue), one ``detect_batch`` per batch of photos on the detector's device, alignment, then
        the network and the writes as in the per-photo pipeline (writes spread over the worker
        threads between batches)."""
        opts = self.options
        decoders = None
        if opts.decode_processes > 0:
            decoders = ProcessPoolExecutor(opts.decode_processes, mp_context=multiprocessing.get_context("spawn"),
                                           initializer=decoder_init)
        writers = None
        if opts.workers > 1 and opts.batch_size > 1:
            writers = ThreadPoolExecutor(opts.workers, thread_name_prefix="demo-writer", initializer=_one_torch_thread)
        try:
            decoded = self._decoded(todo, decoders)
            chunks = iter(lambda: tuple(itertools.islice(decoded, opts.batch_size)), ())
            # chunks are prepared here, one after the other (the decoders run ahead); writes use the threads
            BatchLoop(self.predictor, opts.batch_size, Schedule(), self.timings, self.gpu_busy,
                      writes=Schedule(writers, 0)).run(
                ((c,) for c in chunks), self._prepare_chunk, self._write_job, self._job_done, self._prepare_failed,
                total=-(-len(todo) // opts.batch_size), desc="batches")
        finally:
            for pool in (decoders, writers):
                if pool is not None:
                    pool.shutdown(wait=True, cancel_futures=True)


def detector_on_gpu(detector) -> bool:
    """True for a detector that runs on a GPU: a torch one on CUDA (``device``) or an onnxruntime
    one whose first provider is CUDA (``on_gpu``)."""
    device = getattr(detector, "device", None)
    return bool(getattr(detector, "on_gpu", False)) or (isinstance(device, torch.device) and device.type == "cuda")


class _Fixed:
    """A detector that returns detections made earlier (lets detection and alignment be timed apart)."""

    def __init__(self, detections):
        self.detections = detections

    def detect(self, image):
        return self.detections


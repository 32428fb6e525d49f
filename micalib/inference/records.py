"""The demo's completion records and the summaries rebuilt from them.

One record per input, ``OUTPUT/.mica/done/<NAME>.json``, written atomically after all of that
input's files (its crops and every output folder): the relative input path, its output names and
files, faces, score, status (``ok`` or ``failed``), message and the checkpoint's hash prefix. An
input is done iff its record exists, says ``ok``, names this input, and every listed output file is
a complete file (``utils.io.written_file``). A re-run rebuilds the ``done`` rows of the summary from
the records, so they are as complete as ``ok`` rows; a sharded run's summaries merge from them
(``collect_records``, ``rebuild_summary``).

Names: inputs may have names that are not valid UTF-8 (POSIX file names are bytes; Python carries
the odd bytes as surrogate escapes). Records are written as ASCII JSON, in which Python reads such a
name back exactly. Summaries stay valid UTF-8: such a name is written with backslash escapes
(``caf\\xe9.jpg``) plus its bytes in hex in the ``input_hex`` column.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Collection, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from loguru import logger

from utils.errors import MICAError
from utils.io import atomic_write_text, path_inside, written_file

STATE_DIR = ".mica"  # OUTPUT/.mica: the run's bookkeeping (records, lock); never an input
RECORD_DIR = f"{STATE_DIR}/done"
RECORD_VERSION = 1

# summary statuses: ok (finished by this run), done (by an earlier one), failed, pending (not processed)
STATUSES = ("ok", "done", "failed", "pending")


@dataclass
class ItemResult:
    """One input and what became of it: a summary row, and (``ok`` / ``failed``) its record."""

    input: str  # path relative to the input root, as listed (POSIX separators)
    status: str  # one of STATUSES
    outputs: List[str] = field(default_factory=list)  # output folder names (NAME or NAME_0, NAME_1, ...)
    message: str = ""
    faces: int = 0
    score: Optional[float] = None
    name: str = ""  # NAME (see micalib.inference.outputs.output_names); differs from the stem after a rename
    checkpoint: str = ""  # hash prefix of the network that made the outputs
    files: List[str] = field(default_factory=list)  # the files inside each output folder
    crops: List[str] = field(default_factory=list)  # its files in the crop folder (-a): NAME.jpg, NAME.npy, ...
    # byte size of every output file ("NAME/mesh.ply") and crop ("-a/NAME.jpg") when the record was
    # written: a file cut short or replaced later no longer matches, and the input is redone
    sizes: Dict[str, int] = field(default_factory=dict)


SUMMARY_COLUMNS = ["input", "status", "outputs", "message", "faces", "score", "name", "checkpoint", "input_hex"]


def checkpoint_id(path: Union[str, os.PathLike, None]) -> str:
    """First 16 hex digits of the SHA-256 of a checkpoint / ONNX file ("" without one)."""
    if not path or not Path(path).is_file():
        return ""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:16]


# ---------------------------------------------------------------------- names
def display(text: str) -> str:
    """``text`` as valid UTF-8: bytes that are not (surrogate escapes) become ``\\xNN``."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape" if _only_escapes(text) else "surrogatepass").decode(
            "utf-8", "backslashreplace")


def _only_escapes(text: str) -> bool:
    return all(not (0xD800 <= ord(c) <= 0xDFFF) or 0xDC80 <= ord(c) <= 0xDCFF for c in text)


def name_hex(text: str) -> str:
    """The bytes of a file name in hex when it is not valid UTF-8, else ""."""
    try:
        text.encode("utf-8")
        return ""
    except UnicodeEncodeError:
        return os.fsencode(text).hex() if _only_escapes(text) else text.encode("utf-8", "surrogatepass").hex()


# ---------------------------------------------------------------------- records
def record_path(output_dir: Path, name: str) -> Path:
    return Path(output_dir) / RECORD_DIR / f"{name}.json"


CROP_KEY = "-a/"  # prefix of the crops' entries in ItemResult.sizes


def write_record(output_dir: Path, result: ItemResult, arcface_dir: Optional[Path] = None) -> None:
    """Write the record of a finished input (``ok`` or ``failed``), atomically, with the byte size
    of each of its files (and crops in ``arcface_dir``). Call it only after all of the input's
    files are written: it is what makes the input done."""
    assert result.status in ("ok", "failed"), result.status
    if result.status == "ok":
        result.sizes = {f"{out}/{f}": os.stat(Path(output_dir) / out / f).st_size
                        for out in result.outputs for f in result.files}
        if arcface_dir is not None:
            result.sizes.update({CROP_KEY + c: os.stat(Path(arcface_dir) / c).st_size for c in result.crops})
    data = {"version": RECORD_VERSION, **asdict(result), "input_hex": name_hex(result.input)}
    # no fsync: an empty record (power failure) reads as no record, and the outputs are checked anyway
    atomic_write_text(record_path(output_dir, result.name), json.dumps(data, indent=1) + "\n", fsync=False)


def read_record(output_dir: Path, name: str) -> Optional[ItemResult]:
    """The record of ``name``, or None when there is none or it is unreadable / empty / foreign."""
    return _load(record_path(output_dir, name))


# The types a record's fields must have (a record is a file anyone can edit: issue 21, S4)
_FIELD_TYPES = {"input": str, "status": str, "outputs": list, "message": str, "faces": int,
                "score": (int, float, type(None)), "name": str, "checkpoint": str, "files": list, "crops": list,
                "sizes": dict}


def _well_formed(data: dict) -> bool:
    if any(k in data and not isinstance(data[k], t) for k, t in _FIELD_TYPES.items()):
        return False
    lists = [x for k in ("outputs", "files", "crops") for x in data.get(k, [])]
    sizes = data.get("sizes", {})
    return (all(isinstance(x, str) for x in lists)
            and all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in sizes.items()))


def _load(path: Path) -> Optional[ItemResult]:
    """The record at ``path``; None when it is unreadable, of another version, or not well formed."""
    try:
        data = json.loads(path.read_text(encoding="ascii"))
        if not isinstance(data, dict) or data.get("version") != RECORD_VERSION \
                or data.get("status") not in ("ok", "failed") or not _well_formed(data):
            return None
        known = {f.name for f in fields(ItemResult)}
        return ItemResult(**{k: v for k, v in data.items() if k in known})
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def remove_record(output_dir: Path, name: str) -> None:
    """Forget that ``name`` was done (before redoing it: a kill half-way must not leave it done)."""
    try:
        record_path(output_dir, name).unlink()
    except FileNotFoundError:
        pass


def is_done(output_dir: Path, record: Optional[ItemResult], input_rel: str, required_files: Sequence[str],
            all_faces: Optional[bool] = None, arcface_dir: Optional[Path] = None) -> bool:
    """True when ``record`` says ``ok`` for this input and every output folder it lists holds every
    file it lists and every file in ``required_files`` (e.g. ``render.png`` when this run renders).

    ``all_faces`` (when given): the outputs must be the ones that mode writes (``NAME`` alone, or
    ``NAME_0``, ``NAME_1``, ...), so switching ``--all-faces`` redoes the input. ``arcface_dir``
    (when given): the record's crops must be complete files there (deleted, or another ``-a``, redoes
    the input)."""
    if record is None or record.status != "ok" or record.input != input_rel or not record.outputs:
        return False
    if all_faces is not None:
        expected = [f"{record.name}_{k}" for k in range(len(record.outputs))] if all_faces else [record.name]
        if record.outputs != expected:
            return False
    try:  # every path a record names stays inside its folder (issue 21, S6)
        crops = [path_inside(arcface_dir, c, "crop") for c in record.crops] if arcface_dir is not None else []
        files = set(record.files) | set(required_files)
        outputs = [path_inside(output_dir, f"{out}/{f}", "output") for out in record.outputs for f in files]
    except MICAError:
        return False
    if arcface_dir is not None and (not crops or not all(written_file(c) for c in crops)):
        return False
    if not all(written_file(p) for p in outputs):
        return False
    return _sizes_match(output_dir, record.sizes, arcface_dir)


def _sizes_match(output_dir: Path, sizes: Dict[str, int], arcface_dir: Optional[Path]) -> bool:
    """Every file the record sized still has that size (records written before sizes were kept
    have none: only the checks above)."""
    for key, size in sizes.items():
        crop = key.startswith(CROP_KEY)
        if crop and arcface_dir is None:
            continue
        try:
            path = path_inside(arcface_dir, key[len(CROP_KEY):], "crop") if crop else path_inside(output_dir, key, "output")
            if os.stat(path).st_size != size:
                return False
        except (MICAError, OSError):
            return False
    return True


def done_record(output_dir: Path, name: str, input_rel: str, required_files: Sequence[str],
                all_faces: Optional[bool] = None, arcface_dir: Optional[Path] = None) -> Optional[ItemResult]:
    """The record of ``name`` as a ``done`` summary row when it makes the input done (:func:`is_done`),
    else None."""
    record = read_record(output_dir, name)
    if not is_done(output_dir, record, input_rel, required_files, all_faces=all_faces, arcface_dir=arcface_dir):
        return None
    record.status, record.message = "done", DONE_MESSAGE
    return record


def collect_records(output_dir: Path) -> Dict[str, ItemResult]:
    """Every record under ``OUTPUT/.mica/done``, by NAME (for merging a sharded run). An unreadable
    one (damaged, or from another version) is a ``pending`` row named after its file, never dropped."""
    root = Path(output_dir) / RECORD_DIR
    found = {}
    for path in sorted(root.rglob("*.json")) if root.is_dir() else []:
        record = _load(path)
        if record is None:
            name = path.relative_to(root).with_suffix("").as_posix()
            record = ItemResult(input=name, status="pending", name=name,
                                message=f"its completion record {path} is unreadable; run the demo again to redo it")
        found[record.name] = record
    return found


# ---------------------------------------------------------------------- summaries
def write_summary(output_dir: Path, results: Iterable[ItemResult]) -> None:
    """``OUTPUT/summary.csv`` and ``summary.json``: one row per input, valid UTF-8 whatever the
    names (see the module docstring)."""
    rows = []
    for r in results:
        rows.append({
            "input": display(r.input), "status": r.status, "outputs": [display(o) for o in r.outputs],
            "message": display(r.message), "faces": r.faces, "score": r.score, "name": display(r.name),
            "checkpoint": r.checkpoint, "input_hex": name_hex(r.input),
        })
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS)
    writer.writeheader()
    writer.writerows({**row, "outputs": ";".join(row["outputs"])} for row in rows)
    atomic_write_text(Path(output_dir) / "summary.csv", buf.getvalue())
    atomic_write_text(Path(output_dir) / "summary.json", json.dumps(rows, indent=2, ensure_ascii=False))


def rebuild_summary(output_dir: Path, inputs: Optional[Sequence[Tuple[str, str]]] = None,
                    earlier: Collection[str] = (), arcface_dir: Optional[Path] = None) -> List[ItemResult]:
    """Rebuild the summary from the records alone (e.g. after the shards of a sharded run finished):
    with ``inputs`` ((relative input, NAME) pairs, in order) one row per input, ``pending`` where
    no record is; without, one row per record, sorted by input. Every ``ok`` record is checked
    against its files, and with ``arcface_dir`` its crops (an incomplete one is ``pending``); NAMEs
    in ``earlier`` (done before this run) are ``done``, as in a one-process run's summary. Writes and
    returns the rows."""
    records = collect_records(output_dir)
    for name, record in list(records.items()):  # an ok record whose outputs are incomplete is not done
        if record.status == "ok" and not is_done(output_dir, record, record.input, (), arcface_dir=arcface_dir):
            records[name] = ItemResult(input=record.input, status="pending", name=name, message=PENDING_MESSAGE)
        elif record.status == "ok" and name in earlier:
            record.status, record.message = "done", DONE_MESSAGE
    if inputs is None:
        rows = sorted(records.values(), key=lambda r: r.input)
    else:
        rows = []
        used = set()
        for rel, name in inputs:
            record = records.get(name)
            if record is not None and record.status == "pending" and record.input != rel:  # unreadable record
                record = ItemResult(input=rel, status="pending", name=name, message=record.message)
            if record is not None and record.input == rel:
                used.add(name)
            rows.append(record if record is not None and record.input == rel
                        else ItemResult(input=rel, status="pending", name=name, message=PENDING_MESSAGE))
        unused = len(set(records) - used)
        if unused:
            logger.warning(f"{unused} of the {len(records)} completion records in {Path(output_dir) / RECORD_DIR} "
                           f"name inputs that are not in the input folder; they are left out of the summary "
                           f"(is -i the folder the run read?)")
    write_summary(output_dir, rows)
    return rows


PENDING_MESSAGE = "not processed yet (the run was interrupted); run the same command again to finish"
DONE_MESSAGE = "finished by an earlier run (use --overwrite to redo)"

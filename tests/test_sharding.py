"""Many processes (issue 17, section 1): torchrun ranks (3 gloo processes on the CPU), ``--shard K/N``
jobs and ``python -m micalib.inference.merge_summaries`` against one process of the same demo.

Fast stand-ins: the detector of tests/test_demo_runner.py and a tiny random network (a strided
convolution and a linear layer in torch, a linear shape basis), whose float results depend on how
the images are batched, like the real network's."""
from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import demo
from micalib.inference import merge_summaries as merge_summaries
from micalib.inference import sharding
from micalib.inference.demo_runner import DemoRunner, default_workers
from micalib.inference.output_lock import LOCK_FILE
from micalib.inference.sharding import Shard, parse_shard, resolve_shard
from tests.fakes import TETRA, SlowDetector, TinyNetwork
from tests.numerics import ulp32
from tests.photos import write_noise_photos
from utils.errors import MICAError, run_main
from utils.mesh import read_mesh

ROOT = Path(__file__).resolve().parent.parent


def _make_runner(args, net=None) -> DemoRunner:
    """demo.py's runner with the stand-ins, honouring the flags the tests use."""
    return DemoRunner(net or TinyNetwork(), SlowDetector(0), TETRA, Path(args.output), Path(args.arcface),
                      render=False, batch_size=args.batch_size, fuse=args.fuse, workers=1,
                      shard=getattr(args, "run_shard", None) or Shard())


def _argv(inp: Path, out: Path, *extra: str) -> list[str]:
    return ["-i", str(inp), "-o", str(out / "meshes"), "-a", str(out / "arcface"), *extra]


def _demo(monkeypatch, inp: Path, out: Path, *extra: str, net=None) -> int:
    """``python demo.py`` in this process with the stand-ins; returns the exit code."""
    monkeypatch.setattr(demo, "setup", lambda args: demo.load_cfg(None, []))
    monkeypatch.setattr(demo, "build_runner", lambda args, cfg: _make_runner(args, net))
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: demo.main(_argv(inp, out, *extra)))
    return exit_info.value.code


def _rank_main(rank: int, world: int, port: int, inp: str, out: str, extra: list, result_dir: str) -> None:
    """One torchrun rank: the environment torchrun sets, then demo.main as ``python demo.py`` runs it."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    net = TinyNetwork()
    processed: list[str] = []

    def make(args, cfg):
        runner = _make_runner(args, net)
        run = runner.run
        runner.run = lambda input_dir: _record(run(input_dir), processed)
        return runner

    demo.setup = lambda args: demo.load_cfg(None, [])
    demo.build_runner = make
    code = demo.main(_argv(Path(inp), Path(out), *extra))
    Path(result_dir, f"rank{rank}.json").write_text(json.dumps({"code": code, "inputs": processed,
                                                                "threads": torch.get_num_threads()}))


def _record(results, processed: list):
    processed.extend(r.input for r in results)
    return results


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(inp: Path, out: Path, tmp: Path, *extra: str, world: int = 3) -> list[dict]:
    result_dir = tmp / f"ranks_{out.name}"
    result_dir.mkdir()
    mp.spawn(_rank_main, args=(world, _free_port(), str(inp), str(out), list(extra), str(result_dir)),
             nprocs=world, join=True)
    return [json.loads((result_dir / f"rank{r}.json").read_text()) for r in range(world)]


@pytest.fixture()
def photos(tmp_path) -> Path:
    """11 inputs in three sub-folders, one of them broken."""
    return write_noise_photos(tmp_path / "in", [f"p{i % 3}/img{i}.png" for i in range(10)], broken="p1/broken.jpg")


def _files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


NUMERIC_FILES = ("identity.npy", "kpt7.npy", "kpt68.npy", "mesh.ply", "mesh.obj")


def _assert_same_results(got: Path, ref: Path) -> None:
    """``got`` holds what ``ref`` holds: the same files; crops, network inputs and summary byte
    for byte, records with the same content; the network's numbers (identity, landmarks, meshes)
    within :meth:`TinyNetwork.bounds` of the reference, since another batch, thread count or CPU
    may sum them in another order (byte identity across processes is not what MKL/oneDNN
    guarantee: issue 21). Meshes in mm: plus 2 ulp of the mm value, and the .obj's 6 decimals."""
    a, b = _files(got), _files(ref)
    assert sorted(a) == sorted(b)
    for key in b:
        if key.endswith(".json") and "/.mica/done/" in key:
            assert _record_content(a[key]) == _record_content(b[key]), key
        elif "/viewer/meshes/" in key:  # the page's copy of each mesh (glTF, base64): numbers, checked as the .ply
            assert a[key].split(b'"', 2)[1] == b[key].split(b'"', 2)[1], key  # the same mesh at the same place
        elif not key.endswith(NUMERIC_FILES):
            assert a[key] == b[key], key
    net, checked = TinyNetwork(), 0
    for ident in sorted((ref / "meshes").rglob("identity.npy")):
        name = ident.parent.relative_to(ref / "meshes").as_posix()
        id_ref, id_got = np.load(ident), np.load(got / "meshes" / name / "identity.npy")
        e_id, e_v = net.bounds(np.load(ref / "arcface" / f"{name}.npy"), id_ref)
        assert (np.abs(id_got.astype(np.float64) - id_ref) <= e_id).all(), name
        v_ref = read_mesh(ident.parent / "mesh.ply")[0].astype(np.float64)
        e_mm = e_v * 1000 + 2 * ulp32(v_ref)
        assert e_mm.max() < 2.0  # mm; the meshes of two different photos lie ~25 mm apart
        for f in ("mesh.ply", "mesh.obj"):
            v_got = read_mesh(got / "meshes" / name / f)[0]
            assert (np.abs(v_got - v_ref) <= e_mm + (1e-6 if f == "mesh.obj" else 0)).all(), (name, f)
        for f, rows in (("kpt7.npy", [0, 1, 2, 3, 0, 1, 2]), ("kpt68.npy", [0] * 68)):
            k_ref, k_got = (np.load(d / "meshes" / name / f).reshape(-1, 3).astype(np.float64) for d in (ref, got))
            assert (np.abs(k_got - k_ref) <= e_mm[rows]).all(), (name, f)
        checked += 1
    assert checked >= 9  # every ok input was compared


def _record_content(data: bytes) -> dict:
    """A completion record without the byte sizes of text meshes (their digits may differ)."""
    record = json.loads(data)
    record.pop("sizes", None)
    return record


def _rows(meshes: Path) -> list[dict]:
    with open(meshes / "summary.csv", encoding="utf-8", newline="") as f:
        return sorted(csv.DictReader(f), key=lambda r: r["input"])


def _obj_vertices(data: bytes) -> np.ndarray:
    return np.array([[float(x) for x in line.split()[1:4]] for line in data.decode().splitlines()
                     if line.startswith("v ")])


# ---------------------------------------------------------------------- the rule
def test_unit_i_of_the_sorted_order_goes_to_shard_i_mod_n():
    units = ["c", "a", "e", "b", "d"]  # sorted: a b c d e -> shards 0 1 2 0 1
    assert Shard(0, 3).select(units) == ["a", "d"]  # in the given order
    assert Shard(1, 3).select(units) == ["e", "b"]
    assert Shard(2, 3).select(units) == ["c"]
    assert Shard().select(units) == units
    # --fuse: the sorted sub-folders are the units; every image of a folder goes with it
    imgs = ["y/1", "x/1", "z/1", "x/2", "y/2"]
    assert Shard(0, 2).select_groups(imgs, lambda u: u.split("/")[0]) == ["x/1", "z/1", "x/2"]
    assert Shard(1, 2).select_groups(imgs, lambda u: u.split("/")[0]) == ["y/1", "y/2"]


@pytest.mark.parametrize("text", ["3/3", "-1/2", "1", "a/b", "0/0", "1/2/3"])
def test_bad_shard_is_one_line(text):
    with pytest.raises(MICAError, match="--shard"):
        parse_shard(text)


def test_parse_shard():
    assert parse_shard("2/5") == Shard(2, 5) and parse_shard(" 0 / 1 ") == Shard(0, 1)
    assert Shard(2, 5).independent and not Shard(2, 5).leader and Shard().leader


def test_shard_under_torchrun_is_an_error(monkeypatch, photos, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(MICAError, match="cannot be combined with torchrun"):
        resolve_shard("0/2")
    assert _demo(monkeypatch, photos, tmp_path / "o", "--shard", "0/2") == 1  # one line, before any work
    assert not (tmp_path / "o").exists()


def test_each_rank_takes_its_share_of_the_cores(monkeypatch):
    monkeypatch.setattr(sharding, "usable_cores", lambda: 16)
    assert sharding.rank_cores(Shard(1, 8, True, 1, 4)) == 4
    assert sharding.rank_cores(Shard(0, 1)) == 16
    assert sharding.rank_cores(Shard(5, 8, True, 5, 32)) == 1
    assert default_workers(sharding.rank_cores(Shard(1, 8, True, 1, 4))) == 4
    assert default_workers(16) == 8


# ---------------------------------------------------------------------- torchrun, --shard, merge
@pytest.mark.slow
def test_three_gloo_ranks_and_shard_jobs_give_what_one_process_gives(tmp_path, photos, monkeypatch):
    # one process, the oracle; batch 3 (the ranks batch other images together) and batch 1
    assert _demo(monkeypatch, photos, tmp_path / "one", "--batch-size", "3") == 1  # broken.jpg fails
    assert _demo(monkeypatch, photos, tmp_path / "one_b1", "--batch-size", "1") == 1
    ranks = _torchrun(photos, tmp_path / "tr", tmp_path, "--batch-size", "3")
    assert [r["code"] for r in ranks] == [1, 1, 1]  # every rank: the run's exit code
    assert all(r["threads"] == max(1, sharding.usable_cores() // 3) for r in ranks)
    # the same files (records, crops, meshes, summary); other batches: the numbers within bounds
    _assert_same_results(tmp_path / "tr", tmp_path / "one")
    assert _rows(tmp_path / "tr" / "meshes") == _rows(tmp_path / "one" / "meshes")
    # the split: unit i of the sorted inputs on rank i mod 3
    inputs = sorted(p.relative_to(photos).as_posix() for p in photos.rglob("*") if p.is_file())
    for k, r in enumerate(ranks):
        assert sorted(r["inputs"]) == inputs[k::3]
    # batch size 1: the same files as one process, numbers within float32 reordering bounds
    ranks_b1 = _torchrun(photos, tmp_path / "tr_b1", tmp_path, "--batch-size", "1")
    assert [r["code"] for r in ranks_b1] == [1, 1, 1]
    _assert_same_results(tmp_path / "tr_b1", tmp_path / "one_b1")  # other thread counts: within bounds

    # three --shard jobs at batch 1, then the merge: what one process at batch 1 gives
    seen = []
    for k in range(3):
        net = TinyNetwork()
        assert _demo(monkeypatch, photos, tmp_path / "sh", "--batch-size", "1", "--shard", f"{k}/3", net=net) \
            == (1 if "p1/broken.jpg" in inputs[k::3] else 0)
        seen.append(sum(net.calls))
        assert not (tmp_path / "sh" / "meshes" / "summary.csv").exists()  # independent jobs: no summary
    assert seen == [len(inputs[k::3]) - ("p1/broken.jpg" in inputs[k::3]) for k in range(3)]  # the same split
    assert merge_summaries.main([str(tmp_path / "sh" / "meshes"), "-i", str(photos), "-a", str(tmp_path / "sh" / "arcface")]) \
        == 1  # one failed row; -a: the crops, checked and shown on the page
    _assert_same_results(tmp_path / "sh", tmp_path / "one_b1")


@pytest.mark.slow
def test_killed_shard_is_finished_by_a_rerun_under_another_shard_count(tmp_path, photos, monkeypatch):
    class DiesAtSecond(TinyNetwork):
        def predict_identity(self, batch):
            if self.calls:
                raise KeyboardInterrupt  # the node dies after its first image
            return super().predict_identity(batch)

    for k in range(2):
        _demo(monkeypatch, photos, tmp_path / "o", "--batch-size", "1", "--shard", f"{k}/3")
    assert _demo(monkeypatch, photos, tmp_path / "o", "--batch-size", "1", "--shard", "2/3", net=DiesAtSecond()) == 130
    meshes = tmp_path / "o" / "meshes"
    assert merge_summaries.main([str(meshes), "-i", str(photos)]) == 3  # incomplete: pending inputs
    pending = [r["input"] for r in _rows(meshes) if r["status"] == "pending"]
    assert len(pending) == 2  # shard 2 of 3 had 3 inputs, finished one
    # re-run under 2 shards: only the missing inputs go through the network
    nets = [TinyNetwork(), TinyNetwork()]
    for k in range(2):
        _demo(monkeypatch, photos, tmp_path / "o", "--batch-size", "1", "--shard", f"{k}/2", net=nets[k])
    assert sum(len(n.calls) for n in nets) == len(pending)
    rows = merge_summaries.merge(meshes, photos, tmp_path / "o" / "arcface")
    assert {r.status for r in rows} == {"ok", "failed"} and sum(r.status == "failed" for r in rows) == 1
    # the command, as a user runs it once every shard is done: also the page of the whole run
    assert merge_summaries.main([str(meshes), "-i", str(photos), "-a", str(tmp_path / "o" / "arcface")]) == 1
    # the same as one uninterrupted process
    _demo(monkeypatch, photos, tmp_path / "one", "--batch-size", "1")
    assert _files(tmp_path / "o") == _files(tmp_path / "one")


class StallsAtSecond(TinyNetwork):
    """The network of a node that hangs (and is then killed) after its first image."""

    def predict_identity(self, batch):
        if self.calls:
            time.sleep(120)
        return super().predict_identity(batch)


def _shard_job(inp: str, out: str, shard: str) -> None:
    """``python demo.py -i INP -o OUT --shard K/N --batch-size 1`` with the stand-ins and a stalling network."""
    demo.setup = lambda args: demo.load_cfg(None, [])
    demo.build_runner = lambda args, cfg: _make_runner(args, StallsAtSecond())
    run_main(lambda: demo.main(_argv(Path(inp), Path(out), "--batch-size", "1", "--shard", shard)))


@pytest.mark.slow
def test_shard_killed_with_sigkill_is_finished_by_a_rerun(tmp_path, photos, monkeypatch):
    """A real ``kill -9`` of a --shard job after its first image; a re-run under 2 shards completes
    the run, equal to one uninterrupted process."""
    meshes = tmp_path / "o" / "meshes"
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tests.test_sharding import _shard_job; "
            f"_shard_job({str(photos)!r}, {str(tmp_path / 'o')!r}, '2/3')")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (meshes / ".mica" / "done" / "p0" / "img6.json").is_file() and time.time() < deadline:
        time.sleep(0.05)  # shard 2 of 3: p0/img6.png, p1/img1.png, p1/img7.png
    time.sleep(0.2)
    proc.kill()
    proc.wait()
    assert (meshes / ".mica" / "done" / "p0" / "img6.json").is_file() and not (meshes / "p1" / "img1").exists()
    nets = [TinyNetwork(), TinyNetwork()]
    for k in range(2):
        _demo(monkeypatch, photos, tmp_path / "o", "--batch-size", "1", "--shard", f"{k}/2", net=nets[k])
    assert sum(len(n.calls) for n in nets) == 10 - 1  # everything but the killed shard's one finished image
    assert merge_summaries.main([str(meshes), "-i", str(photos), "-a", str(tmp_path / "o" / "arcface")]) == 1
    _demo(monkeypatch, photos, tmp_path / "one", "--batch-size", "1")
    assert _files(tmp_path / "o") == _files(tmp_path / "one")


def test_merge_rechecks_the_files_not_the_records(tmp_path, photos, monkeypatch):
    for k in range(2):
        _demo(monkeypatch, photos, tmp_path / "o", "--shard", f"{k}/2")
    meshes = tmp_path / "o" / "meshes"
    (meshes / "p0" / "img3" / "mesh.obj").unlink()  # a record says ok, a file is gone
    rows = {r.input: r for r in merge_summaries.merge(meshes, photos, tmp_path / "o" / "arcface")}
    assert rows["p0/img3.png"].status == "pending" and rows["p0/img0.png"].status == "ok"
    assert rows["p1/broken.jpg"].status == "failed"
    without_inputs = {r.input: r.status for r in merge_summaries.merge(meshes)}  # from the records alone
    assert without_inputs == {k: r.status for k, r in rows.items()}
    with pytest.raises(MICAError, match="no completion records"):
        merge_summaries.merge(tmp_path)


def test_fuse_keeps_each_sub_folder_in_one_shard(tmp_path, photos, monkeypatch):
    nets = [TinyNetwork(), TinyNetwork()]
    for k in range(2):
        _demo(monkeypatch, photos, tmp_path / "o", "--fuse", "--shard", f"{k}/2", net=nets[k])
    meshes = tmp_path / "o" / "meshes"
    # folders p0 (4 images), p1 (3 + broken), p2 (3): sorted p0 p1 p2 -> shards 0, 1, 0
    assert sum(nets[0].calls) == 7 and sum(nets[1].calls) == 3
    assert all((meshes / f"p{i}" / "fused" / "identity.npy").is_file() for i in range(3))
    _demo(monkeypatch, photos, tmp_path / "one", "--fuse")
    for i in range(3):
        np.testing.assert_allclose(np.load(meshes / f"p{i}" / "fused" / "identity.npy"),
                                   np.load(tmp_path / "one" / "meshes" / f"p{i}" / "fused" / "identity.npy"), atol=1e-6)


def test_shards_of_one_run_do_not_refuse_each_other(tmp_path, photos, monkeypatch):
    meshes = tmp_path / "o" / "meshes"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from pathlib import Path;"
        "from micalib.inference.output_lock import output_lock\n"
        "with output_lock(Path(sys.argv[2])):\n    print('held', flush=True); time.sleep(60)"), str(ROOT), str(meshes)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held" and (meshes / LOCK_FILE).is_file()
        assert _demo(monkeypatch, photos, tmp_path / "o", "--shard", "1/2") == 0  # a shard takes no lock
        assert _demo(monkeypatch, photos, tmp_path / "o") == 1  # a plain run is refused
    finally:
        holder.kill()
        holder.wait()


# ---------------------------------------------------------------------- benchmark exports
def _export_items(photos: Path, out: Path) -> list:
    from models.face_prep import align_face
    from testing.now_export import ExportItem

    def prepare(image, source):
        return align_face(image, SlowDetector(0).detect(image)[0])

    paths = sorted(p for p in photos.rglob("*") if p.is_file())
    rels = [p.relative_to(photos) for p in paths]
    return [ExportItem(rel.as_posix(), [p], out / "predicted_meshes" / rel.with_suffix(""), prepare)
            for p, rel in reversed(list(zip(paths, rels, strict=True)))]  # given unsorted: the split follows the sorted keys


def test_export_shards_split_the_items_and_add_up_to_one_run(tmp_path, photos):
    from testing.now_export import ExportWriter, write_export_report

    one = ExportWriter(TinyNetwork(), TETRA, ".obj", batch_size=4).run(_export_items(photos, tmp_path / "one"))
    keys = sorted(p.relative_to(photos).as_posix() for p in photos.rglob("*") if p.is_file())
    written = []
    for k in range(3):
        shard = Shard(k, 3)
        writer = ExportWriter(TinyNetwork(), TETRA, ".obj", batch_size=4, shard=shard)
        report = writer.run(_export_items(photos, tmp_path / "sh"))
        assert report.written + len(report.failed) == len(keys[k::3])
        written.append(report.written)
        write_export_report(report, tmp_path / "sh" / "export_report.json", shard)
        assert (tmp_path / "sh" / f"export_report.shard-{k}-of-3.json").is_file()
    assert sum(written) == one.written == len(keys) - 1 and list(one.failed) == ["p1/broken.jpg"]
    assert not (tmp_path / "sh" / "export_report.json").exists()
    mine = {p.relative_to(tmp_path / "one").as_posix() for p in (tmp_path / "one").rglob("*.obj")}
    assert {p.relative_to(tmp_path / "sh").as_posix() for p in (tmp_path / "sh").rglob("*.obj")} == mine
    for rel in mine:
        np.testing.assert_allclose(_obj_vertices((tmp_path / "sh" / rel).read_bytes()),
                                   _obj_vertices((tmp_path / "one" / rel).read_bytes()), atol=1e-4)
    # a re-run under another shard count finds everything done
    again = [ExportWriter(TinyNetwork(), TETRA, ".obj", shard=Shard(k, 2)).run(_export_items(photos, tmp_path / "sh"))
             for k in range(2)]
    assert sum(r.done for r in again) == len(keys) - 1 and sum(r.written for r in again) == 0


@pytest.mark.parametrize("extra", [["--shard", "0/2"], []])
def test_evaluate_stays_one_process(tmp_path, monkeypatch, extra):
    import test as testpy

    if not extra:
        monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(MICAError, match="--evaluate scores in one process"):
        testpy.main(["--evaluate", "--benchmark", "now", "--now-root", str(tmp_path), *extra])


# ---------------------------------------------------------------------- launchers
def test_job_scripts_pass_the_shard_and_the_launcher(tmp_path):
    env = {**os.environ, "PYTHON": "echo", "SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "5",
           "SLURM_SUBMIT_DIR": str(ROOT)}
    out = subprocess.run(["bash", str(ROOT / "jobs" / "slurm_demo.sbatch"), "-i", "in", "-o", "out"], env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["demo.py", "--shard", "2/5", "-i", "in", "-o", "out"]
    env.update(SLURM_ARRAY_TASK_ID="5", SLURM_ARRAY_TASK_MIN="1")  # --array=1-5: the last task is shard 4/5
    out = subprocess.run(["bash", str(ROOT / "jobs" / "slurm_demo.sbatch")], env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["demo.py", "--shard", "4/5"]
    env = {**os.environ, "PYTHON": "echo"}
    out = subprocess.run(["bash", str(ROOT / "jobs" / "torchrun_demo.sh"), "3", "-i", "in"], env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "3", "demo.py", "-i", "in"]
    env.update(NNODES="2", NODE_RANK="1", MASTER_ADDR="node0")
    out = subprocess.run(["bash", str(ROOT / "jobs" / "torchrun_demo.sh"), "4", "-i", "in"], env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[out.index("--nnodes") + 1] == "2" and out[out.index("--node_rank") + 1] == "1" and out[-3:] == [
        "demo.py", "-i", "in"]


def test_torchrun_export_reports_are_summed_by_rank_0(tmp_path, monkeypatch):
    from testing.now_export import ExportReport, write_export_report

    parts = [ExportReport(3, 1, {"a.jpg": "no face"}, {"s:x.jpg": "2 faces"}), ExportReport(2, 0, {"b.jpg": "2 faces"})]
    monkeypatch.setattr(sharding, "gather", lambda shard, obj: parts)
    write_export_report(parts[1], tmp_path / "r1.json", Shard(1, 2, True))
    assert not (tmp_path / "r1.json").exists()  # only rank 0 writes
    write_export_report(parts[0], tmp_path / "r0.json", Shard(0, 2, True))
    assert json.loads((tmp_path / "r0.json").read_text()) == {
        "written": 5, "done": 1, "failed": {"a.jpg": "no face", "b.jpg": "2 faces"}, "skipped": {"s:x.jpg": "2 faces"}}


def test_merge_keeps_an_input_whose_record_is_unreadable(tmp_path):
    """A damaged record is a pending row named after its file, not a silently missing input."""
    from micalib.inference.records import ItemResult, write_record

    out = tmp_path / "meshes"
    write_record(out, ItemResult(input="a.png", status="failed", name="a", message="no face"))
    (out / ".mica" / "done" / "b.json").write_text("garbage")
    rows = {r.name: r for r in merge_summaries.merge(out)}
    assert rows["a"].status == "failed" and rows["b"].status == "pending" and "unreadable" in rows["b"].message
    assert merge_summaries.main([str(out)]) == 3  # incomplete: a shard must run again


def _real_rank_main(rank: int, world: int, port: int, argv: list) -> None:
    """A torchrun rank running the real demo (MTCNN, a random iresnet18, the synthetic FLAME)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    demo.main(argv)


@pytest.mark.slow
def test_real_network_under_torchrun_is_byte_identical_to_one_process(tmp_path, synthetic_flame_dir, face_photos_dir):
    """The real pipeline (MTCNN detection, alignment, network, FLAME) on 3 gloo ranks and in one
    process, both at one torch thread (--threads 1) and batch 1: every file is byte-identical and
    the summary rows are the same. (Torch's CPU results depend on the thread count; --threads fixes it.)"""
    from tests.commands import demo_opts
    from tests.synthetic_weights import write_random_mica_tar

    inp = face_photos_dir  # read only
    tar = write_random_mica_tar(tmp_path / "mica.tar", arch="iresnet18", seed=3)

    def argv(out: Path) -> list:
        return ["-i", str(inp), "-o", str(out / "meshes"), "-a", str(out / "arcface"), "--device", "cpu",
                "--batch-size", "1", "--threads", "1", "--no-render", *demo_opts(synthetic_flame_dir, tar)]

    threads = torch.get_num_threads()
    try:
        assert demo.main(argv(tmp_path / "one")) == 0
    finally:
        torch.set_num_threads(threads)
    mp.spawn(_real_rank_main, args=(3, _free_port(), argv(tmp_path / "ranks")), nprocs=3, join=True)
    one, ranks = _files(tmp_path / "one"), _files(tmp_path / "ranks")
    skip = ("summary.csv", "summary.json", ".mica/lock")
    assert {k for k in one if not k.endswith(skip)} == {k for k in ranks if not k.endswith(skip)}
    for key in one:
        if not key.endswith(skip) and ".mica/" not in key:
            assert one[key] == ranks[key], key
    assert _rows(tmp_path / "one" / "meshes") == _rows(tmp_path / "ranks" / "meshes")


def test_shard_jobs_write_the_glb_they_were_asked_for(tmp_path, photos, monkeypatch):
    """``--shard K/N --glb``: every mesh.ply of the run gets its mesh.glb (a --shard job wrote none:
    only the one process of a run ran the end-of-run steps); the page waits for merge_summaries."""
    from tests.gltf_spec import Glb

    for k in range(2):
        _demo(monkeypatch, photos, tmp_path / "o", "--shard", f"{k}/2", "--glb")
    meshes = tmp_path / "o" / "meshes"
    plys = sorted(meshes.rglob("mesh.ply"))
    assert len(plys) >= 9
    for ply in plys:
        glb = Glb((ply.with_suffix(".glb")).read_bytes())
        np.testing.assert_allclose(glb.skinned(0, None), read_mesh(ply)[0] / 1000.0, atol=1e-6)
    assert not (meshes / "index.html").exists()

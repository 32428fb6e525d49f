"""TrackOptions / FitSettings against the config they are read from (configs/config.py's ``tracker``
section): the same keys, the same defaults, every key read, and the run record's hash of the
section unchanged (a re-run by this version accepts the outputs of the previous one)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import fields

from configs.config import get_cfg_defaults, load_cfg
from micalib.tracking.options import CONFIG_KEYS, FitSettings, TrackOptions


def test_config_keys_are_the_option_fields_with_the_same_defaults():
    cfg = get_cfg_defaults()
    assert set(cfg.tracker.keys()) == set(CONFIG_KEYS)
    assert set(cfg.tracker.fit.keys()) == {f.name for f in fields(FitSettings)}
    opts = TrackOptions.from_section(cfg.tracker)
    assert opts == TrackOptions()
    for key in CONFIG_KEYS:
        if key != "fit":
            want = cfg.tracker[key]
            got = getattr(opts, key)
            assert (list(got) if isinstance(got, tuple) else got) == want and type(want)(got) == want, key


def test_every_tracker_key_reaches_the_options():
    cfg = load_cfg("configs/tracker.yml", ["tracker.bbox_scale", "3.5", "tracker.fit.iters", "7",
                                           "tracker.iris_vertices", "[1, 2, 3]", "tracker.follow_face", "True"])
    opts = TrackOptions.from_section(cfg.tracker, image_size=256, fps=None)
    assert (opts.bbox_scale, opts.fit.iters, opts.iris_vertices, opts.follow_face) == (3.5, 7, (1, 2, 3), True)
    assert (opts.image_size, opts.fps) == (256, None)
    assert opts.follow and not TrackOptions(follow_face=True, crop=False).follow


def test_recorded_tracker_hash_is_that_of_the_config_section():
    """The run record hashes the ``tracker`` section as the previous version did (the whole section
    as JSON, sorted keys, without the speed-only keys), so old outputs are resumed, not refused."""
    from micalib.tracking.resume import _NO_EFFECT

    for opts in ([], ["tracker.fit.refine_identity", "True", "tracker.bbox_scale", "2.0", "tracker.workers", "5"]):
        cfg = load_cfg("configs/tracker.yml", opts)
        old = json.dumps({k: v for k, v in dict(cfg.tracker).items() if k not in _NO_EFFECT}, sort_keys=True, default=str)
        new = TrackOptions.from_section(cfg.tracker).config_values()
        new = json.dumps({k: v for k, v in new.items() if k not in _NO_EFFECT}, sort_keys=True, default=str)
        assert hashlib.sha1(new.encode()).hexdigest() == hashlib.sha1(old.encode()).hexdigest()


def test_only_the_builder_reads_cfg_in_the_tracking_package():
    import re

    from configs.config import PROJECT_ROOT

    readers = []
    for path in sorted((PROJECT_ROOT / "micalib" / "tracking").glob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bcfg\b", line):
                readers.append((path.name, n))
    assert readers and {name for name, _ in readers} == {"runner.py"}
    runner = (PROJECT_ROOT / "micalib" / "tracking" / "runner.py").read_text().splitlines()
    start = next(i for i, line in enumerate(runner) if "def from_config(cls, cfg" in line)
    end = next(i for i in range(start + 1, len(runner)) if runner[i].startswith("    def ") or runner[i].startswith("    # ---"))
    assert all(start < n <= end for _, n in readers), readers

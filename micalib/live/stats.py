"""What a live run measures (README "Live tracking", bench/live.py).

- **Latency** of a tracked frame: from its reference time (``Captured.t_ref``: the scheduled time
  start + k/fps of a ``--live`` file, the moment a camera / URL frame was read) to the moment its
  message is handed to the stream (serialised and queued for every client); p50 / p95 over the
  frames after the warm-up. The time to the first result (first frame of the source to the first
  frame message) is reported separately.
- **Drops** after the warm-up: frames the tracker never took because a newer one replaced them
  (``busy``), and frames taken but not tracked because the writer queue was full (``writer``);
  the percentage is of all frames the source produced after the warm-up.
- **Tracked frames/s**: tracked frames over the wall time from the end of the warm-up to the last
  message. **CPU ms per tracked frame**: process CPU time (every thread) over the same span.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LiveStats:
    warmup_frames: int = 0          # frames before the intrinsics were fixed (taken or dropped)
    tracked: int = 0
    faceless: int = 0               # tracked frames without a face (state held)
    dropped_busy: int = 0
    dropped_writer: int = 0
    produced_after: int = 0         # frames the source produced after the warm-up
    latencies_ms: list[float] = field(default_factory=list)
    first_result_s: float | None = None
    wall_s: float = 0.0
    cpu_s: float = 0.0
    client_sent: int = 0
    client_dropped: int = 0
    overlays_shed: int = 0
    first_index: int | None = None  # the source's number of the first frame after the warm-up
    _t_warm: float = 0.0
    _cpu_warm: float = 0.0
    _busy_at_warm: int = 0

    def warmup_over(self, source_dropped: int, first_index: int, taken_during_warmup: int) -> None:
        """Called when the first frame after the warm-up (source frame ``first_index``) is taken,
        before it is tracked: every frame before it was a warm-up frame, taken or dropped."""
        self._t_warm, self._cpu_warm = time.perf_counter(), time.process_time()
        self._busy_at_warm = source_dropped
        self.first_index = int(first_index)
        self.warmup_frames = taken_during_warmup + source_dropped

    def frame_sent(self, latency_ms: float) -> None:
        self.tracked += 1
        self.latencies_ms.append(float(latency_ms))

    def finish(self, source_dropped: int, source_produced: int) -> None:
        if self.first_index is None:  # ended during the warm-up
            self.warmup_frames = source_produced
            return
        self.wall_s = time.perf_counter() - self._t_warm
        self.cpu_s = time.process_time() - self._cpu_warm
        self.dropped_busy = source_dropped - self._busy_at_warm
        self.produced_after = source_produced - self.first_index

    def summary(self) -> dict:
        lat = np.asarray(self.latencies_ms, np.float64)
        after = max(self.produced_after, 1)
        return {
            "warmup_frames": self.warmup_frames, "tracked": self.tracked, "faceless": self.faceless,
            "dropped_busy": self.dropped_busy, "dropped_writer": self.dropped_writer,
            "dropped_percent": round(100.0 * (self.dropped_busy + self.dropped_writer) / after, 2),
            "produced_after_warmup": self.produced_after,
            "latency_p50_ms": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
            "latency_p95_ms": round(float(np.percentile(lat, 95)), 2) if lat.size else None,
            "first_result_s": None if self.first_result_s is None else round(self.first_result_s, 3),
            "tracked_fps": round(self.tracked / self.wall_s, 2) if self.wall_s > 0 else None,
            "cpu_ms_per_frame": round(1000.0 * self.cpu_s / self.tracked, 2) if self.tracked else None,
            "client_sent": self.client_sent, "client_dropped": self.client_dropped,
            "overlays_shed": self.overlays_shed,
        }

    def line(self) -> str:
        s = self.summary()
        return (f"{s['tracked']} frames tracked ({s['tracked_fps']} frames/s), latency p50 {s['latency_p50_ms']} ms "
                f"p95 {s['latency_p95_ms']} ms, first result after {s['first_result_s']} s, {s['warmup_frames']} "
                f"warm-up frames, dropped {s['dropped_busy']} (tracker busy) + {s['dropped_writer']} (writer full) = "
                f"{s['dropped_percent']}%, {s['cpu_ms_per_frame']} ms CPU per frame; stream: {s['client_sent']} "
                f"messages sent, {s['client_dropped']} dropped for slow clients")

"""The live viewer page (micalib/viewer/live.html) in headless Chromium, connected to a paced
synthetic run with crops: the mesh is drawn where the true head projects, the crop elsewhere
(pixel test on a DevTools screenshot). Chromium is driven through its DevTools WebSocket by the
project's own client, so the page's WebSocket talks to our server and our client to Chromium's.

Waits are polls on the page's own counters with generous limits; nothing is asserted on time."""
from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from micalib.live.websocket import WebSocketClient
from tests.live_synthetic import Synthetic, run_in_thread

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class DevTools:
    """Headless Chromium with one page, driven over the DevTools protocol."""

    def __init__(self, url: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="live_viewer_")
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
             "--remote-debugging-port=0", f"--user-data-dir={self.profile}", "--window-size=800,700",
             "--no-first-run", "--disable-gpu-sandbox", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 120
        while not (port_file.is_file() and port_file.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        page = None
        while page is None and time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
                page = next((t for t in json.load(r) if t["type"] == "page"), None)
            time.sleep(0.1)
        self.ws = WebSocketClient(page["webSocketDebuggerUrl"], timeout=120)
        self._id = 0

    def call(self, method: str, **params):
        self._id += 1
        self.ws.send_text(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            d = json.loads(self.ws.recv())
            if d.get("id") == self._id:
                if "error" in d:
                    raise RuntimeError(d["error"])
                return d["result"]

    def evaluate(self, expr: str):
        return self.call("Runtime.evaluate", expression=expr, returnByValue=True)["result"].get("value")

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.kill()
            self.proc.wait(30)
            shutil.rmtree(self.profile, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (headless) installed")
def test_live_page_draws_the_mesh_over_the_crop(tmp_path):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    syn = Synthetic(tmp_path)
    grey = np.full((512, 512, 3), 90, np.uint8)
    sess = syn.session(fps=10.0, warmup_s=0.3, send_crops=True, image=lambda k: grey, repeat=20)
    th, box = run_in_thread(sess)
    page = (ROOT / "micalib" / "viewer" / "live.html").as_uri() + f"?ws=ws://127.0.0.1:{sess.server.port}/"
    chrome = DevTools(page)
    try:
        deadline = time.monotonic() + 300
        stats = None
        while time.monotonic() < deadline:
            stats = chrome.evaluate("JSON.stringify(window.liveStats || null)")
            stats = json.loads(stats) if stats else None
            if stats and stats["framesDrawn"] >= 5:
                break
            time.sleep(0.25)
        assert stats and stats["framesDrawn"] >= 5, stats
        # stop the frames (the page keeps its last picture), then look at it
        sess.source.stopping.set()
        th.join(120)
        shown = chrome.evaluate("window.liveStats.lastFrame")
        png = base64.b64decode(chrome.call("Page.captureScreenshot", format="png")["data"])
        hud = chrome.evaluate("document.getElementById('hud').textContent")
    finally:
        chrome.close()
        sess.source.stop()
        torch.set_num_threads(threads)
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)[:512, :512].astype(np.int32)  # BGR
    cv2.imwrite(str(tmp_path / "screenshot.png"), img.astype(np.uint8))
    assert shown >= 0
    n = len(syn.seq["exp"])
    verts = syn.seq["vertices"]
    r, t, kk = syn.seq["R"], syn.seq["t"], syn.seq["K"]
    # the page drew one of the frames; every frame's head covers the face centre region, so test the
    # pixels all frames agree on (inside every projection) and those none covers
    inside = np.ones((512, 512), bool)
    outside = np.ones((512, 512), bool)
    for f in range(n):
        cam = verts[f] @ r[f].T + t[f]
        uv = cam @ kk.T
        uv = uv[:, :2] / uv[:, 2:]
        mask = np.zeros((512, 512), np.uint8)
        hull = cv2.convexHull(np.round(uv).astype(np.int32))
        cv2.fillConvexPoly(mask, hull, 1)
        inside &= cv2.erode(mask, np.ones((15, 15), np.uint8)).astype(bool)
        outside &= ~cv2.dilate(mask, np.ones((15, 15), np.uint8)).astype(bool)
    assert inside.sum() > 2000 and outside.sum() > 20000
    b, rr = img[..., 0], img[..., 2]
    bluish = (b > rr + 20) & (b > 100)
    assert bluish[inside].mean() > 0.95, bluish[inside].mean()  # the mesh over the head
    assert (np.abs(img[outside] - 90) <= 6).all(-1).mean() > 0.99  # the crop (JPEG of grey 90) elsewhere
    assert "frames/s" in hud and "latency" in hud

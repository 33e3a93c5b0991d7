"""The served web page in real headless Chromium, driven over the Chrome DevTools protocol: the portrait
shown before starting, pick an audio file, stream it, check the frames arrived in order and were drawn and
that FPS, latency, look-ahead, deadline misses, backend and replica are shown; a full server's refusal is shown as such.
A screenshot of the page is taken (into docs/web_page.png with FLASHTALK_UPDATE_SCREENSHOT=1). Skips when no browser is installed
(CI: `apt-get install -y chromium`)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette", reason="flashtalk serve needs starlette + uvicorn: pip install 'flashtalk[serve]'")
httpx = pytest.importorskip("httpx", reason="the test talks HTTP with httpx")
pytest.importorskip("websockets", reason="the test talks to Chromium's DevTools over websockets")
from websockets.asyncio.client import connect  # noqa: E402

from benchmarks.processes import stop_process  # noqa: E402
from flashtalk.serving.server import ServeConfig, serving  # noqa: E402

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "web_page.png"

BROWSER = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium installed (apt-get install -y chromium)")


class DevTools:
    """Just enough of the Chrome DevTools protocol: numbered requests over one page's WebSocket."""

    def __init__(self, ws) -> None:
        self.ws, self.ids = ws, itertools.count(1)

    async def call(self, method: str, **params):
        msg_id = next(self.ids)
        await self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(await asyncio.wait_for(self.ws.recv(), 60))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg["result"]

    async def eval(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"page error: {result['exceptionDetails']}")
        return result["result"].get("value")


@contextlib.asynccontextmanager
async def chromium(profile: Path):
    proc = subprocess.Popen(
        [
            BROWSER,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--autoplay-policy=no-user-gesture-required",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.is_file() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{BROWSER} did not start (exit code {proc.poll()})")
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        async with httpx.AsyncClient() as http:
            pages = (await http.get(f"http://127.0.0.1:{port}/json/list")).json()
        page = next(p for p in pages if p["type"] == "page")
        async with connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
            yield DevTools(ws)
    finally:
        stop_process(proc, grace_s=10)


async def _open(page, url: str) -> None:
    await page.call("Emulation.setDeviceMetricsOverride", width=1100, height=760, deviceScaleFactor=1, mobile=False)
    await page.call("Page.enable")
    await page.call("Page.navigate", url=url)
    for _ in range(200):
        if await page.eval("document.readyState === 'complete' && typeof ftStats === 'object'"):
            break
        await asyncio.sleep(0.05)


async def _pick_and_play(page, wav: Path) -> dict:
    doc = await page.call("DOM.getDocument")
    node = await page.call("DOM.querySelector", nodeId=doc["root"]["nodeId"], selector="#audio-file")
    await page.call("DOM.setFileInputFiles", nodeId=node["nodeId"], files=[str(wav)])
    await page.eval("document.getElementById('pace').value = 'fast';document.getElementById('play').click(); true")
    stats = {}
    for _ in range(1200):
        stats = json.loads(await page.eval("JSON.stringify(ftStats)"))
        if stats["ended"] or stats["errors"] or stats["refused"]:
            break
        await asyncio.sleep(0.05)
    return stats


def _wav(tmp_path: Path) -> Path:
    import soundfile as sf

    t = np.arange(int(0.32 * 48000)) / 48000
    sf.write(tmp_path / "speech.wav", (0.4 * np.sin(2 * np.pi * 200 * t) * np.sin(2 * np.pi * 2 * t)), 48000)
    return tmp_path / "speech.wav"


def test_page_streams_an_audio_file(tmp_path):
    wav = _wav(tmp_path)

    async def main():
        async with serving(ServeConfig(port=0)) as (url, state):
            with tempfile.TemporaryDirectory() as profile:
                async with chromium(Path(profile)) as page:
                    await _open(page, url + "/")
                    for _ in range(100):  # the portrait is on the canvas before anything streams
                        if await page.eval("ftStats.portraitShown"):
                            break
                        await asyncio.sleep(0.05)
                    assert await page.eval("ftStats.portraitShown")
                    stats = await _pick_and_play(page, wav)
                    assert stats["errors"] == [] and stats["ended"], stats
                    # frames received up to `end` (idle frames may follow before this poll reads the stats)
                    assert stats["framesAtEnd"] == stats["endFrames"] and abs(stats["endFrames"] - 8) <= 1, stats
                    assert stats["inOrder"] and stats["monotonic"] and stats["events"][:1] == ["ready"]
                    await asyncio.sleep(0.5)  # the last frames are drawn at their timestamps
                    spread = await page.eval(
                        "(() => { const d = document.getElementById('view').getContext('2d')"
                        ".getImageData(0, 0, 512, 512).data; let s = 0, s2 = 0, n = 0;"
                        "for (let i = 0; i < d.length; i += 4 * 97) { s += d[i + 1]; s2 += d[i + 1] ** 2; n++; }"
                        "return Math.sqrt(s2 / n - (s / n) ** 2); })()"
                    )
                    assert spread > 20  # a face was drawn, not a blank canvas
                    shown = json.loads(
                        await page.eval(
                            "JSON.stringify(['fps', 'latency', 'lookahead', 'frames', 'backend', 'replica', 'missed']"
                            ".map((k) => document.getElementById('stat-' + k).textContent))"
                        )
                    )
                    assert shown[4] == "preview" and shown[5] == "local", shown
                    assert shown[6].split()[0].isdigit() and shown[6].endswith("ms)"), shown  # "0 (budget 200 ms)"
                    assert shown[1].endswith(" ms") and 0 < int(shown[1].split()[0]) < 60_000, shown
                    assert shown[2].endswith(" ms") and float(shown[2].split()[0]) > 0, shown  # 48 -> 16 kHz filter
                    assert float(shown[0]) > 0 and int(shown[3].split()[0]) >= stats["frames"], (
                        shown
                    )  # idle frames go on
                    shot = base64.b64decode((await page.call("Page.captureScreenshot", format="png"))["data"])
                    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
                    out = SCREENSHOT if os.environ.get("FLASHTALK_UPDATE_SCREENSHOT") == "1" else tmp_path / "page.png"
                    out.write_bytes(shot)

    asyncio.run(main())


def test_page_says_when_the_server_is_full(tmp_path):
    wav = _wav(tmp_path)

    async def main():
        async with serving(ServeConfig(port=0, max_sessions=1)) as (url, state):
            held = await connect(url.replace("http", "ws", 1) + "/ws")
            await held.send('{"type": "start", "portrait_id": "demo", "idle": false}')
            assert json.loads(await asyncio.wait_for(held.recv(), 60))["type"] == "ready"
            with tempfile.TemporaryDirectory() as profile:
                async with chromium(Path(profile)) as page:
                    await _open(page, url + "/")
                    stats = await _pick_and_play(page, wav)
                    assert stats["refused"] and "full" in stats["refused"] and not stats["ready"], stats
                    text = await page.eval(
                        "document.getElementById('notice').hidden ? '' : document.getElementById('notice').textContent"
                    )
                    assert "busy" in text and "1 of 1 sessions" in text, text
            await held.close()

    asyncio.run(main())

"""The served web page in real headless Chromium, driven over the Chrome DevTools protocol: pick an audio
file, stream it, and check the frames arrived in order and were drawn. Skips when no browser is installed
(CI: `apt-get install -y chromium`)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

aiohttp = pytest.importorskip("aiohttp", reason="aiohttp is needed for flashtalk serve")
from aiohttp.test_utils import TestServer  # noqa: E402

from flashtalk.serving.server import ServeConfig, create_app  # noqa: E402

BROWSER = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium installed (apt-get install -y chromium)")


class DevTools:
    """Just enough of the Chrome DevTools protocol: numbered requests over one page's WebSocket."""

    def __init__(self, ws) -> None:
        self.ws, self.ids = ws, itertools.count(1)

    async def call(self, method: str, **params):
        msg_id = next(self.ids)
        await self.ws.send_json({"id": msg_id, "method": method, "params": params})
        while True:
            msg = await self.ws.receive_json(timeout=60)
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
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--autoplay-policy=no-user-gesture-required",
         f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.is_file() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{BROWSER} did not start (exit code {proc.poll()})")
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as http:
            pages = await (await http.get(f"http://127.0.0.1:{port}/json/list")).json()
            page = next(p for p in pages if p["type"] == "page")
            async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                yield DevTools(ws)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_page_streams_an_audio_file(tmp_path):
    import soundfile as sf

    t = np.arange(int(0.32 * 48000)) / 48000
    sf.write(tmp_path / "speech.wav", (0.4 * np.sin(2 * np.pi * 200 * t) * np.sin(2 * np.pi * 2 * t)), 48000)

    async def main():
        server = TestServer(create_app(ServeConfig()))
        await server.start_server()
        try:
            with tempfile.TemporaryDirectory() as profile:
                async with chromium(Path(profile)) as page:
                    await page.call("Page.enable")
                    await page.call("Page.navigate", url=str(server.make_url("/")))
                    for _ in range(200):
                        if await page.eval("document.readyState === 'complete' && typeof ftStats === 'object'"):
                            break
                        await asyncio.sleep(0.05)
                    doc = await page.call("DOM.getDocument")
                    node = await page.call("DOM.querySelector", nodeId=doc["root"]["nodeId"], selector="#audio-file")
                    await page.call("DOM.setFileInputFiles", nodeId=node["nodeId"],
                                    files=[str(tmp_path / "speech.wav")])
                    await page.eval("document.getElementById('pace').value = 'fast';"
                                    "document.getElementById('play').click(); true")
                    stats = {}
                    for _ in range(1200):
                        stats = json.loads(await page.eval("JSON.stringify(ftStats)"))
                        if stats["ended"] or stats["errors"]:
                            break
                        await asyncio.sleep(0.05)
                    assert stats["errors"] == [] and stats["ended"], stats
                    assert stats["frames"] == stats["endFrames"] and abs(stats["frames"] - 8) <= 1, stats
                    assert stats["inOrder"] and stats["monotonic"] and stats["events"][:1] == ["ready"]
                    await asyncio.sleep(0.5)  # the last frames are drawn at their timestamps
                    spread = await page.eval(
                        "(() => { const d = document.getElementById('view').getContext('2d')"
                        ".getImageData(0, 0, 512, 512).data; let s = 0, s2 = 0, n = 0;"
                        "for (let i = 0; i < d.length; i += 4 * 97) { s += d[i + 1]; s2 += d[i + 1] ** 2; n++; }"
                        "return Math.sqrt(s2 / n - (s / n) ** 2); })()")
                    assert spread > 20  # a face was drawn, not a blank canvas
        finally:
            await server.close()

    asyncio.run(main())

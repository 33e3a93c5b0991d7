"""A loopback stand-in for the Hugging Face Hub: serves files the test writes, in the published layout,
with the headers huggingface_hub reads (X-Repo-Commit, ETag = sha256 / git blob sha1, Content-Length,
byte ranges), model-info JSON with the card's licence, and per-file faults:

* "missing": 404 with X-Error-Code EntryNotFound;
* "corrupt": the ETag of the real bytes, one byte flipped in the body;
* "drop_once": the first GET sends the full Content-Length, half the body, then closes the connection.

Reached through HF_ENDPOINT = stub.url; stopped with stop() (server shut down, thread joined).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
INFO = re.compile(r"^/api/models/([^/]+/[^/]+)/revision/([^/]+)$")


def etag_of(path: str, data: bytes) -> str:
    if path.endswith((".json", ".txt", ".md")):  # small git files: git blob sha1
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    return hashlib.sha256(data).hexdigest()  # LFS files


class StubHub:
    def __init__(self) -> None:
        self.files: dict[tuple[str, str], bytes] = {}
        self.commits: dict[str, str] = {}
        self.licences: dict[str, str] = {}
        self.faults: dict[tuple[str, str], str] = {}
        self.log: list[tuple[str, str, str | None]] = []  # (method, url path, Range header)
        self._dropped: set[tuple[str, str]] = set()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                stub._serve(self, body=False)

            def do_GET(self) -> None:
                stub._serve(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def add(self, repo: str, commit: str, licence: str, files: dict[str, bytes]) -> None:
        self.commits[repo], self.licences[repo] = commit, licence
        for path, data in files.items():
            self.files[(repo, path)] = data

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def gets(self, path: str) -> list[str | None]:
        """Range headers of the GETs of one file."""
        return [rng for method, url, rng in self.log if method == "GET" and url.endswith("/" + path)]

    def _serve(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        self.log.append((h.command, h.path, h.headers.get("Range")))
        m = INFO.match(h.path)
        if m and m.group(1) in self.commits:
            repo = m.group(1)
            data = json.dumps(
                {
                    "id": repo,
                    "sha": self.commits[repo],
                    "cardData": {"license": self.licences[repo]},
                    "siblings": [{"rfilename": p} for (r, p) in self.files if r == repo],
                }
            ).encode()
            return self._reply(h, 200, {"Content-Type": "application/json"}, data, body)
        m = RESOLVE.match(h.path)
        if not m or m.group(1) not in self.commits:
            return self._reply(h, 404, {"X-Error-Code": "RepoNotFound"}, b"repo not found", body)
        repo, path = m.group(1), m.group(3)
        key = (repo, path)
        fault = self.faults.get(key)
        if key not in self.files or fault == "missing":
            return self._reply(
                h, 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": self.commits[repo]}, b"entry not found", body
            )
        data = self.files[key]
        headers = {
            "X-Repo-Commit": self.commits[repo],
            "ETag": f'"{etag_of(path, data)}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if fault == "corrupt":
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        start = 0
        rng = h.headers.get("Range")
        if rng and body:
            start = int(re.match(r"bytes=(\d+)-", rng).group(1))
        if body and fault == "drop_once" and key not in self._dropped:
            self._dropped.add(key)
            h.send_response(200)
            for k, v in {**headers, "Content-Length": str(len(data))}.items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            h.close_connection = True
            return
        part = data[start:]
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        return self._reply(h, 206 if start else 200, headers, part, body)

    @staticmethod
    def _reply(h: BaseHTTPRequestHandler, code: int, headers: dict, data: bytes, body: bool) -> None:
        h.send_response(code)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)

"""FlashTalk on Ray Serve (`pip install 'flashtalk[ray]'`): the same ASGI app as `flashtalk serve`, one
replica per GPU (or `replicas` on CPU), each replica owning one engine and scheduler.

- Admission: each replica admits realtime sessions by its own measured render capacity (a refusal is
  1013 "at capacity", flashtalk.runtime.scheduler) and holds up to `sessions` live sessions; Ray routes
  at most `sessions + 1` requests to it (`max_ongoing_requests`), and the one over is refused by the app
  at once with close code 1013,
  so a full cluster refuses within moments instead of queueing for minutes. The proxy holds at most
  `max_queued` requests while it assigns them (`max_queued_requests`; a burst of handshakes is queued
  there for milliseconds, so 1 would refuse bursts); past that it refuses the handshake (HTTP 503 for
  plain HTTP; Ray answers a WebSocket handshake with 500).
- Portraits: `POST /portraits` keeps the image bytes in one small Ray actor (`flashtalk-portraits`,
  bounded in count and bytes); any replica can then start a session of that id. The portrait id is
  Serve's multiplexed model id: clients that send the header `serve_multiplexed_model_id: <id>` with
  the WebSocket handshake are routed to a replica that has the portrait encoded when it has room;
  each replica encodes a portrait at most once (`@serve.multiplexed`, LRU of `max_portraits`).
  (Browsers cannot set WebSocket headers: their sessions go to any replica, which fetches the bytes.)
- Drain: a replica being removed gets no new sessions (Ray stops routing to it) and keeps its live
  sessions fed until they end, up to `drain_timeout_s` (`graceful_shutdown_timeout_s`, far above Ray's
  20 s default), then exits; Ray ends one whose sessions outlast that (their connections close without a
  close frame). Tested in tests/serving/test_ray_drain.py.
- `ready`, `/health` and `/metrics` name the replica (its Ray replica id).

Safety: `run` starts a local Ray with the dashboard off and usage stats off, on 127.0.0.1; Ray's
internal ports still listen on all interfaces, so a cluster belongs on a private network.

    flashtalk serve --ray --replicas 2                 # local Ray, proxy on 127.0.0.1:8000
    serve run deploy/ray-serve.yaml                    # an existing cluster / KubeRay (import path `app`)
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from flashtalk.errors import FlashTalkError
from flashtalk.serving.state import BackendSpec, ServeConfig, build_backend, build_faces

HINT = "pip install 'flashtalk[ray]'"
APP_NAME = "flashtalk"
DEPLOYMENT = "FlashTalk"
STORE = "flashtalk-portraits"
STORE_MAX_BYTES = 256 << 20


@dataclass(frozen=True)
class RayOptions:
    replicas: int | None = None  # None: one per visible GPU (at least 1)
    sessions: int = 16  # live sessions per replica
    max_queued: int = 16  # requests the proxy holds while it assigns them (a burst), before it answers 503
    num_cpus: float = 1.0  # per replica, when it has no GPU
    gpus: bool | None = None  # a GPU per replica (None: when the cluster has GPUs)
    drain_timeout_s: float = 120.0


def _ray():
    try:
        import ray
        from ray import serve
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "ray":
            raise FlashTalkError(f"flashtalk serve --ray needs Ray Serve: {HINT}") from None
        raise
    return ray, serve


class PortraitStore:
    """Uploaded image bytes by portrait id, least recently used dropped past a count or a byte budget."""

    def __init__(self, max_items: int, max_bytes: int = STORE_MAX_BYTES) -> None:
        self.items: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self.max_items, self.max_bytes, self.size = max_items, max_bytes, 0

    def put(self, pid: str, data: bytes) -> None:
        self.items[pid] = data
        self.size += len(data)
        while self.items and (len(self.items) > self.max_items or self.size > self.max_bytes):
            self.size -= len(self.items.popitem(last=False)[1])

    def get(self, pid: str) -> bytes | None:
        if pid in self.items:
            self.items.move_to_end(pid)
        return self.items.get(pid)


def _store(max_items: int):
    ray, _ = _ray()
    actor = ray.remote(num_cpus=0)(PortraitStore)
    return actor.options(name=STORE, namespace="serve", lifetime="detached", get_if_exists=True).remote(max_items)


class FlashTalkReplica:
    """One replica: one engine (backend + scheduler) behind the ASGI app."""

    async def __init__(self, config: dict, backend: dict) -> None:
        from ray import serve

        from flashtalk.runtime.engine import default_device
        from flashtalk.serving.server import create_app
        from flashtalk.serving.state import ServerState, decode_image, freeze_startup

        ctx = serve.get_replica_context()
        replica = getattr(ctx.replica_id, "unique_id", None) or str(ctx.replica_id)
        device = str(default_device(config.get("device")))
        self.config = ServeConfig(**{**config, "replica": replica, "device": device})
        spec = BackendSpec(**backend)
        self.state = ServerState(self.config, build_backend(spec, device), build_faces(spec, device))
        self.store = _store(self.config.max_portraits)
        self.fresh: dict[str, Any] = {}  # portraits this replica just encoded from an upload
        self._decode = decode_image
        self.state.portrait_loader = self.portrait
        self.state.portrait_sink = self.keep_upload
        self.asgi = create_app(self.config, state=self.state)
        freeze_startup()  # this process is the replica's own: its start-up objects are never garbage

    def __serve_build_asgi_app__(self):
        return self.asgi

    async def keep_upload(self, pid: str, data: bytes, portrait: Any) -> None:
        self.fresh[pid] = portrait
        await self.store.put.remote(pid, data)
        await self.portrait(pid)  # registers the id with the router (multiplexed), no second encode

    async def portrait(self, pid: str):
        return await self.load_portrait(pid)

    async def load_portrait(self, pid: str):
        """Portrait id -> encoded portrait (wrapped by `serve.multiplexed` in `deployment`)."""
        portrait = self.fresh.pop(pid, None)
        if portrait is not None:
            return portrait
        data = await self.store.get.remote(pid)
        if data is None:
            raise FlashTalkError(f"unknown portrait_id {pid!r}: upload it with POST /portraits first")
        loop = asyncio.get_running_loop()
        image = await loop.run_in_executor(self.state.setup, self._decode, data, self.config.max_image_side)
        return await loop.run_in_executor(self.state.setup, self.state.encode, image)

    async def check_health(self) -> None:  # Ray's health check: the scheduler thread must be alive
        thread = self.state.scheduler._thread
        if thread is not None and not thread.is_alive():
            raise RuntimeError("the scheduler thread stopped")


def deployment(config: ServeConfig, options: RayOptions, backend: BackendSpec):
    """The bound Serve application (`serve.run(...)` it)."""
    ray, serve = _ray()
    gpus = options.gpus
    if gpus is None:
        gpus = ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= 1
    replicas = options.replicas
    if replicas is None:
        replicas = max(1, int(ray.cluster_resources().get("GPU", 0))) if ray.is_initialized() else 1
    cls = type(DEPLOYMENT, (FlashTalkReplica,), {})
    # the multiplexed loader must sit under its own name on the class (Ray finds `self` by that name)
    cls.load_portrait = serve.multiplexed(max_num_models_per_replica=config.max_portraits)(
        FlashTalkReplica.load_portrait
    )
    dep = serve.deployment(
        serve.ingress()(cls),
        name=DEPLOYMENT,
        num_replicas=replicas,
        max_ongoing_requests=options.sessions + 1,
        max_queued_requests=options.max_queued,
        graceful_shutdown_timeout_s=options.drain_timeout_s,
        graceful_shutdown_wait_loop_s=1.0,
        ray_actor_options={"num_gpus": 1} if gpus else {"num_cpus": options.num_cpus},
    )
    fields = {k: v for k, v in asdict(config).items() if k not in ("host", "port", "replica")}
    fields["max_sessions"] = options.sessions
    return dep.bind(fields, asdict(backend))


def app(args: dict[str, Any] | None = None):
    """Application builder for `serve run` / KubeRay (import path `flashtalk.serving.ray_app:app`); args:
    sessions, replicas, backend ("preview" | "network"), weights, token, max_upload_mb."""
    args = dict(args or {})
    backend = BackendSpec(kind=args.pop("backend", "preview"), weights=args.pop("weights", None))
    options = RayOptions(replicas=args.pop("replicas", None), sessions=int(args.pop("sessions", 16)))
    token = args.pop("token", None) or os.environ.get("FLASHTALK_TOKEN")
    upload = int(float(args.pop("max_upload_mb", 8)) * (1 << 20))
    if args:
        raise FlashTalkError(
            f"unknown application args {sorted(args)} (known: sessions, replicas, backend, "
            "weights, token, max_upload_mb)"
        )
    return deployment(ServeConfig(token=token, max_upload_bytes=upload), options, backend)


def start_local_ray(num_cpus: int | None = None) -> None:
    """A local Ray on 127.0.0.1: dashboard off, usage stats off, quiet logs."""
    import flashtalk

    ray, _ = _ray()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # the workers import the same flashtalk as this process (a checkout as much as an install)
    here = os.path.dirname(os.path.dirname(os.path.abspath(flashtalk.__file__)))
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    if not ray.is_initialized():
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            configure_logging=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": path}},
        )


def run(config: ServeConfig, options: RayOptions, backend: BackendSpec, *, blocking: bool = True) -> str:
    """Start a local Ray, deploy, and (blocking) serve until interrupted; returns the proxy's URL."""
    ray, serve = _ray()
    start_local_ray()
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(deployment(config, options, backend), name=APP_NAME, route_prefix="/", blocking=False)
    url = f"http://{config.host}:{config.port}/"
    _warm(url)
    if not blocking:
        return url
    print(
        f"flashtalk serve --ray: {url}  ({options.replicas or 'one per GPU'} replicas, {options.sessions} "
        f"sessions each{', token required' if config.token else ''})",
        flush=True,
    )
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        shutdown()
    return url


def _warm(url: str, tries: int = 50) -> None:
    """One request through the proxy before clients come: its first requests set up its route to the
    deployment, and several WebSockets arriving together before that can get HTTP 500."""
    import urllib.error
    import urllib.request

    for _ in range(tries):
        try:
            with urllib.request.urlopen(url + "health", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)


def shutdown() -> None:
    """Stop Serve, the portrait store and the local Ray started by `run`."""
    ray, serve = _ray()
    if not ray.is_initialized():
        return
    try:
        serve.shutdown()
        try:
            ray.kill(ray.get_actor(STORE, namespace="serve"))
        except ValueError:
            pass
    finally:
        ray.shutdown()


__all__ = ["PortraitStore", "RayOptions", "app", "deployment", "run", "shutdown", "start_local_ray"]

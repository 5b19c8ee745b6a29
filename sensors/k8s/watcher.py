"""Keep a :class:`~sensors.k8s.cache.PodCache` fresh with list + watch through the ``kubernetes`` client.

One thread per resource (pods, replicasets, jobs, services): LIST (remember ``resourceVersion``), then WATCH from it;
on ``410 Gone`` / an ``ERROR`` event / a dropped connection it lists again (after a bounded backoff), so
the cache never silently misses a change. Responses are read raw (``_preload_content=False``) and parsed
with orjson: the client's model classes are far too slow for a watch stream.

The client is configured explicitly from arguments (:func:`build_api_client`); nothing reads
``KUBECONFIG`` or the environment. In a pod, pass the service-account token and CA file.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from sensors.k8s.cache import PodCache
from sensors.k8s.errors import K8sError

__all__ = ["IN_CLUSTER_CA", "IN_CLUSTER_TOKEN", "PodWatcher", "build_api_client"]

log = logging.getLogger(__name__)

IN_CLUSTER_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
IN_CLUSTER_CA = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"


def build_api_client(
    host: str,
    *,
    token: str = "",
    token_file: str = "",
    ca_file: str = "",
    verify: bool = True,
    client_cert: str = "",
    client_key: str = "",
) -> Any:
    """A ``kubernetes.client.ApiClient`` for ``host`` with exactly the credentials given."""
    from kubernetes import client as kc

    cfg = kc.Configuration()
    cfg.host = host.rstrip("/")
    if token_file and not token:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise K8sError(f"cannot read the API token file {token_file}: {exc}") from exc
    if token:
        cfg.api_key = {"authorization": token}
        cfg.api_key_prefix = {"authorization": "Bearer"}
    if ca_file:
        cfg.ssl_ca_cert = ca_file
    cfg.verify_ssl = verify
    if client_cert:
        cfg.cert_file = client_cert
        cfg.key_file = client_key
    return kc.ApiClient(cfg)


@dataclass
class _Resource:
    kind: str
    list_fn: Callable[..., Any]
    field_selector: str = ""
    #: :meth:`PodWatcher.wait_synced` waits for it (Services only name connection peers: an API server
    #: that does not serve them must not hold the sensor back)
    required: bool = True


class PodWatcher:
    """Watch pods (optionally of one node) and the ReplicaSets/Jobs their owner chains pass through."""

    def __init__(
        self,
        api_client: Any,
        cache: PodCache,
        *,
        node_name: str = "",
        watch_timeout_s: int = 300,
        backoff_max_s: float = 30.0,
    ) -> None:
        from kubernetes import client as kc

        self.cache = cache
        self.watch_timeout_s = watch_timeout_s
        self.backoff_max_s = backoff_max_s
        core = kc.CoreV1Api(api_client)
        apps = kc.AppsV1Api(api_client)
        batch = kc.BatchV1Api(api_client)
        self._resources = [
            _Resource(
                "Pod", core.list_pod_for_all_namespaces, f"spec.nodeName={node_name}" if node_name else ""
            ),
            _Resource("ReplicaSet", apps.list_replica_set_for_all_namespaces),
            _Resource("Job", batch.list_job_for_all_namespaces),
            _Resource("Service", core.list_service_for_all_namespaces, required=False),
        ]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._synced = {r.kind: threading.Event() for r in self._resources}
        self._required = [self._synced[r.kind] for r in self._resources if r.required]
        self._responses: dict[str, Any] = {}
        self.relists = dict.fromkeys(self._synced, 0)
        self.events = dict.fromkeys(self._synced, 0)

    def start(self) -> None:
        for res in self._resources:
            t = threading.Thread(target=self._loop, args=(res,), name=f"k8s-watch-{res.kind}", daemon=True)
            t.start()
            self._threads.append(t)

    def wait_synced(self, timeout_s: float) -> bool:
        """True once every resource has been listed at least once (bounded wait)."""
        deadline = time.monotonic() + timeout_s
        return all(ev.wait(max(0.0, deadline - time.monotonic())) for ev in self._required)

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        for resp in list(self._responses.values()):
            _shutdown(resp)
        for t in self._threads:
            t.join(timeout_s)
        self._threads.clear()

    # -- per-resource loop -----------------------------------------------------------------------

    def _loop(self, res: _Resource) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                version: str | None = self._list(res)
                self._synced[res.kind].set()
                backoff = 0.5
                while not self._stop.is_set() and version is not None:
                    version = self._watch(res, version)
                self._stop.wait(0.2)  # an API server that errors every watch must not spin this loop
            except Exception as exc:  # the API server being away must never kill the thread
                if self._stop.is_set():
                    return
                log.warning("watching %s failed (%s); relisting in %.1fs", res.kind, exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.backoff_max_s)
            self.relists[res.kind] += 1

    def _call(self, res: _Resource, **kwargs: Any) -> Any:
        if res.field_selector:
            kwargs["field_selector"] = res.field_selector
        resp = res.list_fn(_preload_content=False, **kwargs)
        if not 200 <= resp.status < 300:
            body = resp.data[:500] if hasattr(resp, "data") else b""
            what = "watch" if kwargs.get("watch") else "list"
            raise K8sError(f"{res.kind} {what}: HTTP {resp.status} {body!r}")
        return resp

    def _list(self, res: _Resource) -> str:
        resp = self._call(res)
        doc = orjson.loads(resp.data)
        items = [i for i in doc.get("items") or [] if isinstance(i, dict)]
        self.cache.replace(res.kind, items)
        return str((doc.get("metadata") or {}).get("resourceVersion", ""))

    def _watch(self, res: _Resource, version: str) -> str | None:
        """Follow one watch request; returns the version to resume from, or None to relist."""
        resp = self._call(
            res,
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=self.watch_timeout_s,
            _request_timeout=(10, self.watch_timeout_s + 30),
        )
        self._responses[res.kind] = resp
        try:
            if self._stop.is_set():  # stop() ran while this request was in flight: it saw no response
                return None
            for line in _lines(resp):
                if self._stop.is_set():
                    return None
                event = orjson.loads(line)
                etype = event.get("type")
                obj = event.get("object") or {}
                if etype == "ERROR":
                    # 410 Gone: our version is too old; anything else: start over the same way
                    log.info("%s watch error %s: relisting", res.kind, obj.get("code"))
                    return None
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if rv:
                    version = str(rv)
                if etype in ("ADDED", "MODIFIED"):
                    self.cache.upsert(res.kind, obj)
                elif etype == "DELETED":
                    self.cache.delete(res.kind, obj)
                self.events[res.kind] += 1
        finally:
            self._responses.pop(res.kind, None)
            resp.release_conn()
        return version  # the server ended the watch (timeout_seconds): continue from where we are


def _lines(resp: Any) -> Any:
    buffer = b""
    for chunk in resp.stream(amt=None, decode_content=True):
        buffer += chunk
        while True:
            nl = buffer.find(b"\n")
            if nl < 0:
                break
            line, buffer = buffer[:nl], buffer[nl + 1 :]
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer


def _shutdown(resp: Any) -> None:
    """Unblock a thread reading a watch stream (closing the socket from another thread)."""
    try:
        sock = resp._fp.fp.raw._sock  # urllib3 HTTPResponse -> http.client -> socket
        sock.shutdown(socket.SHUT_RDWR)
    except Exception:  # already closed or a different transport: nothing to unblock
        log.debug("could not shut down a watch socket", exc_info=True)

"""PodWatcher against a local HTTP(S) server that plays back Kubernetes API JSON (list and watch streams).

The server checks the bearer token, serves ``data/*-list*.json`` for LIST and ``pods-watch-1.jsonl`` for
the first pod WATCH (ADDED, MODIFIED, DELETED, then ERROR 410), after which the watcher must LIST again.
Later watches stay open and silent until the test ends. Waits poll a condition with a bounded deadline.
"""

from __future__ import annotations

import http.server
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import trustme

from sensors.k8s.cache import PodCache
from sensors.k8s.errors import K8sError
from sensors.k8s.watcher import PodWatcher, build_api_client

DATA = Path(__file__).parent / "data"
TOKEN = "k8s-test-token"


@dataclass
class FakeApiServer:
    """Plays back recorded responses; records every request path."""

    requests: list[str] = field(default_factory=list)
    pod_lists: list[str] = field(default_factory=lambda: ["pods-list-1.json", "pods-list-2.json"])
    pod_watches: list[str] = field(default_factory=lambda: ["pods-watch-1.jsonl"])
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return None

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                with server.lock:
                    server.requests.append(self.path)
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self._send(401, b'{"kind":"Status","code":401,"reason":"Unauthorized"}')
                    return
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                resource = {
                    "/api/v1/pods": "pods",
                    "/apis/apps/v1/replicasets": "rs",
                    "/apis/batch/v1/jobs": "jobs",
                    "/api/v1/services": "services",
                }
                kind = resource.get(url.path)
                if kind is None:
                    self._send(404, b"{}")
                    return
                if query.get("watch") == ["true"]:
                    self._watch(kind)
                    return
                name = {
                    "rs": "replicasets-list.json",
                    "jobs": "jobs-list.json",
                    "services": "services-list.json",
                }.get(kind)
                if name is None:
                    with server.lock:
                        name = server.pod_lists.pop(0) if len(server.pod_lists) > 1 else server.pod_lists[0]
                self._send(200, (DATA / name).read_bytes())

            def _watch(self, kind: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()  # HTTP/1.0: the body runs until the server closes
                script = None
                if kind == "pods":
                    with server.lock:
                        script = server.pod_watches.pop(0) if server.pod_watches else None
                if script is not None:
                    for line in (DATA / script).read_bytes().splitlines():
                        self.wfile.write(line + b"\n")
                        self.wfile.flush()
                    return
                server.stop.wait(30)  # an idle watch: open and silent (bounded)

        return Handler


@pytest.fixture
def api_server() -> Iterator[tuple[FakeApiServer, str]]:
    fake = FakeApiServer()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        fake.stop.set()
        httpd.shutdown()
        httpd.server_close()


def _wait_for(condition: Callable[[], bool], timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_list_watch_410_relist(api_server: tuple[FakeApiServer, str]) -> None:
    fake, url = api_server
    cache = PodCache(cluster="c1")
    watcher = PodWatcher(build_api_client(url, token=TOKEN), cache, node_name="worker-1", watch_timeout_s=30)
    watcher.start()
    try:
        assert watcher.wait_synced(15)
        # the watch added the api pod, then gave it a container id (MODIFIED)
        assert _wait_for(lambda: cache.resolve("7a" * 32) is not None)
        api = cache.resolve("7a" * 32)
        assert api is not None and (api.workload_kind, api.workload_name) == ("Deployment", "api")
        assert api.service_account == "api" and api.pod_ip == "10.244.1.11"
        # ERROR 410 -> relist: pods-list-2 has worker-0 and no debug pod
        assert _wait_for(lambda: cache.by_pod("jobs", "worker-0") is not None)
        assert cache.by_pod("default", "debug") is None
        assert watcher.relists["Pod"] >= 1
        web = cache.resolve("containerd://" + "1a" * 32)
        assert web is not None and web.workload_name == "web"
        job = cache.resolve("2b" * 32)
        assert job is not None and (job.workload_kind, job.workload_name) == ("CronJob", "nightly-backup")
        # Services name connection peers: the web Service's cluster IP is the web Deployment
        assert _wait_for(lambda: cache.peer_of("10.96.12.7") == "c1/shop/Deployment/web")
        assert cache.peer_of("10.244.1.11") == "c1/shop/Deployment/api"
    finally:
        watcher.stop()
    pod_requests = [r for r in fake.requests if r.startswith("/api/v1/pods")]
    assert all("fieldSelector=spec.nodeName%3Dworker-1" in r for r in pod_requests)
    watches = [r for r in pod_requests if "watch=true" in r]
    assert "resourceVersion=1000" in watches[0]  # the first watch resumes from the LIST's version
    assert any("resourceVersion=1600" in r for r in watches[1:])  # and after the relist, from its version


def test_a_wrong_token_never_syncs(api_server: tuple[FakeApiServer, str]) -> None:
    fake, url = api_server
    watcher = PodWatcher(build_api_client(url, token="wrong"), PodCache(), backoff_max_s=0.2)
    watcher.start()
    try:
        assert not watcher.wait_synced(1.0)
        assert _wait_for(lambda: len(fake.requests) >= 3)
    finally:
        watcher.stop()


def test_tls_with_the_given_ca_and_token_file(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca_file = tmp_path / "ca.crt"
    ca.cert_pem.write_to_path(str(ca_file))
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    fake = FakeApiServer()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
    httpd.daemon_threads = True
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    cache = PodCache()
    host = f"https://127.0.0.1:{httpd.server_address[1]}"
    watcher = PodWatcher(build_api_client(host, token_file=str(token_file), ca_file=str(ca_file)), cache)
    watcher.start()
    try:
        assert watcher.wait_synced(15)
        assert cache.by_pod("shop", "db-0") is not None
    finally:
        watcher.stop()
        fake.stop.set()
        httpd.shutdown()
        httpd.server_close()


def test_an_unreadable_token_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(K8sError, match="token file"):
        build_api_client("https://127.0.0.1:6443", token_file=str(tmp_path / "missing"))

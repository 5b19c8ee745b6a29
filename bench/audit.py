"""Benchmark: audit events/s accepted through the TLS webhook into Kafka, against a bare orjson decode.

The payloads are what the API server's batch webhook backend sends: ``EventList`` bodies of 100-400
events (random sizes, fixed seed), each event with a fresh auditID. A separate client process POSTs them over TLS with a client certificate and a bearer token on
``--senders`` keep-alive connections; the webhook (this process) validates, normalizes, publishes
each batch to a real Kafka broker with acks=all and answers 200 only after the ack.

Printed, all from the same run and the same payloads:
- webhook: events/s from the first request to the last 200, checked against the topic's end offsets;
- baseline: a bare ``orjson.loads`` of every body (events/s), and the ratio webhook / baseline;
- breakdown: ``process_body`` alone (parse + validate + normalize + encode, no network, no Kafka).

Two payload mixes run in turn against the same broker: ``corpus`` (every event a recorded corpus
event, mostly writes with request and response bodies: the worst case) and ``cluster`` (75%
Metadata-level reads and status writes, as most of a production audit stream, plus 25% corpus).

    python bench/audit.py [--events 100000] [--senders 4] [--kafka BOOTSTRAP]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import random
import ssl
import struct
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cadr.kafka_local import LocalKafka
from cadr.runtime import relax_cyclic_gc
from cadr.topics import ensure_topics
from schemas.codec import split_batch
from schemas.settings import AuditSettings
from schemas.topics import topic_specs
from sensors.audit.credentials import ensure_local_credentials
from sensors.audit.sink import KafkaSink
from sensors.audit.webhook import AuditWebhook, process_body

#: Falco's recorded audit events (tests/data/k8s_audit/README.md says where from)
CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "k8s_audit" / "falco"


def corpus_events() -> list[dict[str, Any]]:
    out = []
    for path in sorted(CORPUS.glob("*.json")):
        for line in path.read_bytes().splitlines():
            if line.strip():
                doc = orjson.loads(line)
                if isinstance(doc, dict) and doc.get("kind") == "Event":
                    out.append(doc)
    return out


_READ_VERBS = ["get", "get", "get", "list", "watch", "update", "patch"]
_READ_RESOURCES = [("", "pods"), ("", "configmaps"), ("", "secrets"), ("", "services"), ("apps", "deployments"),
                   ("", "nodes"), ("", "serviceaccounts"), ("discovery.k8s.io", "endpointslices")]  # fmt: skip
_USERS = [
    (
        "system:serviceaccount:kube-system:deployment-controller",
        ["system:serviceaccounts", "system:authenticated"],
    ),
    ("system:serviceaccount:monitoring:prometheus", ["system:serviceaccounts", "system:authenticated"]),
    ("system:node:worker-3", ["system:nodes", "system:authenticated"]),
    ("alice@example.com", ["developers", "system:authenticated"]),
]


def metadata_event(rng: random.Random) -> dict[str, Any]:
    """A Metadata-level event like most of a production audit stream (reads and status writes)."""
    group, resource = rng.choice(_READ_RESOURCES)
    verb = rng.choice(_READ_VERBS)
    user, groups = rng.choice(_USERS)
    ns = f"team-{rng.randint(1, 40)}"
    name = f"{resource[:-1]}-{rng.randint(1, 5000)}"
    prefix = f"/apis/{group}/v1" if group else "/api/v1"
    return {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": str(uuid.UUID(int=rng.getrandbits(128))),
        "stage": "ResponseComplete",
        "requestURI": f"{prefix}/namespaces/{ns}/{resource}/{name}",
        "verb": verb,
        "user": {"username": user, "groups": groups},
        "sourceIPs": [f"10.0.{rng.randint(0, 255)}.{rng.randint(1, 254)}"],
        "userAgent": "kube-controller-manager/v1.31.0 (linux/amd64) kubernetes/9edcffc",
        "objectRef": {
            "resource": resource,
            "namespace": ns,
            "name": name,
            "apiGroup": group,
            "apiVersion": "v1",
        },
        "responseStatus": {"metadata": {}, "code": 200},
        "requestReceivedTimestamp": "2026-11-27T12:00:00.123456Z",
        "stageTimestamp": "2026-11-27T12:00:00.125678Z",
        "annotations": {"authorization.k8s.io/decision": "allow", "authorization.k8s.io/reason": ""},
    }


def build_bodies(total: int, seed: int, metadata_share: float = 0.0) -> tuple[list[bytes], int]:
    """EventList bodies of 100-400 events until ``total`` events; returns (bodies, events).

    ``metadata_share`` of the events are Metadata-level reads/status writes, the rest recorded corpus
    events (mostly writes with their request and response bodies).
    """
    base = corpus_events()
    rng = random.Random(seed)
    bodies: list[bytes] = []
    n = 0
    while n < total:
        size = min(rng.randint(100, 400), total - n) if total - n >= 100 else total - n
        items = []
        for _ in range(size):
            if rng.random() < metadata_share:
                items.append(metadata_event(rng))
                continue
            ev = dict(rng.choice(base))
            ev["auditID"] = f"{uuid.UUID(int=rng.getrandbits(128))}"
            items.append(ev)
        n += size
        doc = {"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": items}
        bodies.append(orjson.dumps(doc))
    return bodies, n


# -- the client (a separate process, like the API server) ----------------------------------------


def _client_main(
    body_file: str, url: str, ca: str, cert: str, key: str, token: str, senders: int, out: Any
) -> None:
    import aiohttp

    data = Path(body_file).read_bytes()
    bodies = []
    pos = 0
    while pos < len(data):
        (length,) = struct.unpack_from("<I", data, pos)
        bodies.append(data[pos + 4 : pos + 4 + length])
        pos += 4 + length

    async def run() -> tuple[float, dict[int, int]]:
        ctx = ssl.create_default_context(cafile=ca)
        ctx.load_cert_chain(cert, key)
        statuses: dict[int, int] = {}
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        for b in bodies:
            queue.put_nowait(b)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        connector = aiohttp.TCPConnector(ssl=ctx, limit=senders)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def sender() -> None:
                while True:
                    try:
                        body = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        return
                    async with session.post(url, data=body, headers=headers) as resp:
                        await resp.read()
                        statuses[resp.status] = statuses.get(resp.status, 0) + 1

            # warm the connections (TLS handshakes) outside the timed part
            async with session.get(url + "healthz", headers=headers) as resp:
                await resp.read()
            start = time.perf_counter()
            await asyncio.gather(*(sender() for _ in range(senders)))
            return time.perf_counter() - start, statuses

    elapsed, statuses = asyncio.run(run())
    out.send((elapsed, statuses))


# -- the server side -----------------------------------------------------------------------------


async def _events_in_topic(bootstrap: str, topic: str) -> int:
    """Events in ``topic``: a record is one event or an event batch (a JSON array of them). Reads the topic
    to its end offsets (bounded: gives up after 60 s)."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        ends = await consumer.end_offsets(tps)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        events = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            behind = [tp for tp in tps if await consumer.position(tp) < ends[tp]]
            if not behind:
                break
            got = await consumer.getmany(timeout_ms=500)
            for records in got.values():
                for r in records:
                    if r.value is not None:
                        events += len(split_batch(r.value))
        return events
    finally:
        await consumer.stop()


async def bench_webhook(
    bodies: list[bytes], events: int, bootstrap: str, senders: int, workdir: Path
) -> dict[str, Any]:
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    await ensure_topics(bootstrap, topic_specs(prefix, 4))
    creds = ensure_local_credentials(workdir / "tls")
    settings = AuditSettings(
        host="127.0.0.1",
        port=0,
        tls_cert=str(creds.server_cert),
        tls_key=str(creds.server_key),
        client_ca=str(creds.ca_cert),
        token_file=str(creds.token_file),
    )
    sink = KafkaSink(bootstrap, f"{prefix}raw", f"{prefix}dlq", timeout_s=60)
    hook = AuditWebhook(settings, sink, cluster="bench", node="bench")
    await hook.start()
    body_file = workdir / "bodies.bin"
    with open(body_file, "wb") as fh:
        for b in bodies:
            fh.write(struct.pack("<I", len(b)) + b)
    try:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=_client_main,
            args=(
                str(body_file),
                hook.url,
                str(creds.ca_cert),
                str(creds.client_cert),
                str(creds.client_key),
                creds.token_file.read_text().strip(),
                senders,
                child,
            ),
        )
        proc.start()
        while not parent.poll():
            if not proc.is_alive() and not parent.poll():
                raise RuntimeError(f"the client process died (exit code {proc.exitcode})")
            await asyncio.sleep(0.05)
        elapsed, statuses = parent.recv()
        proc.join(30)
    finally:
        await hook.stop()
    stored = await _events_in_topic(bootstrap, f"{prefix}raw")
    return {"elapsed": elapsed, "statuses": statuses, "stored": stored, "events": events}


MIXES = [
    ("corpus", 0.0, "recorded Falco corpus events: writes with request/response bodies (worst case)"),
    (
        "cluster",
        0.75,
        "75% Metadata-level reads/status writes + 25% corpus writes (a production-like stream)",
    ),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=100_000, help="events to send per mix (default: 100000)")
    ap.add_argument("--senders", type=int, default=4, help="concurrent client connections (default: 4)")
    ap.add_argument("--seed", type=int, default=1, help="payload seed (default: 1)")
    ap.add_argument("--kafka", help="use this broker instead of starting a local one (default: local)")
    args = ap.parse_args()

    ok = True
    with tempfile.TemporaryDirectory(prefix="cadr-bench-audit-") as tmp:
        workdir = Path(tmp)
        kafka = None
        bootstrap = args.kafka
        if not bootstrap:
            kafka = LocalKafka(workdir / "kafka")
            kafka.start()
            bootstrap = kafka.bootstrap
        try:
            relax_cyclic_gc(
                freeze=True
            )  # what `cadr sensor audit` does at start; the baselines below run under it too
            # warm the broker's JIT and page cache first: the first seconds of a fresh JVM are not steady state
            warm, warm_n = build_bodies(min(args.events, 30_000), args.seed + 1, 0.5)
            (workdir / "warmup").mkdir()
            asyncio.run(bench_webhook(warm, warm_n, bootstrap, args.senders, workdir / "warmup"))
            for mix, share, what in MIXES:
                bodies, events = build_bodies(args.events, args.seed, share)
                total_bytes = sum(map(len, bodies))
                print(f"\n[{mix}] {what}")
                print(
                    f"payload: {events} events in {len(bodies)} EventList bodies of 100-400, "
                    f"{total_bytes / events:.0f} B/event"
                )
                start = time.perf_counter()
                for b in bodies:
                    orjson.loads(b)
                baseline = events / (time.perf_counter() - start)
                start = time.perf_counter()
                for b in bodies:
                    process_body(b, cluster="bench", node="bench")
                normalize_rate = events / (time.perf_counter() - start)
                mixdir = workdir / mix
                mixdir.mkdir()
                result = asyncio.run(bench_webhook(bodies, events, bootstrap, args.senders, mixdir))
                rate = events / result["elapsed"]
                good = result["statuses"] == {200: len(bodies)} and result["stored"] == events
                ok = ok and good
                print(f"baseline  orjson.loads of the same bodies:            {baseline:>10,.0f} events/s")
                print(
                    f"breakdown process_body (validate+normalize+encode):   {normalize_rate:>10,.0f} events/s"
                )
                print(
                    f"webhook   TLS + client cert + token -> Kafka acks=all: {rate:>9,.0f} events/s "
                    f"({total_bytes / result['elapsed'] / 1e6:.1f} MB/s, {args.senders} senders)"
                )
                print(
                    f"ratio webhook / orjson decode: {rate / baseline:.3f} (goal: webhook >= 20,000 events/s)"
                )
                print(
                    f"responses {result['statuses']}; events in the raw topic {result['stored']} of {events}: "
                    + ("ok" if good else "MISMATCH")
                )
        finally:
            if kafka is not None:
                kafka.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Forwarding throughput per destination type, against bare send loops to the same servers.

    .venv/bin/python bench/forward.py [--incidents 20000] [--batch-size 500] [--concurrency 2]
                                      [--kafka HOST:PORT]

The receivers are the protocol-faithful test servers (tests/streams/forward/servers.py:
Splunk HEC, Elasticsearch bulk, a JSON webhook) running in a separate process so they do
not share the client's interpreter, plus a real rsyslogd for syslog when installed.

For each destination type it measures, in the same run and against the same server:

- ``cadr``: the forwarder's path from the bytes read off ``cadr.incidents`` (decode,
  filter, shape, encode, batch, send, check the reply) through the delivery loop;
- ``bare POST``: a loop POSTing one incident per request, the shape of a naive forwarder
  (for syslog: one write per message with no acknowledgment wait);
- ``bare batched``: a loop POSTing pre-built bodies of the same batch size (no decoding,
  no reply checks beyond the status): the ceiling of the transport.

and prints incidents/s and the ratios cadr / bare POST and cadr / bare batched. With
``--kafka`` it also runs the whole consumer-group path (produce N, forward N).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from schemas.codec import encode  # noqa: E402
from streams.forward.delivery import Deliverer  # noqa: E402
from streams.forward.destinations import build_destination  # noqa: E402
from streams.forward.metrics import DestinationMetrics  # noqa: E402
from streams.forward.parse import parse_destination  # noqa: E402
from streams.forward.payload import Item, decode_record, make_item, matches  # noqa: E402
from tests.streams.forward.servers import (  # noqa: E402
    BulkServer,
    HecServer,
    Rsyslogd,
    WebhookServer,
    make_incident,
)

# --- the receivers, in their own process ------------------------------------------------------


async def _serve() -> None:
    hec, bulk, hook = HecServer(), BulkServer(), WebhookServer()
    for s in (hec, bulk, hook):
        await s.start()
    print(json.dumps({"hec": hec.url, "bulk": bulk.url, "webhook": hook.url + "/hook"}), flush=True)
    loop = asyncio.get_running_loop()
    # run until the parent closes our stdin
    await loop.run_in_executor(None, sys.stdin.read)
    for s in (hec, bulk, hook):
        await s.stop()


# --- measurements ---------------------------------------------------------------------------


def raw_incidents(n: int, tag: str) -> list[bytes]:
    return [encode(make_incident(i, 1 + i % 3, prefix=f"{tag}-inc")) for i in range(n)]


async def cadr_path(table: dict[str, Any], raws: list[bytes], *, batch_size: int, concurrency: int) -> float:
    """incidents/s through decode -> filter -> shape -> deliver, one fetched batch at a time."""
    cfg = parse_destination({"batch_size": batch_size, "concurrency": concurrency, **table}, "bench")
    dest = build_destination(cfg, node="bench")
    metrics = DestinationMetrics(cfg.name, cfg.type)

    async def dead_letter(item: Item, reason: str, reply: Any) -> None:
        raise RuntimeError(f"{cfg.name}: dead letter in a benchmark: {reason} {reply}")

    deliverer = Deliverer(dest, metrics, dead_letter)
    fetch = batch_size * concurrency
    start = time.perf_counter()
    in_flight: asyncio.Task[None] | None = None
    for i in range(0, len(raws), fetch):
        # as DestinationRunner does: shape the next batch while the previous one is sent
        items = []
        for raw in raws[i : i + fetch]:
            record = decode_record(raw, cfg.records)
            if matches(record, cfg.min_severity, cfg.filter):
                items.append(make_item(record, cfg, raw=raw))
        if in_flight is not None:
            await in_flight
        in_flight = asyncio.create_task(deliverer.deliver(items))
    if in_flight is not None:
        await in_flight
    elapsed = time.perf_counter() - start
    await dest.close()
    assert metrics.sent == len(raws), (metrics.sent, len(raws))
    return len(raws) / elapsed


async def post_loop(url: str, bodies: list[bytes], headers: dict[str, str], per_body: int) -> float:
    """incidents/s of a sequential POST loop over pre-built bodies."""
    async with aiohttp.ClientSession() as session:
        start = time.perf_counter()
        for body in bodies:
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                if resp.status >= 300:
                    raise RuntimeError(f"bare POST got HTTP {resp.status}")
        elapsed = time.perf_counter() - start
    return len(bodies) * per_body / elapsed


def _hec_event(raw: bytes) -> bytes:
    return b'{"sourcetype":"cadr:incident","event":' + raw + b"}"


def _bulk_pair(raw: bytes, n: int, tag: str) -> bytes:
    return orjson.dumps({"create": {"_index": f"bare-{tag}", "_id": f"{tag}-{n}"}}) + b"\n" + raw + b"\n"


def bodies_for(kind: str, raws: list[bytes], size: int, tag: str) -> list[bytes]:
    out = []
    for i in range(0, len(raws), size):
        chunk = raws[i : i + size]
        if kind == "splunk_hec":
            out.append(b"\n".join(_hec_event(r) for r in chunk))
        elif kind == "elasticsearch":
            out.append(b"".join(_bulk_pair(r, i + j, tag) for j, r in enumerate(chunk)))
        else:
            out.append(b"[" + b",".join(chunk) + b"]")
    return out


async def syslog_bare(port: int, raws: list[bytes]) -> float:
    """One octet-counted write per message, no acknowledgment wait (what most shippers do)."""
    messages = [b"<131>1 - bench cadr - incident - " + r for r in raws]
    frames = [str(len(m)).encode() + b" " + m for m in messages]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.perf_counter()
    for f in frames:
        writer.write(f)
        await writer.drain()
    elapsed = time.perf_counter() - start
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    del reader
    return len(frames) / elapsed


async def kafka_end_to_end(
    bootstrap: str, urls: dict[str, str], n: int, batch_size: int, concurrency: int
) -> float:
    """The whole path: produce n incidents, then a Forwarder (consumer group) delivers them to HEC."""
    from aiokafka import AIOKafkaProducer

    from cadr.topics import ensure_topics
    from schemas.settings import Settings
    from schemas.topics import topic_specs
    from streams.forward.consumer import Forwarder
    from streams.forward.parse import parse_forward_config

    prefix = f"bench{uuid.uuid4().hex[:6]}."
    await ensure_topics(bootstrap, topic_specs(prefix, 4))
    settings = Settings()
    settings.kafka.bootstrap = bootstrap
    settings.kafka.topic_prefix = prefix
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    raws = raw_incidents(n, prefix.rstrip("."))
    futs = [
        await producer.send(prefix + "incidents", key=str(i).encode(), value=r) for i, r in enumerate(raws)
    ]
    await asyncio.gather(*futs)
    await producer.stop()
    cfg = parse_forward_config(
        {
            "group_prefix": prefix,
            "log_interval_s": 0,
            "destinations": [
                {
                    "name": "hec",
                    "type": "splunk_hec",
                    "url": urls["hec"],
                    "token": "hec-token",
                    "batch_size": batch_size,
                    "concurrency": concurrency,
                }
            ],
        },
        topic_prefix=prefix,
    )
    fw = Forwarder(settings, cfg)
    await ensure_topics(bootstrap, fw.dead_letter_specs())  # as `cadr forward` does
    m = fw.metrics.destinations["hec"]
    start = time.perf_counter()
    task = asyncio.create_task(fw.run())
    first: float | None = None
    while m.sent < n:
        if first is None and m.sent:
            first = time.perf_counter()
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - (first or start)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return n / elapsed


async def main(args: argparse.Namespace) -> None:
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT
    )
    assert server.stdout is not None and server.stdin is not None
    urls = json.loads(server.stdout.readline())
    rsyslog: Rsyslogd | None = None
    tmp = Path(tempfile.mkdtemp(prefix="cadr-bench-"))
    if shutil.which("rsyslogd"):
        rsyslog = Rsyslogd(tmp / "rsyslog")
        rsyslog.start()
    n, size, conc = args.incidents, args.batch_size, args.concurrency
    bare_n = min(n, args.bare_incidents)
    print(
        f"forwarding {n} incidents (~{len(raw_incidents(1, 'x')[0])} bytes each), batch {size}, "
        f"concurrency {conc}; bare per-incident loops send {bare_n}",
        flush=True,
    )
    rows: list[tuple[str, float, float, float]] = []
    try:
        targets: list[tuple[str, dict[str, Any], str, dict[str, str]]] = [
            (
                "splunk_hec",
                {"type": "splunk_hec", "url": urls["hec"], "token": "hec-token"},
                urls["hec"] + "/services/collector/event",
                {"Authorization": "Splunk hec-token", "Content-Type": "application/json"},
            ),
            (
                "elasticsearch",
                {"type": "elasticsearch", "url": urls["bulk"], "index": "bench"},
                urls["bulk"] + "/_bulk",
                {"Content-Type": "application/x-ndjson"},
            ),
            (
                "webhook",
                {"type": "webhook", "url": urls["webhook"]},
                urls["webhook"],
                {"Content-Type": "application/json"},
            ),
        ]
        for kind, table, url, headers in targets:
            tag = uuid.uuid4().hex[:6]
            raws = raw_incidents(n, tag)
            cadr = await cadr_path({"name": kind, **table}, raws, batch_size=size, concurrency=conc)
            bare_one = await post_loop(url, bodies_for(kind, raws[:bare_n], 1, tag + "a"), headers, 1)
            bare_batched = await post_loop(url, bodies_for(kind, raws, size, tag + "b"), headers, size)
            rows.append((kind, cadr, bare_one, bare_batched))
            print(f"  {kind:14s} done", flush=True)
        if rsyslog is not None:
            raws = raw_incidents(n, uuid.uuid4().hex[:6])
            table = {"name": "syslog", "type": "syslog", "host": "127.0.0.1", "port": rsyslog.port}
            cadr = await cadr_path(table, raws, batch_size=size, concurrency=conc)
            bare = await syslog_bare(rsyslog.port, raws[:bare_n])
            rows.append(("syslog (tcp)", cadr, bare, float("nan")))
        if args.kafka:
            e2e = await kafka_end_to_end(args.kafka, urls, n, size, conc)
            rows.append(("kafka->hec e2e", e2e, rows[0][2], rows[0][3]))
    finally:
        server.stdin.close()
        server.wait(timeout=30)
        if rsyslog is not None:
            rsyslog.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(
        f"{'destination':16s} {'cadr inc/s':>11s} {'bare POST/s':>12s} {'ratio':>7s} "
        f"{'bare batched/s':>15s} {'ratio':>7s}"
    )
    for kind, cadr, one, batched in rows:
        b = "n/a" if batched != batched else f"{batched:,.0f}"
        r2 = "n/a" if batched != batched else f"{cadr / batched:.2f}"
        print(f"{kind:16s} {cadr:>11,.0f} {one:>12,.0f} {cadr / one:>7.1f} {b:>15s} {r2:>7s}")
    print(
        "\nratio = cadr / baseline in this run. bare POST: one incident per request (syslog: one write per"
        " message, no ack wait).\nbare batched: pre-built bodies of the same batch size, one at a time."
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--incidents", type=int, default=20000, help="incidents per destination (default: 20000)"
    )
    parser.add_argument(
        "--bare-incidents",
        type=int,
        default=3000,
        help="incidents for the per-incident loops (default: 3000)",
    )
    parser.add_argument("--batch-size", type=int, default=500, help="records per request (default: 500)")
    parser.add_argument("--concurrency", type=int, default=2, help="requests in flight (default: 2)")
    parser.add_argument(
        "--kafka", default="", help="also run Kafka -> HEC end to end on this broker (default: off)"
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.serve:
        asyncio.run(_serve())
    else:
        asyncio.run(main(a))

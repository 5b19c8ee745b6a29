"""Syslog (RFC 5424, octet counting) into a real rsyslogd over TCP, TLS and mutual TLS.

Each test starts Debian's rsyslogd (``-n -f conf -i pidfile``) on a free loopback port
with a generated config: imtcp, the gtls driver for TLS with certificates made here by
trustme, and an omfile action whose template prints the fields rsyslog parsed (PRI,
timestamp, hostname, app-name, msgid, structured data, msg). The assertions read that
file, so they check what a real syslog daemon understood, not what we wrote.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import trustme

from streams.forward.consumer import send_test
from streams.forward.delivery import Deliverer
from streams.forward.destinations import build_destination
from streams.forward.metrics import DestinationMetrics
from streams.forward.parse import parse_destination
from streams.forward.payload import Item, make_item
from tests.streams.forward.servers import Rsyslogd, make_incident

pytestmark = pytest.mark.skipif(shutil.which("rsyslogd") is None, reason="rsyslogd is not installed")


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[Rsyslogd]:
    d = Rsyslogd(tmp_path / "tcp")
    d.start()
    yield d
    d.stop()


def _client_files(ca: trustme.CA, tmp_path: Path, *, client_cert: bool) -> dict[str, str]:
    files = {"ca_file": str(tmp_path / "client-ca.pem")}
    ca.cert_pem.write_to_path(files["ca_file"])
    if client_cert:
        files["cert_file"] = str(tmp_path / "client.pem")
        ca.issue_cert("cadr-forwarder").private_key_and_cert_chain_pem.write_to_path(files["cert_file"])
    return files


async def _deliver(
    table: dict[str, Any], spec: list[tuple[int, int]]
) -> tuple[list[Item], DestinationMetrics]:
    cfg = parse_destination(
        {"name": "sl", "type": "syslog", "host": "127.0.0.1", "retry": {"initial_backoff_s": 0.02}, **table},
        "t",
    )
    dest = build_destination(cfg, node="node-1")
    metrics = DestinationMetrics(cfg.name, cfg.type)

    async def dead_letter(item: Item, reason: str, reply: Any) -> None:
        raise AssertionError(f"unexpected dead letter {item.dedup_id}: {reason}")

    items = [make_item(make_incident(n, r), cfg) for n, r in spec]
    try:
        await asyncio.wait_for(Deliverer(dest, metrics, dead_letter).deliver(items), 60)
    finally:
        await dest.close()
    return items, metrics


def _sd(line: list[str]) -> dict[str, str]:
    body = line[5].strip("[]").split(" ", 1)[1]
    return dict(part.split("=", 1) for part in body.replace('"', "").split(" "))


def _check_order(lines: list[list[str]], expected: set[str]) -> None:
    ids = [f"{_sd(line)['incident_id']}:{_sd(line)['revision']}" for line in lines]
    assert set(ids) == expected
    last: dict[str, int] = {}
    for dedup in dict.fromkeys(ids):  # first arrivals, in order
        key, rev = dedup.rsplit(":", 1)
        assert int(rev) > last.get(key, 0)
        last[key] = int(rev)


async def test_tcp_json(rsyslog: Rsyslogd) -> None:
    spec = [(n, r) for r in (1, 2, 3) for n in range(10)]
    items, metrics = await _deliver({"port": rsyslog.port, "batch_size": 8}, spec)
    lines = await rsyslog.wait_lines(30)
    pri, ts, host, app, msgid, sd, msg = lines[0]
    assert (pri, host, app, msgid) == ("131", "node-1", "cadr", "incident")  # local0.err for high
    assert ts.startswith("2026-") and ts.endswith("Z")
    assert sd.startswith("[cadr@32473 incident_id=")
    record = orjson.loads(msg)
    assert record["incident_id"] == _sd(lines[0])["incident_id"] and record["record_type"] == "incident"
    _check_order(lines, {i.dedup_id for i in items})
    assert metrics.sent == 30


async def test_tcp_ocsf(rsyslog: Rsyslogd) -> None:
    await _deliver({"port": rsyslog.port, "format": "ocsf", "facility": "auth"}, [(1, 1)])
    ((pri, *_, msg),) = await rsyslog.wait_lines(1)
    assert pri == str(4 * 8 + 3)
    assert orjson.loads(msg)["class_uid"] == 2004


async def test_tls_cef(ca: trustme.CA, tmp_path: Path) -> None:
    d = Rsyslogd(tmp_path / "tls", tls="anon", ca=ca)
    d.start()
    try:
        tls = _client_files(ca, tmp_path, client_cert=False)
        items, _ = await _deliver(
            {
                "port": d.port,
                "transport": "tls",
                "payload": "cef",
                "tls": tls,
                "extra_fields": {"env": "prod"},
            },
            [(n, r) for r in (1, 2) for n in range(5)],
        )
        lines = await d.wait_lines(10)
    finally:
        d.stop()
    msg = lines[0][6]
    assert msg.startswith("CEF:0|cadr|cadr|") and "|cadr:incident|" in msg
    assert "env=prod" in msg and "cs6Label=dedupId" in msg
    _check_order(lines, {i.dedup_id for i in items})


async def test_mutual_tls(ca: trustme.CA, tmp_path: Path) -> None:
    d = Rsyslogd(tmp_path / "mtls", tls="x509/certvalid", ca=ca)
    d.start()
    try:
        good = _client_files(ca, tmp_path, client_cert=True)
        await _deliver({"port": d.port, "transport": "tls", "tls": good}, [(1, 1), (2, 1)])
        assert len(await d.wait_lines(2)) == 2
        # rsyslogd refuses a client without a certificate: the sender must not report success
        cfg = parse_destination(
            {
                "name": "x",
                "type": "syslog",
                "host": "127.0.0.1",
                "port": d.port,
                "transport": "tls",
                "timeout_s": 5,
                "tls": _client_files(ca, tmp_path, client_cert=False),
            },
            "t",
        )
        result = await send_test(cfg)
        assert not result.ok, result.message
    finally:
        d.stop()
    assert len(d.lines()) == 2


async def test_receiver_restart_loses_nothing(tmp_path: Path) -> None:
    """rsyslogd goes away mid-stream and comes back on the same port: every record arrives."""
    d = Rsyslogd(tmp_path / "restart")
    d.start()
    cfg = parse_destination(
        {
            "name": "sl",
            "type": "syslog",
            "host": "127.0.0.1",
            "port": d.port,
            "batch_size": 5,
            "concurrency": 1,
            "timeout_s": 5,
            "retry": {"initial_backoff_s": 0.05, "max_backoff_s": 0.2},
        },
        "t",
    )
    dest = build_destination(cfg, node="node-1")
    metrics = DestinationMetrics(cfg.name, cfg.type)

    async def dead_letter(item: Item, reason: str, reply: Any) -> None:
        raise AssertionError(reason)

    deliverer = Deliverer(dest, metrics, dead_letter)
    first = [make_item(make_incident(n, 1), cfg) for n in range(10)]
    second = [make_item(make_incident(n, 2), cfg) for n in range(10)]
    try:
        await deliverer.deliver(first)
        await d.wait_lines(10)
        d.stop(signal.SIGKILL)
        task = asyncio.create_task(deliverer.deliver(second))
        deadline = time.monotonic() + 30
        while metrics.failed == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert metrics.failed > 0 and not metrics.up
        d.start()
        await asyncio.wait_for(task, 60)
        # TCP-acknowledged is not yet written: wait for rsyslogd to write before stopping it
        # (an rsyslogd stopped with bytes still in its socket buffer drops them; see syslog.py).
        lines = await d.wait_lines(20)
    finally:
        await dest.close()
        d.stop()
    _check_order(lines, {i.dedup_id for i in first + second})


@pytest.fixture
def high_descriptors(tmp_path: Path) -> Iterator[None]:
    """Hold enough open files that new sockets get descriptor numbers above 1024 (select's FD_SETSIZE), as
    in a busy forwarder: an embedded ClickHouse alone keeps three open files per thread."""
    import os
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1300:
        pytest.skip(f"the open-files limit ({hard}) is too low to reach descriptor 1024")
    if soft != resource.RLIM_INFINITY and soft < 1300:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1300, hard))
    held: list[int] = []
    try:
        while not held or held[-1] < 1100:
            held.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.usefixtures("high_descriptors")
async def test_a_socket_numbered_above_1024_still_delivers(rsyslog: Rsyslogd) -> None:
    """select(2) refused such descriptors and the refusal read as "the receiver closed": every send failed."""
    import socket

    probe = socket.socket()
    assert probe.fileno() > 1024
    probe.close()
    items, metrics = await _deliver({"port": rsyslog.port, "batch_size": 4}, [(n, 1) for n in range(8)])
    lines = await rsyslog.wait_lines(8)
    _check_order(lines, {i.dedup_id for i in items})
    assert (metrics.sent, metrics.failed) == (8, 0)

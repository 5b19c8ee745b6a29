"""Name the workload at the other end of a connection (``network.peer_workload``) in the sensor.

The pod cache knows every pod IP and Service cluster IP the node's pod watch has seen; a connection to
one of them (or accepted from one) gets the peer's workload key in its network block, so pod-to-pod edges
exist in the events themselves, whether or not a rule fires on the connection, and the correlation's
lateral thread can follow them. Enrich fills what the sensor could not name from pod IPs it learnt from
other nodes' events.

Works on the JSON lines the consumers produce (the network block is the last block of a
``net_connect``/``net_accept`` line); a poll without connections costs one scan of its buffer.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import orjson

from sensors.ebpf.batch import JsonBatch, JsonItem

__all__ = ["PeerNames"]

_NET = re.compile(rb'"kind":"net_(?:connect|accept)"')
_DST = re.compile(rb'"dst_ip":"([^"]*)"')
_LOOPBACK = (b"127.", b"::1", b"0.0.0.0", b"::")


class PeerNames:
    """Adds ``peer_workload`` to connection events, from ``peer_of(ip) -> workload key or ""``."""

    def __init__(self, peer_of: Callable[[str], str]) -> None:
        self.peer_of = peer_of
        self.named = 0

    def wanted(self, batch: JsonBatch) -> bool:
        """Whether the batch holds a connection (a scan of its buffer, no copy)."""
        return bool(batch) and _NET.search(batch.data) is not None

    def process(self, items: list[JsonItem]) -> list[JsonItem]:
        out = items
        for i, item in enumerate(items):
            value = item[0]
            if _NET.search(value) is None or b'"peer_workload"' in value or not value.endswith(b'"}}'):
                continue
            m = _DST.search(value)
            if m is None or m.group(1).startswith(_LOOPBACK):
                continue
            peer = self.peer_of(m.group(1).decode())
            if not peer or peer.encode() == item[1]:  # unknown, or the workload itself (a replica)
                continue
            if out is items:
                out = list(items)
            out[i] = (
                value[:-2] + b',"peer_workload":' + orjson.dumps(peer) + b"}}",
                item[1],
                item[2],
                item[3],
            )
            self.named += 1
        return out

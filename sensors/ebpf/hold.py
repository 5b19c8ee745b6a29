"""Events of a container whose pod the watch does not know yet wait for it, briefly.

A container's first processes run before kubelet reports the container's id in the pod's status, and the
pod watch (``sensors.k8s``) learns it a moment later: events of that moment carried the container id
alone, keyed by it, and lost their workload for good (no profile, no pod, no service account for the
stories). Events of a Kubernetes container (its cgroup path names a pod) that the resolver does not know
are held here, in order, for up to ``hold_s``; every poll asks the resolver again, and once it names the
pod the held events leave with the pod's workload block and key (rewritten in their JSON) ahead of
anything newer of that container. A container still unknown after ``hold_s`` is let go: its held events
leave as they are and are counted (``unattributed``), and later ones are not held again.

Bounded: at most ``max_events`` held in all (beyond that, the oldest container's events leave
unattributed, counted as ``overflow``). In memory only, like the ring buffer they came from.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from schemas.records import Workload
from sensors.ebpf.batch import JsonItem
from sensors.ebpf.cgroups import Attribution

__all__ = ["AttributionHold"]

_ENC = msgspec.json.Encoder()
#: how long a resolved container's old key is still rewritten (records the consumers had formatted
#: with the old answer before they saw the new generation)
_REWRITE_S = 30.0


def _fragment(workload: Workload) -> bytes:
    return b'"workload":' + _ENC.encode(workload)


@dataclass
class _Held:
    container_id: str
    since: float
    items: list[JsonItem] = field(default_factory=list)


class AttributionHold:
    """Holds the JSON items of unknown Kubernetes containers (see the module doc)."""

    def __init__(
        self,
        attribution: Attribution,
        *,
        hold_s: float = 10.0,
        max_events: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.attribution = attribution
        self.hold_s = hold_s
        self.max_events = max_events
        self._clock = clock
        self._held: OrderedDict[bytes, _Held] = OrderedDict()
        self._count = 0
        # old key -> (old fragment, new fragment, new key, until)
        self._rewrite: dict[bytes, tuple[bytes, bytes, bytes, float]] = {}
        # keys given up on (held for hold_s without a pod): not held again, until the cache forgets
        self._given_up: OrderedDict[bytes, None] = OrderedDict()
        self.counters = {"held_total": 0, "attributed_late": 0, "unattributed": 0, "overflow": 0}

    @property
    def held(self) -> int:
        """Events waiting now."""
        return self._count

    def active(self) -> bool:
        """Whether :meth:`process` has anything to do (the common case is no)."""
        return bool(self._held or self._rewrite or self.attribution.pending)

    def process(self, items: list[JsonItem]) -> list[JsonItem]:
        """The items to send now, in order: held ones whose pod became known (or whose time is up),
        then this poll's items minus those now held."""
        out = self._release()
        pending = self.attribution.pending
        for item in items:
            key = item[1]
            rewrite = self._rewrite.get(key)
            if rewrite is not None:
                out.append(_rewritten(item, rewrite))
            elif key in self._held:
                self._hold(key, self._held[key].container_id, item)
            elif key in pending and key not in self._given_up:
                self._hold(key, pending[key], item)
            else:
                out.append(item)
        while self._count > self.max_events and self._held:
            key, held = self._held.popitem(last=False)
            self._count -= len(held.items)
            self.counters["overflow"] += len(held.items)
            self.counters["unattributed"] += len(held.items)
            self._give_up(key)
            out.extend(held.items)
        return out

    def _hold(self, key: bytes, container_id: str, item: JsonItem) -> None:
        held = self._held.get(key)
        if held is None:
            held = self._held[key] = _Held(container_id, self._clock())
        held.items.append(item)
        self._count += 1
        self.counters["held_total"] += 1

    def _release(self) -> list[JsonItem]:
        out: list[JsonItem] = []
        now = self._clock()
        for key in [k for k, v in self._rewrite.items() if v[3] < now]:
            del self._rewrite[key]
        for key, held in list(self._held.items()):
            known = self.attribution.resolve(held.container_id)
            if known is not None:
                workload, new_key = known
                old, _ = self.attribution.unknown(held.container_id)
                rewrite = (_fragment(old), _fragment(workload), new_key, now + _REWRITE_S)
                self._rewrite[key] = rewrite
                out.extend(_rewritten(item, rewrite) for item in held.items)
                self.counters["attributed_late"] += len(held.items)
                self.attribution.pending.pop(key, None)
                self.attribution.renamed(held.container_id)
            elif now - held.since >= self.hold_s:
                out.extend(held.items)
                self.counters["unattributed"] += len(held.items)
                self._give_up(key)
            else:
                continue
            self._count -= len(held.items)
            del self._held[key]
        return out

    def _give_up(self, key: bytes) -> None:
        self.attribution.pending.pop(key, None)
        self._given_up[key] = None
        if len(self._given_up) > 65536:
            self._given_up.popitem(last=False)

    def flush(self) -> list[JsonItem]:
        """Everything held, now (the sensor stops): attributed where the pod is known."""
        out = self._release()
        for held in self._held.values():
            out.extend(held.items)
            self.counters["unattributed"] += len(held.items)
        self._held.clear()
        self._count = 0
        return out


def _rewritten(item: JsonItem, rewrite: tuple[bytes, bytes, bytes, float]) -> JsonItem:
    old, new, key, _ = rewrite
    value = item[0]
    if old not in value:  # not the fragment the sensor wrote for the unknown container: leave it
        return item
    return value.replace(old, new, 1), key, item[2], item[3]

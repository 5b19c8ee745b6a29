"""Faust table recovery that seeks the stream partitions *before* it lets their records flow.

faust-streaming 0.15.3 ends a recovery (``Recovery.on_recovery_completed``, and ``_resume_streams`` for an app
without tables) in this order:

1. resume the stream partitions (raw, events, alerts, ...) in the consumer,
2. await the seek of every partition to its committed offset (a broker round trip),
3. ``flow_control.resume()`` — which *clears every agent's input queue* —, then start the fetcher.

When the fetcher is already running — it is started during recovery as soon as a changelog has something to
restore, i.e. on every restart of a worker whose tables are not empty, and on any later rebalance — records of
the resumed stream partitions reach the agents' queues during step 2. Step 3 then throws away whatever is
still queued: those records were read (the fetcher's read offset is past them) but never processed nor acked.
The agents ack the records after them, and the consumer commits over a one-record hole (it treats a gap of
one at the head of the acked offsets as a compacted-away offset), so a record is lost for good; the seek of
step 2 also rewinds the fetch position under the running fetcher, which then drops the re-read records below
its read offset and delivers the last one twice. Seen here as a restarted ``cadr worker`` that "stalls": one
event never reaches ClickHouse (faust-streaming issue #596 describes the same race).

:class:`SeekFirstRecovery` keeps the stream partitions paused until the seek is done and the queues are
cleared, so nothing read after the seek can be discarded. :class:`CadrTableManager` installs it (the Faust
``TableManager`` setting, see :func:`streams.app.build_app`).

A second hole on the same path: Faust hands its consumer thread the *live* set of active partitions for a fetch
that may wait up to a second, and aiokafka reads an empty partition set as "every partition". When the end of
the recovery pauses the changelogs while such a fetch is pending (no partition active for a moment), the fetch
returns — and moves the fetch position past — records of the still-paused stream partitions; Faust drops them
(not active), then sees the next record beyond a gap it takes for compacted offsets and commits over them: a
run of events lost after a restart under load. :class:`SnapshotFetchConsumer` fetches for a copy of the set
taken when the fetch starts (:class:`CadrFaustApp` creates it).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import faust
from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer

from streams.health import HealthRegistry
from streams.producer import CadrProducer, warm_producer

__all__ = ["CadrFaustApp", "CadrTableManager", "SeekFirstRecovery", "SnapshotFetchConsumer"]


class SeekFirstRecovery(Recovery):
    """:class:`~faust.tables.recovery.Recovery` with the stream partitions resumed last (see the module doc)."""

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        """Call when active table recovery is completed (faust-streaming 0.15.3, reordered)."""
        app = cast(Any, self.app)
        self.log.info("Restore complete!")
        await app.on_rebalance_complete.send()
        self._set_recovery_ended()
        callback_coros = [
            asyncio.ensure_future(
                table.on_recovery_completed(self.actives_for_table[table], self.standbys_for_table[table])
            )
            for table in self.tables.values()
        ]
        if callback_coros:
            await asyncio.wait(callback_coros)
        if app.consumer_generation_id != generation_id:
            self.log.warning(
                f"Recovery rebalancing again app id {app.consumer_generation_id} param {generation_id}"
            )
            return
        await self._seek_then_resume(generation_id)
        self.tables.on_actives_ready()
        if not app.assignor.assigned_standbys():
            self.tables.on_standbys_ready()
        app.on_rebalance_end()
        self.log.info("Worker ready")

    async def _resume_streams(self, generation_id: int = 0) -> None:
        """Resume the streams of an app without tables (faust-streaming 0.15.3, reordered)."""
        app = cast(Any, self.app)
        await app.on_rebalance_complete.send()
        if app.consumer_generation_id != generation_id:
            self.log.warning("Recovery rebalancing again")
            return
        await self._seek_then_resume(generation_id)
        self.tables.on_actives_ready()
        self.tables.on_standbys_ready()
        app.on_rebalance_end()
        self.log.info("Worker ready")

    async def _seek_then_resume(self, generation_id: int) -> None:
        app = cast(Any, self.app)
        # before any agent may run: the producer knows every topic a table or a stage writes to
        # (streams.producer explains the crash loop this prevents)
        topics = set(self.tables.changelog_topics) | set(getattr(app, "output_topics", ()))
        await warm_producer(app.producer, topics)
        consumer = app.consumer
        assignment = consumer.assignment()
        streams = {tp for tp in assignment if not self._is_changelog_tp(tp)}
        if assignment:
            # Paused stream partitions deliver nothing while the seek is awaited.
            self.log.info("Seek stream partitions to committed offsets.")
            await self._wait(consumer.perform_seek(), timeout=app.conf.broker_request_timeout)
        else:
            self.log.info("Resuming streams with empty assignment")
        self.completed.set()
        # Clears the agents' queues: holds nothing of the stream partitions yet, so nothing read is lost.
        self.log.info("Resuming flow...")
        app.flow_control.resume()
        consumer.resume_flow()
        # Only now may records of the stream partitions reach the agents, from the committed offsets.
        consumer.resume_partitions(streams)
        await app._fetcher.maybe_start()


class CadrTableManager(TableManager):
    """Faust's table manager with :class:`SeekFirstRecovery`."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = SeekFirstRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery


class SnapshotFetchConsumer(AIOKafkaConsumer):
    """Faust's aiokafka consumer fetching for a snapshot of the active partitions (see the module doc)."""

    async def _getmany(self, active_partitions: Any, timeout: float) -> Any:
        if active_partitions is not None:
            active_partitions = set(active_partitions)
            if not active_partitions:  # aiokafka would read "no partition" as "every partition"
                await asyncio.sleep(min(timeout, 1.0))
                return {}
        return await super()._getmany(active_partitions, timeout)


class CadrFaustApp(faust.App):
    """The Faust app of the worker: its consumer is a :class:`SnapshotFetchConsumer`, its producer a
    :class:`~streams.producer.CadrProducer` warmed with :attr:`output_topics` and the changelogs."""

    #: the cadr topics the stages write to (filled by ``streams.app.CadrApp.topic``)
    output_topics: set[str]
    #: where agent crashes are reported (``streams.app.build_app`` sets it)
    health: HealthRegistry | None = None

    async def _on_agent_error(self, agent: Any, exc: BaseException) -> None:
        if self.health is not None:
            self.health.crashed(agent.name, exc)
        await super()._on_agent_error(agent, exc)

    def _new_producer(self) -> Any:
        return CadrProducer(self.transport, loop=self.loop, beacon=self.beacon)

    def _new_consumer(self) -> Any:
        return SnapshotFetchConsumer(
            self.transport,
            callback=self.topics.on_message,
            loop=self.loop,
            on_partitions_revoked=self._on_partitions_revoked,
            on_partitions_assigned=self._on_partitions_assigned,
            beacon=self.beacon,
        )

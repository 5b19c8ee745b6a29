"""Normalization of Kubernetes audit events (native, EventList, GKE, AKS) into cadr k8s_api events."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from schemas.codec import decode_event, encode
from schemas.records import Workload
from sensors.audit.envelope import Envelope, detect_envelope, iter_audit_events, unwrap
from sensors.audit.errors import AuditFormatError
from sensors.audit.normalize import event_id_for, normalize, parse_time_ns
from sensors.audit.request import image_repository
from tests.sensors.audit.support import ELASTIC, FALCO


def _falco(name: str) -> dict[str, Any]:
    return orjson.loads((FALCO / name).read_bytes().splitlines()[0])


def _roundtrip(raw: dict[str, Any], **kw: Any) -> Any:
    event = normalize(raw, **kw)
    # what the webhook publishes decodes under the full schema validation
    assert decode_event(encode(event)) == event
    return event


# -- elastic samples: three envelopes, one meaning -----------------------------------------------


def _elastic_lines() -> list[tuple[str, int, dict[str, Any]]]:
    out = []
    for path in sorted(ELASTIC.glob("*.log")):
        for no, line in enumerate(path.read_bytes().splitlines(), 1):
            out.append((path.name, no, orjson.loads(line)))
    return out


def test_every_elastic_sample_normalizes() -> None:
    lines = _elastic_lines()
    assert len(lines) == 6
    envelopes = []
    for name, no, doc in lines:
        envelopes.append(detect_envelope(doc))
        (raw,) = unwrap(doc)
        event = _roundtrip(raw, cluster="c")
        assert event.audit is not None and event.audit.verb and event.audit.user, (name, no)
        assert event.audit.source_ips, (name, no)
        assert event.audit.decision == "allow", (name, no)
    assert envelopes.count(Envelope.NATIVE) == 3
    assert envelopes.count(Envelope.GKE) == 1
    assert envelopes.count(Envelope.AKS) == 2


def test_aks_object_and_string_wrappers_give_what_a_native_event_gives() -> None:
    by_kind = {}
    for _, _, doc in _elastic_lines():
        if detect_envelope(doc) == Envelope.AKS:
            (raw,) = unwrap(doc)
            by_kind[doc["category"]] = normalize(raw)
    admin, plain = by_kind["kube-audit-admin"], by_kind["kube-audit"]
    for ev in (admin, plain):
        assert ev.audit is not None
        assert (ev.audit.verb, ev.audit.user, ev.audit.resource, ev.audit.namespace) == (
            "update",
            "aksService",
            "leases",
            "kube-system",
        )
        assert ev.audit.groups == ["system:masters", "system:authenticated"]
        assert ev.audit.api_group == "coordination.k8s.io" and ev.audit.response_code == 200
    assert plain.audit is not None and plain.audit.source_ips == ["172.31.51.172"]
    assert plain.audit.name == "kubelet-serving-csr-approver"


def test_gke_cloud_audit_log_entry_is_translated() -> None:
    (doc,) = [d for _, _, d in _elastic_lines() if detect_envelope(d) == Envelope.GKE]
    (raw,) = unwrap(doc)
    ev = _roundtrip(raw)
    assert ev.audit is not None
    assert ev.audit.user == "system:gke-master-healthcheck"
    assert (
        ev.audit.verb == "get" and ev.audit.request_uri == "/readyz" and ev.audit.request["path"] == "/readyz"
    )
    assert ev.audit.source_ips == ["67.43.156.1"] and ev.audit.user_agent == "gke-master-healthcheck"
    assert ev.audit.response_code == 200 and ev.audit.decision == "allow"
    assert ev.audit.audit_id == "1234abcd"
    assert ev.time == parse_time_ns("2025-07-13T08:38:39.127266Z")


def test_gke_resource_names_become_object_refs() -> None:
    doc = {
        "protoPayload": {
            "methodName": "io.k8s.core.v1.pods.exec.create",
            "resourceName": "core/v1/namespaces/shop/pods/web-1/exec",
            "authenticationInfo": {"principalEmail": "alice@example.com"},
            "requestMetadata": {"callerIp": "203.0.113.9"},
            "status": {"code": 7},
        },
        "insertId": "xyz",
        "timestamp": "2025-01-01T00:00:00Z",
    }
    (raw,) = unwrap(doc)
    ev = normalize(raw)
    assert ev.audit is not None
    assert (ev.audit.resource, ev.audit.subresource, ev.audit.namespace, ev.audit.name) == (
        "pods",
        "exec",
        "shop",
        "web-1",
    )
    assert ev.audit.verb == "create" and ev.audit.response_code == 403
    assert ev.audit.request_uri == "/api/v1/namespaces/shop/pods/web-1/exec"


def test_native_sample_lines_two_and_three_are_one_event() -> None:
    lines = [d for _, _, d in _elastic_lines()][:3]
    ids = [normalize(unwrap(d)[0]).event_id for d in lines]
    assert ids[1] == ids[2]


# -- fields --------------------------------------------------------------------------------------


def test_exec_carries_command_container_and_target_pod() -> None:
    ev = _roundtrip(_falco("exec_pod.json"), cluster="mk", node="intake")
    assert ev.event_id == "k8s:ca1ed9f4-7bf4-4c85-81a8-1b11253d1ba6:ResponseStarted"
    assert ev.time == 1540561114_902914000  # 2018: old events are kept as they are
    assert ev.audit is not None
    assert ev.audit.request == {"command": ["bash"], "container": "nginx1", "tty": True, "stdin": True}
    assert ev.audit.groups == ["system:masters", "system:authenticated"]
    assert ev.audit.response_code == 101 and ev.audit.level == "Request"
    assert ev.workload == Workload(
        cluster="mk", namespace="default", pod="nginx-deployment-7998647bdf-phvq7", container="nginx1"
    )


def test_pod_creation_extracts_security_relevant_spec() -> None:
    ev = _roundtrip(_falco("create_nginx_pod_privileged_2nd_container.json"))
    assert ev.audit is not None
    req = ev.audit.request
    assert req["privileged"] is True and req["images"] == ["nginx", "mysql:latest"]
    assert req["image_repos"] == ["mysql", "nginx"]
    assert [c["privileged"] for c in req["containers"]] == [False, True]
    # the pod has no name in the request: the response names it
    assert ev.audit.name == ev.workload.pod and ev.workload.pod.startswith("nginx-deployment-")
    assert (ev.workload.workload_kind, ev.workload.workload_name) == ("Deployment", "nginx-deployment")
    mount = normalize(_falco("create_nginx_pod_sensitive_mount.json"))
    assert mount.audit is not None and mount.audit.request["host_paths"] == ["/etc"]
    hostnet = normalize(_falco("create_nginx_pod_hostnetwork.json"))
    assert hostnet.audit is not None and hostnet.audit.request["host_network"] is True


def test_host_paths_are_normalized_against_evasion() -> None:
    raw = _falco("create_nginx_pod_sensitive_mount.json")
    raw["requestObject"]["spec"]["volumes"] = [
        {"name": "a", "hostPath": {"path": "//etc/"}},
        {"name": "b", "hostPath": {"path": "/var/log/../../"}},
        {"name": "c", "emptyDir": {}},
    ]
    ev = normalize(raw)
    assert ev.audit is not None
    assert ev.audit.request["host_paths"] == ["/etc", "/"]
    assert ev.audit.request["volume_types"] == ["emptyDir", "hostPath"]


def test_templates_of_workloads_are_extracted_too() -> None:
    ev = normalize(_falco("create_deployment.json"))
    assert ev.audit is not None and ev.audit.request["template_of"] == "Deployment"
    assert ev.audit.request["images"] == ["nginx"]
    assert (ev.workload.workload_kind, ev.workload.workload_name) == ("Deployment", "nginx-deployment")


def test_roles_and_bindings() -> None:
    role = normalize(_falco("create_cluster_role_pod_exec.json"))
    assert role.audit is not None
    assert role.audit.request["rule_resources"] == ["pods/exec"] and role.audit.request["rule_verbs"] == [
        "get"
    ]
    patched = normalize(_falco("modify_cluster_role_node_problem_detector.json"))
    assert patched.audit is not None and "nodes/status" in patched.audit.request["rule_resources"]
    binding = normalize(_falco("attach_cluster_admin_role.json"))
    assert binding.audit is not None
    req = binding.audit.request
    assert req["role_ref_name"] == "cluster-admin" and req["subject_names"] == ["minikube"]
    assert req["subjects"] == [{"kind": "User", "name": "minikube", "namespace": ""}]


def test_configmap_credentials_are_flagged_but_never_copied() -> None:
    lines = (FALCO / "create_configmap_sensitive_values.json").read_bytes().splitlines()
    for line in lines:
        ev = normalize(orjson.loads(line))
        assert ev.audit is not None and ev.audit.request["credential_markers"]
        blob = encode(ev)
        assert b"MY-KEY" not in blob and b"MY-ID" not in blob
    clean = normalize(_falco("create_configmap_no_sensitive_values.json"))
    assert clean.audit is not None and clean.audit.request["credential_markers"] == []


def test_services_and_anonymous_users() -> None:
    svc = normalize(_falco("create_nginx_service_nodeport.json"))
    assert svc.audit is not None and svc.audit.request["service_type"] == "NodePort"
    assert svc.audit.request["node_ports"] == [30080]
    anon = normalize(_falco("anonymous_creates_namespace_foo.json"))
    assert anon.audit is not None and anon.audit.user == "system:anonymous" and anon.audit.decision == "allow"


def test_events_without_api_version_are_fine() -> None:
    raw = _falco("exec_pod.json")
    assert "apiVersion" not in raw
    assert normalize(raw).audit is not None


def test_impersonation_and_ephemeral_containers() -> None:
    raw = {
        "kind": "Event",
        "auditID": "i-1",
        "stage": "ResponseComplete",
        "verb": "patch",
        "user": {"username": "alice"},
        "impersonatedUser": {"username": "system:serviceaccount:kube-system:admin"},
        "objectRef": {
            "resource": "pods",
            "subresource": "ephemeralcontainers",
            "namespace": "prod",
            "name": "web-1",
        },
        "requestObject": {
            "kind": "Pod",
            "spec": {
                "ephemeralContainers": [
                    {"name": "dbg", "image": "busybox:1.36", "securityContext": {"privileged": True}}
                ]
            },
        },
        "responseStatus": {"code": 200},
        "stageTimestamp": "2026-01-01T00:00:00.5+02:00",
    }
    ev = _roundtrip(raw)
    assert ev.audit is not None and ev.audit.impersonated_user == "system:serviceaccount:kube-system:admin"
    assert ev.audit.request["ephemeral_containers"] == ["dbg"] and ev.audit.request["privileged"] is True
    assert ev.time == parse_time_ns("2025-12-31T22:00:00.5Z")


def test_root_containers_are_those_that_may_run_as_root() -> None:
    raw = {
        "kind": "Event",
        "auditID": "r-1",
        "verb": "create",
        "user": {"username": "alice"},
        "objectRef": {"resource": "pods", "namespace": "prod", "name": "web-1"},
        "requestObject": {
            "kind": "Pod",
            "spec": {
                "securityContext": {"runAsNonRoot": True},
                "containers": [
                    {"name": "inherits-non-root", "image": "a"},
                    {"name": "explicit-root", "image": "b", "securityContext": {"runAsUser": 0}},
                    {"name": "opts-out", "image": "c", "securityContext": {"runAsNonRoot": False}},
                    {"name": "user-1000", "image": "d", "securityContext": {"runAsUser": 1000}},
                ],
            },
        },
        "responseStatus": {"code": 201},
        "stageTimestamp": "2026-01-01T00:00:00Z",
    }
    ev = _roundtrip(raw)
    assert ev.audit is not None and ev.audit.request["root_containers"] == ["explicit-root", "opts-out"]


def test_the_pod_cache_fills_the_target_workload() -> None:
    class Pods:
        def by_pod(self, namespace: str, name: str, container: str = "") -> Workload | None:
            return Workload(
                namespace=namespace, pod=name, workload_kind="Deployment", workload_name="nginx-deployment",
                image="nginx:1.25", service_account="default", pod_ip="10.1.2.3", container=container,
                container_id="c0ffee" if container == "nginx1" else "",
            )  # fmt: skip

    ev = normalize(_falco("exec_pod.json"), cluster="mk", pods=Pods())
    assert ev.workload.workload_name == "nginx-deployment" and ev.workload.pod_ip == "10.1.2.3"
    assert ev.workload.container == "nginx1" and ev.workload.cluster == "mk"
    assert ev.workload.container_id == "c0ffee"


# -- validation ----------------------------------------------------------------------------------


_OK = {"auditID": "a", "verb": "get", "stageTimestamp": "2020-01-01T00:00:00Z"}


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"kind": 0}, "$.kind"),
        ({**_OK, "auditID": ""}, "$.auditID"),
        ({**_OK, "verb": None}, "$.verb"),
        ({"auditID": "a", "verb": "get"}, "$.stageTimestamp"),
        ({**_OK, "stageTimestamp": "2020-13-01T00:00:00Z"}, "$.stageTimestamp"),
        ({**_OK, "user": {"groups": "x"}}, "$.user.groups"),
        ({**_OK, "responseStatus": {"code": "ok"}}, "$.responseStatus.code"),
        ({**_OK, "objectRef": []}, "$.objectRef"),
        ([1, 2], "$"),
    ],
)
def test_invalid_events_are_refused_naming_the_field(raw: Any, field: str) -> None:
    with pytest.raises(AuditFormatError) as err:
        normalize(raw)
    assert str(err.value).startswith(field)


def test_fal_01_003_is_not_an_audit_event() -> None:
    items = list(iter_audit_events((FALCO / "fal_01_003.json").read_bytes()))
    assert len(items) == 1 and isinstance(items[0][1], AuditFormatError)
    assert "data not recognized as a k8s audit event" in str(items[0][1])


def test_oversized_strings_are_cut_to_the_schema_limits() -> None:
    raw = _falco("exec_pod.json")
    raw["userAgent"] = "u" * 10_000
    raw["requestURI"] = "/x?" + "a" * 20_000
    raw["sourceIPs"] = ["10.0.0.1"] * 5000
    ev = _roundtrip(raw)
    assert ev.audit is not None
    assert (
        len(ev.audit.user_agent) == 4096
        and len(ev.audit.request_uri) == 8192
        and len(ev.audit.source_ips) == 1024
    )


def test_time_parsing_and_event_ids() -> None:
    assert parse_time_ns("1970-01-01T00:00:01Z") == 1_000_000_000
    assert parse_time_ns("2025-07-13T08:38:41.005864307Z") % 1_000_000_000 == 5_864_307
    assert parse_time_ns("2020-01-01T01:00:00+01:00") == parse_time_ns("2020-01-01T00:00:00Z")
    long_id = "a" * 200
    eid = event_id_for(long_id, "ResponseComplete")
    assert len(eid) <= 128 and eid == event_id_for(long_id, "ResponseComplete")
    assert eid != event_id_for(long_id, "ResponseStarted")


def test_image_repository() -> None:
    assert image_repository("nginx") == "nginx"
    assert image_repository("nginx:1.25") == "nginx"
    assert image_repository("registry:5000/team/app:v1@sha256:abc") == "registry:5000/team/app"
    assert image_repository("registry:5000/team/app") == "registry:5000/team/app"


def test_a_json_lines_file_yields_every_line() -> None:
    items = list(iter_audit_events((FALCO / "create_configmap_sensitive_values.json").read_bytes()))
    assert [no for no, _ in items] == [1, 2, 3, 4, 5, 6]
    bad = list(iter_audit_events(b'{"kind":"Event"}\nnot json\n'))
    assert isinstance(bad[1][1], AuditFormatError) and str(bad[1][1]).startswith("line 2")


def test_the_webhook_fast_path_gives_exactly_what_normalize_gives() -> None:
    from sensors.audit.fastpath import decode_event_list, normalize_typed

    raws = []
    for path in sorted(FALCO.glob("*.json")):
        for line in path.read_bytes().splitlines():
            doc = orjson.loads(line) if line.strip() else None
            if isinstance(doc, dict) and doc.get("kind") == "Event":
                raws.append(doc)
    for _, _, doc in _elastic_lines():
        raws.extend(unwrap(doc))
    assert len(raws) == 51 + 6
    body = orjson.dumps({"kind": "EventList", "items": raws})
    typed = decode_event_list(body)
    assert typed is not None
    for raw, item in zip(raws, typed, strict=True):
        assert normalize_typed(item, cluster="c", node="n") == normalize(raw, cluster="c", node="n")

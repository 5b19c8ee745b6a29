"""The parts of an audit event's ``requestObject`` that detection rules read, as flat typed values.

Rules address these as ``audit.request.<key>``. Each resource family has its own small extractor:

pods (and pod templates of Deployment/DaemonSet/StatefulSet/ReplicaSet/Job/CronJob)
    ``containers`` (list of {name, image, repository, kind, privileged, allow_privilege_escalation,
    run_as_user, run_as_non_root, capabilities_add, host_ports}), ``images``, ``image_repos``,
    ``privileged``, ``host_network``, ``host_pid``, ``host_ipc``, ``host_paths``, ``volume_types``,
    ``capabilities_add``, ``host_ports``, ``run_as_user``, ``service_account``, ``node_name``,
    ``automount_sa_token``, ``ephemeral_containers``, ``root_containers`` (names of containers that may run
    as root: ``runAsUser: 0``, or neither a user nor ``runAsNonRoot: true``), ``labels``, ``template_of``
roles / clusterroles
    ``rules`` (list of {api_groups, resources, verbs, resource_names, non_resource_urls}), ``rule_verbs``,
    ``rule_resources``, ``rule_api_groups``
rolebindings / clusterrolebindings
    ``role_ref_kind``, ``role_ref_name``, ``subjects`` (list of {kind, name, namespace}),
    ``subject_names``, ``subject_kinds``
configmaps
    ``data_keys``, ``credential_markers`` (which known credential markers occur in keys or values;
    the values themselves are never copied, so no secret travels through Kafka)
secrets
    ``secret_type``, ``data_keys``
services
    ``service_type``, ``ports``, ``node_ports``, ``external_ips``
exec / attach / portforward (from the request URI)
    ``command``, ``container``, ``tty``, ``stdin``, ``ports``
serviceaccounts/token
    ``audiences``, ``expiration_seconds``
any
    ``object_kind`` (the requestObject's kind), ``patch`` (the body is a JSON patch list)
"""

from __future__ import annotations

import posixpath
from typing import Any

__all__ = ["CREDENTIAL_MARKERS", "extract_request", "image_repository", "owner_workload"]

_MAX_ITEMS = 256
_MAX_STR = 4096

#: substrings that mark credentials in a ConfigMap (matched case-insensitively on keys and values);
#: the rule decides which of them matter (streams/rules/macros: configmap_credential_markers)
CREDENTIAL_MARKERS = (
    "aws_access_key_id",
    "aws-access-key-id",
    "aws_s3_access_key_id",
    "aws-s3-access-key-id",
    "aws_secret_access_key",
    "aws-secret-access-key",
    "password",
    "passphrase",
    "private key",
    "api_key",
    "apikey",
    "client_secret",
)

_TEMPLATE_RESOURCES = {
    "deployments": "Deployment",
    "daemonsets": "DaemonSet",
    "statefulsets": "StatefulSet",
    "replicasets": "ReplicaSet",
    "replicationcontrollers": "ReplicationController",
    "jobs": "Job",
}


def _s(value: Any) -> str:
    if type(value) is str and len(value) <= _MAX_STR:  # the common case, first
        return value
    if isinstance(value, str):
        return value if len(value) <= _MAX_STR else value[:_MAX_STR]
    return "" if value is None else str(value)[:_MAX_STR]


def _strs(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    return [_s(v) for v in value[:_MAX_ITEMS]]


def _d(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _l(value: Any) -> list[Any]:
    return value[:_MAX_ITEMS] if isinstance(value, list) else []


def image_repository(image: str) -> str:
    """``docker.io/library/nginx:1.25@sha256:..`` -> ``docker.io/library/nginx`` (tag and digest dropped)."""
    repo = image.split("@", 1)[0]
    slash = repo.rfind("/")
    colon = repo.rfind(":")
    if colon > slash:
        repo = repo[:colon]
    return repo


def owner_workload(pod: Any) -> tuple[str, str]:
    """The controller of a pod object as (kind, name), lifting ReplicaSet -> Deployment when the pod
    carries Deployment's ``pod-template-hash`` label (the cache in sensors.k8s resolves the real chain)."""
    meta = _d(_d(pod).get("metadata"))
    owners = [o for o in _l(meta.get("ownerReferences")) if isinstance(o, dict)]
    owner = next((o for o in owners if o.get("controller")), owners[0] if owners else None)
    if owner is None:
        return "", ""
    kind, name = _s(owner.get("kind")), _s(owner.get("name"))
    labels = _d(meta.get("labels"))
    if kind == "ReplicaSet" and "pod-template-hash" in labels and "-" in name:
        return "Deployment", name.rsplit("-", 1)[0]
    return kind, name


def extract_request(
    resource: str,
    subresource: str,
    request_obj: Any,
    response_obj: Any,
    query: dict[str, list[str]],
) -> dict[str, Any]:
    """The normalized request block for one audit event (empty when nothing matters)."""
    out: dict[str, Any] = {}
    if isinstance(request_obj, list):
        out["patch"] = True  # a JSON patch: the resulting object is not in the event
        request_obj = None
    obj = _d(request_obj)
    if obj.get("kind"):
        out["object_kind"] = _s(obj["kind"])
    if subresource in ("exec", "attach", "portforward"):
        _exec(query, out)
        return out
    if resource == "pods":
        if subresource == "ephemeralcontainers":
            # v1.16-1.21 sent an EphemeralContainers object; later versions send the whole Pod
            if "ephemeralContainers" in obj:
                obj = {"spec": {"ephemeralContainers": obj["ephemeralContainers"]}}
            _pod_spec(obj, out)
        elif obj and not subresource:
            _pod_spec(obj, out)
            meta = _d(obj.get("metadata"))
            labels = {_s(k): _s(v) for k, v in list(_d(meta.get("labels")).items())[:_MAX_ITEMS]}
            if labels:
                out["labels"] = labels
        return out
    if resource in _TEMPLATE_RESOURCES or resource == "cronjobs":
        spec = _d(obj.get("spec"))
        if resource == "cronjobs":
            spec = _d(_d(spec.get("jobTemplate")).get("spec"))
        template = _d(spec.get("template"))
        if template:
            _pod_spec(template, out)
            out["template_of"] = _TEMPLATE_RESOURCES.get(resource, "CronJob")
        return out
    if resource in ("roles", "clusterroles"):
        _role(obj, out)
    elif resource in ("rolebindings", "clusterrolebindings"):
        _binding(obj, out)
    elif resource == "configmaps":
        _configmap(obj, out)
    elif resource == "secrets":
        if obj:
            out["secret_type"] = _s(obj.get("type"))
            out["data_keys"] = sorted(
                _s(k) for k in [*_d(obj.get("data")), *_d(obj.get("stringData"))][:_MAX_ITEMS]
            )
    elif resource == "services":
        _service(obj, out)
    elif resource == "serviceaccounts" and subresource == "token":
        spec = _d(obj.get("spec"))
        out["audiences"] = _strs(spec.get("audiences"))
        if isinstance(spec.get("expirationSeconds"), int):
            out["expiration_seconds"] = spec["expirationSeconds"]
    return out


def _exec(query: dict[str, list[str]], out: dict[str, Any]) -> None:
    out["command"] = [_s(c) for c in query.get("command", [])[:_MAX_ITEMS]]
    containers = query.get("container", [])
    out["container"] = _s(containers[0]) if containers else ""
    out["tty"] = query.get("tty", ["false"])[0] == "true"
    out["stdin"] = query.get("stdin", ["false"])[0] == "true"
    ports = [p for p in query.get("ports", []) if p.isdigit()]
    if ports:
        out["ports"] = [int(p) for p in ports[:_MAX_ITEMS]]


def _container(c: dict[str, Any], kind: str, pod_ctx: dict[str, Any]) -> dict[str, Any]:
    sc = _d(c.get("securityContext"))
    caps = _d(sc.get("capabilities"))
    image = _s(c.get("image"))
    run_as_user = sc.get("runAsUser", pod_ctx.get("runAsUser"))
    run_as_non_root = sc.get("runAsNonRoot", pod_ctx.get("runAsNonRoot"))
    out: dict[str, Any] = {
        "name": _s(c.get("name")),
        "image": image,
        "repository": image_repository(image),
        "kind": kind,
        "privileged": sc.get("privileged") is True,
        "capabilities_add": _strs(caps.get("add")),
        "host_ports": [
            p["hostPort"]
            for p in _l(c.get("ports"))
            if isinstance(p, dict) and isinstance(p.get("hostPort"), int)
        ],
    }
    if isinstance(sc.get("allowPrivilegeEscalation"), bool):
        out["allow_privilege_escalation"] = sc["allowPrivilegeEscalation"]
    if isinstance(run_as_user, int):
        out["run_as_user"] = run_as_user
    if isinstance(run_as_non_root, bool):
        out["run_as_non_root"] = run_as_non_root
    if isinstance(sc.get("readOnlyRootFilesystem"), bool):
        out["read_only_root_fs"] = sc["readOnlyRootFilesystem"]
    return out


def _pod_spec(pod: dict[str, Any], out: dict[str, Any]) -> None:
    spec = _d(pod.get("spec"))
    pod_ctx = _d(spec.get("securityContext"))
    containers: list[dict[str, Any]] = []
    for key, kind in (
        ("containers", "container"),
        ("initContainers", "init"),
        ("ephemeralContainers", "ephemeral"),
    ):
        containers.extend(_container(c, kind, pod_ctx) for c in _l(spec.get(key)) if isinstance(c, dict))
    volumes = [v for v in _l(spec.get("volumes")) if isinstance(v, dict)]
    out["containers"] = containers
    out["images"] = [c["image"] for c in containers]
    out["image_repos"] = sorted({c["repository"] for c in containers})
    out["privileged"] = any(c["privileged"] for c in containers)
    out["capabilities_add"] = sorted({cap for c in containers for cap in c["capabilities_add"]})
    out["host_ports"] = sorted({p for c in containers for p in c["host_ports"]})
    out["host_network"] = spec.get("hostNetwork") is True
    out["host_pid"] = spec.get("hostPID") is True
    out["host_ipc"] = spec.get("hostIPC") is True
    # normpath: "/etc/", "//etc" and "/var/../etc" are all /etc to a rule
    out["host_paths"] = [
        _norm_path(_s(_d(v.get("hostPath")).get("path"))) for v in volumes if "hostPath" in v
    ]
    out["volume_types"] = sorted({k for v in volumes for k in v if k != "name"})
    out["ephemeral_containers"] = [c["name"] for c in containers if c["kind"] == "ephemeral"]
    # a container may run as root unless it asks for a non-zero user or requires a non-root one (the image's
    # USER then decides, which the API server never sees)
    out["root_containers"] = [
        c["name"]
        for c in containers
        if c.get("run_as_user") == 0 or ("run_as_user" not in c and c.get("run_as_non_root") is not True)
    ]
    if isinstance(pod_ctx.get("runAsUser"), int):
        out["run_as_user"] = pod_ctx["runAsUser"]
    sa = spec.get("serviceAccountName") or spec.get("serviceAccount")
    if sa:
        out["service_account"] = _s(sa)
    if spec.get("nodeName"):
        out["node_name"] = _s(spec["nodeName"])
    if isinstance(spec.get("automountServiceAccountToken"), bool):
        out["automount_sa_token"] = spec["automountServiceAccountToken"]


def _norm_path(path: str) -> str:
    if not path:
        return path
    norm = posixpath.normpath(path)
    return "/" + norm.lstrip("/") if norm.startswith("/") else norm


def _role(obj: dict[str, Any], out: dict[str, Any]) -> None:
    rules = []
    for r in _l(obj.get("rules")):
        if not isinstance(r, dict):
            continue
        rules.append(
            {
                "api_groups": _strs(r.get("apiGroups")),
                "resources": _strs(r.get("resources")),
                "verbs": _strs(r.get("verbs")),
                "resource_names": _strs(r.get("resourceNames")),
                "non_resource_urls": _strs(r.get("nonResourceURLs")),
            }
        )
    if not rules and "rules" not in obj:
        return
    out["rules"] = rules
    out["rule_verbs"] = sorted({v for r in rules for v in r["verbs"]})
    out["rule_resources"] = sorted({v for r in rules for v in r["resources"]})
    out["rule_api_groups"] = sorted({v for r in rules for v in r["api_groups"]})


def _binding(obj: dict[str, Any], out: dict[str, Any]) -> None:
    ref = _d(obj.get("roleRef"))
    if ref:
        out["role_ref_kind"] = _s(ref.get("kind"))
        out["role_ref_name"] = _s(ref.get("name"))
    subjects = [
        {"kind": _s(s.get("kind")), "name": _s(s.get("name")), "namespace": _s(s.get("namespace"))}
        for s in _l(obj.get("subjects"))
        if isinstance(s, dict)
    ]
    if subjects or "subjects" in obj:
        out["subjects"] = subjects
        out["subject_names"] = [s["name"] for s in subjects]
        out["subject_kinds"] = sorted({s["kind"] for s in subjects})


def _configmap(obj: dict[str, Any], out: dict[str, Any]) -> None:
    data = {**_d(obj.get("data")), **_d(obj.get("binaryData"))}
    if not data and "data" not in obj:
        return
    keys = list(data)[:_MAX_ITEMS]
    out["data_keys"] = sorted(_s(k) for k in keys)
    found: set[str] = set()
    for key, value in data.items():
        text = f"{key}\n{value}".lower() if isinstance(value, str) else str(key).lower()
        found.update(m for m in CREDENTIAL_MARKERS if m in text)
    out["credential_markers"] = sorted(found)


def _service(obj: dict[str, Any], out: dict[str, Any]) -> None:
    spec = _d(obj.get("spec"))
    if not spec:
        return
    out["service_type"] = _s(spec.get("type") or "ClusterIP")
    ports = []
    for p in _l(spec.get("ports")):
        if not isinstance(p, dict):
            continue
        port = {
            "port": p.get("port") if isinstance(p.get("port"), int) else 0,
            "protocol": _s(p.get("protocol")),
        }
        if isinstance(p.get("nodePort"), int):
            port["node_port"] = p["nodePort"]
        ports.append(port)
    out["ports"] = ports
    out["node_ports"] = [p["node_port"] for p in ports if "node_port" in p]
    out["external_ips"] = _strs(spec.get("externalIPs"))

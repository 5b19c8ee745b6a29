"""deploy/audit: the policy keeps what every k8s_audit rule reads, at the level it needs, and never logs
secret values; the webhook kubeconfig and the generated one have the shape the API server reads.

No API server runs here, so the policy is evaluated by a small matcher written from the audit policy
reference (first matching rule wins; ``resources`` match group + resource or ``resource/subresource``,
``*`` wildcards; ``nonResourceURLs`` with a trailing ``*`` match a prefix).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from sensors.audit.credentials import ensure_local_credentials, webhook_kubeconfig

ROOT = Path(__file__).resolve().parents[3]
POLICY = yaml.safe_load((ROOT / "deploy" / "audit" / "policy.yaml").read_text())
LEVELS = ["None", "Metadata", "Request", "RequestResponse"]


@dataclass
class Req:
    verb: str
    group: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    user: str = "alice"
    groups: tuple[str, ...] = ("system:authenticated",)
    path: str = ""


def _matches_resource(rule_res: dict, req: Req) -> bool:
    if rule_res.get("group", "") not in (req.group, "*"):
        return False
    full = f"{req.resource}/{req.subresource}" if req.subresource else req.resource
    for r in rule_res.get("resources") or ["*"]:
        if (
            r in ("*", full)
            or (r.endswith("/*") and full.startswith(r[:-1]))
            or (r.startswith("*/") and full.endswith(r[1:]))
        ):
            return True
    return False


def level_for(req: Req) -> str:
    for rule in POLICY["rules"]:
        if "users" in rule and req.user not in rule["users"]:
            continue
        if "userGroups" in rule and not set(rule["userGroups"]) & set(req.groups):
            continue
        if "verbs" in rule and req.verb not in rule["verbs"]:
            continue
        if "namespaces" in rule and req.namespace not in rule["namespaces"]:
            continue
        if "nonResourceURLs" in rule:
            if not req.path:
                continue
            if not any(
                req.path == u or (u.endswith("*") and req.path.startswith(u[:-1]))
                for u in rule["nonResourceURLs"]
            ):
                continue
        elif req.path and "resources" in rule:
            continue
        if "resources" in rule and not any(_matches_resource(r, req) for r in rule["resources"]):
            continue
        return str(rule["level"])
    return "None"


# (what a rule needs to see, the least level that shows it)
NEEDED = [
    ("CADR-K8S-0001 exec", Req("create", resource="pods", subresource="exec", namespace="shop"), "Metadata"),
    ("CADR-K8S-0001 attach", Req("create", resource="pods", subresource="attach", namespace="shop"), "Metadata"),
    ("CADR-K8S-0002 port-forward", Req("create", resource="pods", subresource="portforward"), "Metadata"),
    ("CADR-K8S-0003..0008 pod spec", Req("create", resource="pods", namespace="shop",
                                         user="system:serviceaccount:kube-system:replicaset-controller"), "RequestResponse"),
    ("pod spec changes", Req("patch", resource="pods", namespace="shop"), "Request"),
    ("privileged DaemonSet template", Req("create", group="apps", resource="daemonsets"), "Request"),
    ("CADR-K8S-0009 service account", Req("create", resource="serviceaccounts", namespace="kube-system"), "Request"),
    ("CADR-K8S-0010 NodePort", Req("create", resource="services", namespace="shop"), "Request"),
    ("CADR-K8S-0011 configmap", Req("update", resource="configmaps", namespace="shop"), "Request"),
    ("CADR-K8S-0012 secret read", Req("get", resource="secrets", namespace="shop"), "Metadata"),
    ("CADR-K8S-0013 secrets listed by a SA", Req("list", resource="secrets", user="system:serviceaccount:shop:web",
                                                 groups=("system:serviceaccounts", "system:serviceaccounts:shop")), "Metadata"),
    ("CADR-K8S-0014 binding", Req("create", group="rbac.authorization.k8s.io", resource="clusterrolebindings"), "Request"),
    ("CADR-K8S-0015..0017 role", Req("create", group="rbac.authorization.k8s.io", resource="clusterroles"), "Request"),
    ("CADR-K8S-0018 system role patched", Req("patch", group="rbac.authorization.k8s.io", resource="clusterroles"), "Request"),
    ("CADR-K8S-0019 anonymous", Req("list", resource="secrets", user="system:anonymous",
                                    groups=("system:unauthenticated",)), "Metadata"),
    ("CADR-K8S-0019 anonymous non-resource", Req("get", user="system:anonymous", path="/api/v1"), "Metadata"),
    ("CADR-K8S-0020 ephemeral container", Req("patch", resource="pods", subresource="ephemeralcontainers"), "Request"),
    ("CADR-K8S-0021 namespace deleted", Req("delete", resource="namespaces"), "Metadata"),
    ("CADR-K8S-0022 token minted", Req("create", resource="serviceaccounts", subresource="token"), "Request"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "req", "least"), NEEDED, ids=[n for n, _, _ in NEEDED])
def test_the_policy_keeps_what_each_rule_reads(what: str, req: Req, least: str) -> None:
    assert LEVELS.index(level_for(req)) >= LEVELS.index(least), what


@pytest.mark.parametrize(
    "req",
    [
        Req("create", resource="secrets", namespace="shop"),
        Req("update", resource="secrets", namespace="shop"),
        Req("get", resource="secrets", namespace="shop"),
        Req("create", group="authentication.k8s.io", resource="tokenreviews"),
    ],
)
def test_secret_values_and_tokens_are_never_logged(req: Req) -> None:
    assert level_for(req) == "Metadata"


def test_token_requests_log_the_request_but_never_the_minted_token() -> None:
    assert level_for(Req("create", resource="serviceaccounts", subresource="token")) == "Request"


@pytest.mark.parametrize(
    "req",
    [
        Req("update", group="coordination.k8s.io", resource="leases", namespace="kube-system",
            user="system:kube-controller-manager"),
        Req("create", resource="events", namespace="shop"),
        Req("watch", resource="endpoints", user="system:kube-proxy", groups=("system:authenticated",)),
        Req("get", user="system:anonymous", path="/healthz"),
        Req("patch", resource="nodes", subresource="status", user="system:node:worker-1", groups=("system:nodes",)),
    ],
)  # fmt: skip
def test_control_plane_chatter_is_dropped(req: Req) -> None:
    assert level_for(req) == "None"


def test_the_policy_document_shape() -> None:
    assert POLICY["apiVersion"] == "audit.k8s.io/v1" and POLICY["kind"] == "Policy"
    assert POLICY["omitStages"] == ["RequestReceived"]
    assert all(r["level"] in LEVELS for r in POLICY["rules"])
    assert POLICY["rules"][-1] == {"level": "Metadata"}  # catch-all last


def test_webhook_kubeconfig_shapes(tmp_path: Path) -> None:
    shipped = yaml.safe_load((ROOT / "deploy" / "audit" / "webhook-kubeconfig.yaml").read_text())
    creds = ensure_local_credentials(tmp_path / "tls", server_url="https://127.0.0.1:18443/audit")
    generated = yaml.safe_load(creds.kubeconfig.read_text())
    for doc in (shipped, generated):
        assert doc["kind"] == "Config" and doc["current-context"] == doc["contexts"][0]["name"]
        cluster = doc["clusters"][0]["cluster"]
        assert cluster["server"].startswith("https://") and cluster["certificate-authority"]
        user = doc["users"][0]["user"]
        assert user["client-certificate"] and user["client-key"]
    assert generated["users"][0]["user"]["token"] == creds.token_file.read_text().strip()
    assert oct(creds.client_key.stat().st_mode & 0o777) == "0o600"
    # generated once, reused after
    again = ensure_local_credentials(tmp_path / "tls")
    assert again.ca_cert.read_bytes() == creds.ca_cert.read_bytes()
    assert "token: abc" in webhook_kubeconfig("https://x/audit", ca_file="ca", token="abc")

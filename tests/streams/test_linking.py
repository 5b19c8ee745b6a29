"""Stories from events in the shapes the real sensors publish (issue 19 item 3).

Every event here is made by the sensors' own code (tests/shapes.py): kernel records decoded by the eBPF
sensor's decoder and attributed through its pod cache, audit events normalized by the audit intake from
kube-apiserver's wire format. They flow through enrich → detect → correlate as wire bytes.
"""

from __future__ import annotations

from schemas.records import Actor
from tests.shapes import Node, Stages


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


# -- actors as Kubernetes names them ---------------------------------------------------------------


def test_service_account_actor_is_the_kubernetes_user_name_everywhere() -> None:
    node = Node()
    shop(node)
    pod = node.pod(
        "shop",
        "payments-7d9f-abc12",
        owner=("ReplicaSet", "payments-7d9f"),
        service_account="payments",
        ip="10.244.1.17",
    )
    stages = Stages()
    stages.feed([node.api(pod.user, "list", "secrets", at=10, namespace="shop", source_ips=[pod.ip])])
    (alert,) = [a for a in stages.alerts if a.rule_id == "CADR-K8S-0028"]
    full = "system:serviceaccount:shop:payments"
    assert alert.actors == [Actor(kind="service_account", name=full)]
    inc = stages.story_of("CADR-K8S-0028")
    assert inc.actors == [Actor(kind="service_account", name=full)]
    assert full in inc.title and inc.summary.startswith(full)
    assert "shop:payments " not in inc.summary.replace(full, "")

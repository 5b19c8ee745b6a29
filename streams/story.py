"""How a story reads: timeline lines, titles and the summary paragraph.

Pure text helpers for :mod:`streams.correlate`, kept apart so the wording can be tuned
without touching the correlation logic.
"""

from __future__ import annotations

import posixpath

from schemas.records import Actor, Alert, Event, EventKind, Workload

__all__ = ["describe", "join_phrases", "lead_actor", "summary", "title", "workload_label"]


def workload_label(w: Workload) -> str:
    if w.is_host:
        return f"host {w.cluster}".strip()
    if not w.pod and not w.workload_name:
        return f"namespace {w.namespace}"
    name = w.pod or w.workload_name
    return f"{w.namespace}/{name}" if w.namespace else name


def _proc(e: Event) -> str:
    p = e.process
    if p is None:
        return "a process"
    return posixpath.basename(p.exe) if p.exe else (p.comm or f"pid {p.pid}")


def describe(e: Event) -> str:
    """One timeline line for an event."""
    where = workload_label(e.workload)
    k = e.kind
    if k is EventKind.PROCESS_EXEC and e.process is not None:
        p = e.process
        cmd = " ".join(p.args)[:300] or p.exe
        parent = posixpath.basename(p.parent_exe) if p.parent_exe else "?"
        tty = " with a terminal" if p.tty else ""
        return f"{where}: {parent} started {p.exe or p.comm}{tty}: {cmd}"
    if k is EventKind.FILE_OPEN and e.file is not None:
        how = "wrote" if e.file.write else "read"
        return f"{where}: {_proc(e)} {how} {e.file.path}"
    if k is EventKind.FILE_LINK and e.file is not None:
        return f"{where}: {_proc(e)} linked {e.file.path} -> {e.file.target}"
    if k in (EventKind.NET_CONNECT, EventKind.NET_ACCEPT) and e.network is not None:
        n = e.network
        peer = f" ({n.peer_workload})" if n.peer_workload else ""
        verb = "connected to" if k is EventKind.NET_CONNECT else "accepted a connection from"
        return f"{where}: {_proc(e)} {verb} {n.dst_ip}:{n.dst_port}{peer}"
    if k is EventKind.DNS_QUERY and e.dns is not None:
        return f"{where}: {_proc(e)} looked up {e.dns.query} ({e.dns.qtype})"
    if k is EventKind.PRIVILEGE_CHANGE and e.privilege is not None:
        pr = e.privilege
        detail = f" {pr.detail}" if pr.detail else ""
        return f"{where}: {_proc(e)} called {pr.op}{detail}"
    if k is EventKind.K8S_API and e.audit is not None:
        a = e.audit
        target = "/".join(x for x in (a.resource, a.subresource) if x)
        if a.name:
            obj = f" {a.namespace}/{a.name}" if a.namespace else f" {a.name}"
        else:
            obj = f" in namespace {a.namespace}" if a.namespace else " cluster-wide"
        return f"{a.user} {a.verb} {target}{obj} → {a.response_code or '?'}"
    return f"{where}: {k.value}"


def join_phrases(phrases: list[str]) -> str:
    if not phrases:
        return ""
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def lead_actor(actors: list[Actor]) -> str:
    """The actor a story is told about: the first human, else the first service account."""
    return _actor_label(actors)


def _actor_label(actors: list[Actor]) -> str:
    # names are Kubernetes user names: a service account reads system:serviceaccount:<ns>:<name>
    humans = [a.name for a in actors if a.kind == "user"]
    sas = [a.name for a in actors if a.kind == "service_account"]
    if humans:
        return humans[0]
    if sas:
        return sas[0]
    return ""


def title(alerts: list[Alert], actors: list[Actor], workloads: list[Workload]) -> str:
    names: list[str] = []
    for a in alerts:
        if a.rule_name not in names:
            names.append(a.rule_name)
    lead = _actor_label(actors) or (workload_label(workloads[0]) if workloads else "cluster")
    more = f" (+{len(names) - 4} more)" if len(names) > 4 else ""
    return f"{lead}: {' → '.join(names[:4])}{more}"


def summary(
    alerts: list[Alert],
    actors: list[Actor],
    workloads: list[Workload],
    mitre: list[str],
    severity: str,
    *,
    total: int = 0,
    leads: frozenset[str] = frozenset(),
) -> str:
    """A paragraph a person can read aloud. ``total``: the alerts the story holds in all, when it
    lists fewer (a busy story folds older ones). ``leads``: ids of alerts whose phrase sets the scene
    and comes first, whatever its severity (a release's notice: "since X replaced Y, ...")."""
    phrases: list[str] = []
    scene: list[str] = []
    # low-severity context (e.g. "user outside the allowed list") stays in the alert list but
    # not in the paragraph once the story has something worse to say
    top = max((a.severity.rank for a in alerts), default=0)
    told = [a for a in alerts if a.severity.rank > 1 or top <= 1 or a.alert_id in leads]
    for a in sorted(told, key=lambda x: x.time):
        phrase = a.story or a.rule_name[:1].lower() + a.rule_name[1:]
        if a.alert_id in leads:
            if phrase not in scene:
                scene.append(phrase)
            continue
        if a.count > 1:
            phrase += f" ({a.count} times)"
        if phrase not in phrases:
            phrases.append(phrase)
    who = _actor_label(actors)
    where = ", ".join(workload_label(w) for w in workloads[:4])
    if len(workloads) > 4:
        where += f" and {len(workloads) - 4} more"
    if scene:
        first = f"In {where}, {'; '.join(scene)}."
        if phrases:
            first += f" {who} {join_phrases(phrases)}." if who else f" It also {join_phrases(phrases)}."
    else:
        first = f"{who} {join_phrases(phrases)}." if who else f"In {where}, {join_phrases(phrases)}."
    others = [a.name for a in actors if a.name != who]
    tail = [
        f"The story spans {len(workloads)} workload{'s' if len(workloads) != 1 else ''} ({where})"
        f" and {max(total, len(alerts))} alert{'s' if max(total, len(alerts)) != 1 else ''}",
    ]
    if others:
        tail.append(f"also involving {', '.join(others)}")
    sentence2 = ", ".join(tail) + "."
    techniques = f" MITRE ATT&CK: {', '.join(mitre)}." if mitre else ""
    return f"{first} {sentence2}{techniques} Severity: {severity}."

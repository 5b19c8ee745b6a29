"""Render an incident for a terminal: header, summary, timeline and the story tree.

Every line is passed through :func:`schemas.text.escape_controls`: a title, an actor, a command line or a path
in a story comes from the wire, and no control character of it reaches the terminal raw.
"""

from __future__ import annotations

import datetime as dt
import textwrap

from schemas.records import Incident, TimelineEntry
from schemas.text import escape_controls

__all__ = ["render_incident"]

_SEV_MARK = {"info": "·", "low": "▫", "medium": "▪", "high": "▲", "critical": "█"}
_EDGE_LABEL = {
    "parent_child": "",
    "exec_session": "kubectl exec session",
    "connection": "",
    "file_access": "",
    "dns": "",
    "privilege": "",
    "token_api": "token used for API call",
    "lateral": "lateral movement",
    "privileged_pod": "inside the created pod",
}


def _ts(ns: int, with_date: bool = False) -> str:
    t = dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC)
    return t.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z" if with_date else t.strftime("%H:%M:%S.%f")[:-3]


def _entry_line(t: TimelineEntry, rule_names: dict[str, str]) -> str:
    flag = "⚑ " if t.alert_ids else "  "
    names = sorted({rule_names[a] for a in t.alert_ids if a in rule_names})
    suffix = f"   [{', '.join(names)}]" if names else ""
    return f"{flag}{t.text}{suffix}"


def render_incident(inc: Incident, width: int = 110) -> str:
    """A readable multi-line story."""
    rule_names = {a.alert_id: a.rule_name for a in inc.alerts}
    lines = []
    mark = _SEV_MARK.get(inc.severity.value, "?")
    lines.append(f"{mark} [{inc.severity.value.upper()}] {inc.title}")
    lines.append(
        f"  {inc.incident_id} · revision {inc.revision} · {inc.status.value} · {_ts(inc.first_seen, True)} → {_ts(inc.last_seen, True)}"
    )
    actors = ", ".join(f"{a.name} ({a.kind.replace('_', ' ')})" for a in inc.actors) or "unknown"
    wls = ", ".join(
        f"{w.namespace}/{w.pod or w.workload_name}" if w.namespace else (w.pod or "host")
        for w in inc.workloads
    )
    lines.append(f"  actors: {actors}")
    lines.append(f"  workloads: {wls}")
    if inc.mitre:
        lines.append(f"  MITRE ATT&CK: {', '.join(inc.mitre)}")
    if inc.threads:
        lines.append(f"  threads: {', '.join(inc.threads)}")
    lines.append("")
    lines.extend(textwrap.wrap(inc.summary, width=width - 2, initial_indent="  ", subsequent_indent="  "))
    lines.append("")
    lines.append("  Timeline")
    for t in inc.timeline:
        lines.append(f"  {_ts(t.time)}  {_entry_line(t, rule_names)}")
    if inc.edges:
        lines.append("")
        lines.append("  Story graph")
        lines.extend(_tree(inc, rule_names))
    alerts = sorted(inc.alerts, key=lambda a: a.time)
    lines.append("")
    lines.append(f"  Alerts ({len(alerts)})")
    for a in alerts:
        count = f" ×{a.count}" if a.count > 1 else ""
        lines.append(f"  {_ts(a.time)}  {a.severity.value:<8} {a.rule_id:<15} {a.rule_name}{count}")
    return "\n".join(escape_controls(line) for line in lines)


def _tree(inc: Incident, rule_names: dict[str, str]) -> list[str]:
    by_node = {t.node_id: t for t in inc.timeline}
    children: dict[str, list[tuple[str, str]]] = {}
    has_parent: set[str] = set()
    for e in inc.edges:
        if e.src in by_node and e.dst in by_node:
            children.setdefault(e.src, []).append((e.dst, e.kind))
            has_parent.add(e.dst)
    for kids in children.values():
        kids.sort(key=lambda k: by_node[k[0]].time)
    roots = [t.node_id for t in inc.timeline if t.node_id not in has_parent and t.node_id in children]
    out: list[str] = []
    seen: set[str] = set()

    def walk(node: str, prefix: str, edge: str, last: bool, top: bool) -> None:
        entry = by_node[node]
        label = _EDGE_LABEL.get(edge, edge)
        via = f"({label}) " if label else ""
        branch = "" if top else ("└─ " if last else "├─ ")
        out.append(f"  {prefix}{branch}{via}{_entry_line(entry, rule_names).strip()}")
        if node in seen:
            return
        seen.add(node)
        kids = children.get(node, [])
        for i, (kid, kind) in enumerate(kids):
            ext = "" if top else ("   " if last else "│  ")
            walk(kid, prefix + ext, kind, i == len(kids) - 1, False)

    for root in roots:
        walk(root, "", "", True, True)
    return out

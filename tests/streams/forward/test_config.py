"""Parsing the ``[forward]`` table into typed destination configs (pure)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from cadr.config import load_settings
from schemas.records import Severity
from streams.forward.config import ForwardConfig
from streams.forward.elasticsearch import ElasticOptions
from streams.forward.errors import ForwardConfigError
from streams.forward.parse import parse_forward_config
from streams.forward.splunk import SplunkOptions
from streams.forward.syslog import SyslogOptions
from streams.forward.webhook import WebhookOptions

DOC = Path(__file__).resolve().parents[3] / "docs" / "forward.md"


def _one(table: dict[str, object]) -> ForwardConfig:
    return parse_forward_config({"destinations": [table]})


def test_full_destination_table() -> None:
    cfg = parse_forward_config(
        tomllib.loads(
            """
            group_prefix = "fw."
            metrics_port = 9464
            [[destinations]]
            name = "splunk-prod"
            type = "splunk_hec"
            url = "https://splunk.example:8088/"
            token = "t"
            index = "security"
            format = "ocsf"
            min_severity = "medium"
            batch_size = 100
            concurrency = 4
            extra_fields = { environment = "prod", team = 7 }
            headers = { "X-Tenant" = "blue" }
            [destinations.filter]
            namespaces = ["prod-*"]
            exclude_namespaces = "kube-system"
            [destinations.tls]
            ca_file = "/etc/ca.pem"
            cert_file = "/etc/client.pem"
            key_file = "/etc/client-key.pem"
            [destinations.retry]
            initial_backoff_s = 0.1
            max_backoff_s = 5
            max_attempts = 0
            """
        ),
        topic_prefix="t1.",
    )
    (d,) = cfg.destinations
    assert cfg.group_prefix == "fw." and cfg.metrics_port == 9464
    assert d.name == "splunk-prod" and d.type == "splunk_hec"
    assert isinstance(d.options, SplunkOptions)
    assert d.options.url == "https://splunk.example:8088"  # trailing slash dropped
    assert d.options.index == "security"
    assert d.format == "ocsf" and d.min_severity is Severity.MEDIUM
    assert (d.batch_size, d.concurrency) == (100, 4)
    assert d.extra_fields == {"environment": "prod", "team": 7}
    assert d.headers == {"X-Tenant": "blue"}
    assert d.filter.namespaces == ("prod-*",) and d.filter.exclude_namespaces == ("kube-system",)
    assert d.tls is not None and d.tls.cert_file == "/etc/client.pem"
    assert d.retry.initial_backoff_s == 0.1 and d.retry.max_backoff_s == 5.0
    # one consumer group and one dead-letter topic per destination
    assert d.group_id == "fw.splunk-prod"
    assert d.dead_letter_topic == "t1.forward.dlq.splunk-prod"
    assert cfg.destination("splunk-prod") is d


def test_defaults_per_type() -> None:
    es = _one({"name": "es", "type": "elasticsearch", "url": "http://127.0.0.1:9200"}).destinations[0]
    assert isinstance(es.options, ElasticOptions)
    assert es.options.index == "cadr-incidents" and es.records == "incidents" and es.format == "cadr"
    sl = _one(
        {"name": "sl", "type": "syslog", "host": "127.0.0.1", "port": 6514, "transport": "tls"}
    ).destinations[0]
    assert isinstance(sl.options, SyslogOptions)
    assert sl.tls is not None and sl.tls.verify  # TLS transport implies a (verifying) TLS config
    wh = _one({"name": "wh", "type": "webhook", "url": "https://h/x", "body": "object"}).destinations[0]
    assert isinstance(wh.options, WebhookOptions) and wh.batch_size == 1


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"type": "webhook", "url": "http://x"}, "missing required key 'name'"),
        ({"name": "a b", "type": "webhook", "url": "http://x"}, "destinations[0].name"),
        ({"name": "a", "type": "splunk", "url": "http://x"}, "must be one of"),
        ({"name": "a", "type": "webhook", "url": "ftp://x"}, "destinations[0].url: expected an http(s)"),
        ({"name": "a", "type": "webhook", "url": "http://x", "colour": "red"}, "unknown key(s) colour"),
        ({"name": "a", "type": "webhook", "url": "http://x", "batch_size": 0}, "batch_size: must be within"),
        ({"name": "a", "type": "webhook", "url": "http://x", "min_severity": "urgent"}, "min_severity"),
        ({"name": "a", "type": "splunk_hec", "url": "http://x"}, "needs token or token_file"),
        (
            {"name": "a", "type": "splunk_hec", "url": "http://x", "token": "t", "ack": True},
            "needs a channel",
        ),
        ({"name": "a", "type": "syslog", "host": "h"}, "missing required key 'port'"),
        ({"name": "a", "type": "syslog", "host": "h", "port": 1, "app_name": "c a"}, "app_name"),
        ({"name": "a", "type": "kafka", "bootstrap": "b"}, "missing required key 'topic'"),
        (
            {"name": "a", "type": "webhook", "url": "http://x", "filter": {"status": ["gone"]}},
            "unknown status",
        ),
        (
            {"name": "a", "type": "webhook", "url": "http://x", "tls": {"key_file": "k"}},
            "key_file needs cert_file",
        ),
        ({"name": "a", "type": "webhook", "url": "http://x", "retry": {"jitter": 2}}, "jitter"),
        (
            {"name": "a", "type": "webhook", "url": "http://x", "body": "object", "batch_size": 5},
            "one record",
        ),
        (
            {"name": "a", "type": "elasticsearch", "url": "http://x", "index": "Cadr"},
            "not a valid index name",
        ),
    ],
)
def test_invalid_tables_name_the_key(table: dict[str, object], message: str) -> None:
    with pytest.raises(ForwardConfigError) as err:
        _one(table)
    assert message in str(err.value)


def test_duplicate_names_and_unknown_destination() -> None:
    d = {"name": "a", "type": "webhook", "url": "http://x"}
    with pytest.raises(ForwardConfigError, match="duplicate name 'a'"):
        parse_forward_config({"destinations": [d, d]})
    with pytest.raises(ForwardConfigError, match="no forward destination named 'b'"):
        parse_forward_config({"destinations": [d]}).destination("b")
    with pytest.raises(ForwardConfigError, match="forward: unknown key"):
        parse_forward_config({"destination": [d]})


def test_documented_example_parses(tmp_path: Path) -> None:
    """The example TOML in docs/forward.md is a valid configuration."""
    text = DOC.read_text()
    start = text.index("```toml\n") + len("```toml\n")
    example = text[start : text.index("```", start)]
    path = tmp_path / "cadr.toml"
    path.write_text(example)
    settings = load_settings(path, environ={})
    cfg = parse_forward_config(settings.forward, topic_prefix=settings.kafka.topic_prefix)
    assert {d.type for d in cfg.destinations} == {"splunk_hec", "elasticsearch", "syslog", "webhook", "kafka"}

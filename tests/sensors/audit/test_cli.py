"""``cadr scan`` (offline rules over audit logs and capture files) and ``cadr sensor audit`` end to end."""

from __future__ import annotations

import gzip
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import msgspec
import orjson
import pytest

from cadr.cli import main
from cadr.kafka_local import find_free_port
from schemas.codec import encode
from schemas.records import Alert
from sensors.audit.normalize import normalize
from tests.sensors.audit.support import ELASTIC, FALCO

CADR = [sys.executable, "-m", "cadr.cli"]
REPO = Path(__file__).resolve().parents[3]


def test_scan_prints_the_alerts_of_audit_logs(capsys: pytest.CaptureFixture[str]) -> None:
    files = [
        str(FALCO / "exec_pod.json"),
        str(FALCO / "create_nginx_pod_privileged.json"),
        str(FALCO / "fal_01_003.json"),
    ]
    assert main(["scan", *files]) == 0
    out, err = capsys.readouterr()
    assert "CADR-K8S-0001  Exec or attach into pod: minikube-user ran exec into default/" in out
    assert "CADR-K8S-0003" in out and "high" in out
    assert f"{FALCO / 'fal_01_003.json'}:1: $.kind" in err
    assert "2 events from 3 file(s), 1 unreadable" in err


def test_scan_json_gives_alert_records(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    assert main(["scan", "--json", str(FALCO / "attach_cluster_admin_role.json")]) == 0
    lines = capsysbinary.readouterr().out.splitlines()
    alerts = [msgspec.json.decode(line, type=Alert) for line in lines]
    assert {a.rule_id for a in alerts} == {"CADR-K8S-0014", "CADR-K8S-0026"}
    admin = next(a for a in alerts if a.rule_id == "CADR-K8S-0014")
    assert admin.mitre == ["T1098"] and admin.event is not None and admin.event.audit is not None
    assert [(x.kind, x.name) for x in admin.actors] == [("user", "minikube-user")]


def test_scan_reads_every_envelope_and_fails_on_severity(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", str(ELASTIC / "test-audit.log"), str(ELASTIC / "test-kube-audit.log")]) == 0
    assert "6 events from 2 file(s), 0 unreadable" in capsys.readouterr().err
    assert main(["scan", "--fail-on", "high", str(FALCO / "create_nginx_pod_privileged.json")]) == 1
    assert main(["scan", "--fail-on", "critical", str(FALCO / "create_nginx_pod_privileged.json")]) == 0


def test_scan_reads_capture_files_of_cadr_events(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = [normalize(orjson.loads((FALCO / n).read_bytes())) for n in ("exec_pod.json", "attach_pod.json")]
    capture = tmp_path / "capture.jsonl.gz"
    capture.write_bytes(gzip.compress(b"".join(encode(e) + b"\n" for e in events)))
    assert main(["scan", str(capture)]) == 0
    out, err = capsys.readouterr()
    assert out.count("CADR-K8S-0001") == 2 and "2 events from 1 file(s), 0 unreadable" in err


def test_scan_with_an_extra_rules_dir_and_a_disabled_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rule = tmp_path / "rules" / "CADR-SITE-0001-minikube-exec"
    rule.mkdir(parents=True)
    (rule / "rule.yaml").write_text(
        "id: CADR-SITE-0001\nname: Exec by minikube-user\ndescription: site rule\nseverity: low\nmitre: [T1609]\n"
        "source: k8s_audit\nkinds: [k8s_api]\ncondition: k8s_api and audit.user = minikube-user "
        "and audit.subresource = exec\noutput: 'exec by {audit.user}'\ndedup: [audit.user]\n"
    )
    args = [
        "scan",
        "--rules-dir",
        str(tmp_path / "rules"),
        "--disable",
        "CADR-K8S-0001",
        str(FALCO / "exec_pod.json"),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "CADR-SITE-0001" in out and "CADR-K8S-0001" not in out


def _wait_for(path: Path, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size:
            return True
        time.sleep(0.05)
    return False


def test_sensor_audit_generates_credentials_and_serves_the_webhook(tmp_path: Path) -> None:
    port = find_free_port()
    out = tmp_path / "events.jsonl"
    proc = subprocess.Popen(
        [*CADR, "--data-dir", str(tmp_path / "data"), "sensor", "audit", "--output", str(out), "--listen",
         f"127.0.0.1:{port}", "--duration", "120"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        tls = tmp_path / "data" / "audit-tls"
        assert _wait_for(tls / "webhook-kubeconfig.yaml")
        ctx = ssl.create_default_context(cafile=str(tls / "ca.crt"))
        ctx.load_cert_chain(str(tls / "apiserver-client.crt"), str(tls / "apiserver-client.key"))
        req = urllib.request.Request(
            f"https://127.0.0.1:{port}/audit",
            data=(FALCO / "exec_pod.json").read_bytes(),
            headers={"Authorization": "Bearer " + (tls / "token").read_text().strip()},
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
                    assert resp.status == 200
                    break
            except (ConnectionError, urllib.error.URLError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert _wait_for(out)
        event = orjson.loads(out.read_bytes().splitlines()[0])
        assert event["kind"] == "k8s_api" and event["audit"]["subresource"] == "exec"
        # no client certificate: the handshake is refused
        bare = ssl.create_default_context(cafile=str(tls / "ca.crt"))
        with pytest.raises((ssl.SSLError, ConnectionError, urllib.error.URLError)):
            urllib.request.urlopen(req, context=bare, timeout=10)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""


def test_sensor_audit_tails_a_log_file(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes((FALCO / "create_configmap_sensitive_values.json").read_bytes())
    out = tmp_path / "events.jsonl"
    proc = subprocess.Popen(
        [*CADR, "--data-dir", str(tmp_path / "data"), "sensor", "audit", "--no-webhook", "--file", str(log),
         "--output", str(out), "--duration", "120"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not out.exists() or len(out.read_bytes().splitlines()) < 6):
            time.sleep(0.05)
        assert len(out.read_bytes().splitlines()) == 6
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0
    assert list((tmp_path / "data" / "audit-tail").iterdir())  # the position survives the process


def test_sensor_audit_without_kafka_or_output_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env_before = os.environ.pop("CADR_KAFKA_BOOTSTRAP", None)
    try:
        rc = main(
            [
                "--data-dir",
                str(tmp_path),
                "sensor",
                "audit",
                "--no-webhook",
                "--file",
                str(tmp_path / "x.log"),
            ]
        )
    finally:
        if env_before is not None:
            os.environ["CADR_KAFKA_BOOTSTRAP"] = env_before
    assert rc == 1 and "no Kafka to publish to" in capsys.readouterr().err

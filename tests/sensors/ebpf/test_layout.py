"""The Python record layout (sensors/ebpf/layout.py) matches the compiled BPF object's BTF.

Builds the object if needed (clang, bpftool and kernel BTF; no root), dumps its BTF with
bpftool and compares every struct's size and every member's offset.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from sensors.ebpf import layout
from sensors.ebpf.loader import build_object

_STRUCT = re.compile(r"^\[\d+\] STRUCT '(\w+)' size=(\d+) vlen=(\d+)$")
_MEMBER = re.compile(r"^\s+'(\w+)' type_id=\d+ bits_offset=(\d+)")


@pytest.fixture(scope="module")
def btf_structs() -> dict[str, tuple[int, dict[str, int]]]:
    if not shutil.which("bpftool") or not Path("/sys/kernel/btf/vmlinux").exists():
        pytest.skip("needs bpftool and kernel BTF to build the object")
    obj = build_object()
    dump = subprocess.run(
        ["bpftool", "btf", "dump", "file", str(obj), "format", "raw"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    out: dict[str, tuple[int, dict[str, int]]] = {}
    current = None
    for line in dump.splitlines():
        m = _STRUCT.match(line)
        if m:
            current = m.group(1)
            out[current] = (int(m.group(2)), {})
            continue
        m = _MEMBER.match(line)
        if m and current is not None:
            out[current][1][m.group(1)] = int(m.group(2)) // 8
        elif not line.startswith(("\t", " ")):
            current = None
    return out


@pytest.mark.parametrize("name", sorted(layout.RECORDS))
def test_struct_matches_btf(btf_structs, name: str) -> None:  # type: ignore[no-untyped-def]
    st, fields = layout.RECORDS[name]
    assert name in btf_structs, f"{name} is not in the object's BTF"
    size, members = btf_structs[name]
    assert st.size == size, f"{name}: Python {st.size} bytes, BPF {size}"
    offset = 0
    for member, fmt in fields:
        assert members.get(member) == offset, (
            f"{name}.{member}: Python offset {offset}, BPF {members.get(member)}"
        )
        offset += struct.calcsize("<" + fmt)
    assert set(members) == {m for m, _ in fields}

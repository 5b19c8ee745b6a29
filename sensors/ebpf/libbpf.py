"""The few libbpf calls the loader needs, through ctypes (libbpf.so.1, Debian's libbpf1).

Only object open/load, map sizing and initial values, program attach and map element
access are used; the ring buffer is read by :mod:`sensors.ebpf.ringbuf` straight from its
mmap, without libbpf's per-record callback (a ctypes callback per record would cost more
than decoding the record).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from collections.abc import Iterator
from typing import Any

from sensors.ebpf.errors import SensorError

__all__ = ["BpfObject", "Libbpf", "libbpf"]


class Libbpf:
    """Typed handles to libbpf functions (set as attributes from the signature table)."""

    def __getattr__(self, name: str) -> Any:  # the ctypes functions, for type checkers
        raise AttributeError(name)

    def __init__(self, path: str | None = None) -> None:
        name = path or ctypes.util.find_library("bpf") or "libbpf.so.1"
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError as exc:
            raise SensorError(
                f"cannot load libbpf ({name}): {exc}; install the libbpf1 package (apt: libbpf1)"
            ) from exc
        self.lib = lib
        vp, cp, i, u32, sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_size_t
        sig = {
            "bpf_object__open_file": (vp, [cp, vp]),
            "bpf_object__load": (i, [vp]),
            "bpf_object__close": (None, [vp]),
            "bpf_object__find_map_by_name": (vp, [vp, cp]),
            "bpf_object__next_program": (vp, [vp, vp]),
            "bpf_program__name": (cp, [vp]),
            "bpf_program__attach": (vp, [vp]),
            "bpf_program__fd": (i, [vp]),
            "bpf_link__destroy": (i, [vp]),
            "bpf_map__fd": (i, [vp]),
            "bpf_map__set_max_entries": (i, [vp, u32]),
            "bpf_map__max_entries": (u32, [vp]),
            "bpf_map__value_size": (u32, [vp]),
            "bpf_map__set_initial_value": (i, [vp, vp, sz]),
            "bpf_map_update_elem": (i, [i, vp, vp, ctypes.c_uint64]),
            "bpf_map_lookup_elem": (i, [i, vp, vp]),
            "libbpf_num_possible_cpus": (i, []),
            "libbpf_get_error": (ctypes.c_long, [vp]),
        }
        for fname, (restype, argtypes) in sig.items():
            fn = getattr(lib, fname)
            fn.restype = restype
            fn.argtypes = argtypes
            setattr(self, fname, fn)


_LIB: Libbpf | None = None


def libbpf() -> Libbpf:
    """The process-wide libbpf handle (loaded on first use)."""
    global _LIB
    if _LIB is None:
        _LIB = Libbpf()
    return _LIB


def _err(ret: int) -> str:
    code = -ret if ret < 0 else ctypes.get_errno()
    return f"{errno.errorcode.get(code, code)} ({os.strerror(code)})"


class BpfObject:
    """An opened BPF object file: size its maps, set its config, load, attach."""

    def __init__(self, path: str) -> None:
        self.lib = libbpf()
        self.path = path
        ctypes.set_errno(0)
        obj = self.lib.bpf_object__open_file(path.encode(), None)
        if not obj:
            raise SensorError(f"libbpf could not open {path}: {_err(0)}")
        self.obj: int | None = obj
        self.links: list[int] = []
        self.loaded = False

    def map(self, name: str) -> int:
        m = self.lib.bpf_object__find_map_by_name(self.obj, name.encode())
        if not m:
            raise SensorError(f"{self.path} has no map {name!r}")
        return int(m)

    def map_fd(self, name: str) -> int:
        fd = int(self.lib.bpf_map__fd(self.map(name)))
        if fd < 0:
            raise SensorError(f"map {name!r} has no fd (not loaded?)")
        return fd

    def set_max_entries(self, name: str, n: int) -> None:
        ret = self.lib.bpf_map__set_max_entries(self.map(name), n)
        if ret:
            raise SensorError(f"cannot size map {name!r} to {n}: {_err(ret)}")

    def set_initial_value(self, name: str, data: bytes) -> None:
        m = self.map(name)
        size = int(self.lib.bpf_map__value_size(m))
        if size != len(data):
            raise SensorError(
                f"map {name!r} holds {size} bytes but the loader has {len(data)}: "
                "the Python layout and the BPF object disagree (rebuild with scripts/build-bpf.sh)"
            )
        buf = ctypes.create_string_buffer(data, len(data))
        ret = self.lib.bpf_map__set_initial_value(m, buf, len(data))
        if ret:
            raise SensorError(f"cannot set the initial value of {name!r}: {_err(ret)}")

    def load(self) -> None:
        ret = self.lib.bpf_object__load(self.obj)
        if ret:
            raise SensorError(
                f"the kernel refused the BPF programs of {self.path}: {_err(ret)} "
                "(the verifier log, if any, is on stderr above)"
            )
        self.loaded = True

    def programs(self) -> Iterator[tuple[str, int]]:
        prog = self.lib.bpf_object__next_program(self.obj, None)
        while prog:
            yield self.lib.bpf_program__name(prog).decode(), int(prog)
            prog = self.lib.bpf_object__next_program(self.obj, prog)

    def attach_all(self) -> list[str]:
        names = []
        for name, prog in self.programs():
            ctypes.set_errno(0)
            link = self.lib.bpf_program__attach(prog)
            if not link:
                raise SensorError(f"cannot attach BPF program {name}: {_err(0)}")
            self.links.append(int(link))
            names.append(name)
        return names

    def update(self, name: str, key: bytes, value: bytes) -> None:
        k = ctypes.create_string_buffer(key, len(key))
        v = ctypes.create_string_buffer(value, len(value))
        ret = self.lib.bpf_map_update_elem(self.map_fd(name), k, v, 0)
        if ret:
            raise SensorError(f"cannot update map {name!r}: {_err(ret)}")

    def lookup(self, name: str, key: bytes, value_size: int) -> bytes | None:
        k = ctypes.create_string_buffer(key, len(key))
        v = ctypes.create_string_buffer(value_size)
        ret = self.lib.bpf_map_lookup_elem(self.map_fd(name), k, v)
        if ret:
            return None
        return v.raw

    def close(self) -> None:
        for link in self.links:
            self.lib.bpf_link__destroy(link)
        self.links.clear()
        if self.obj:
            self.lib.bpf_object__close(self.obj)
            self.obj = None

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""Reading one TOML table of the ``[forward]`` section: typed keys, each error naming where it is.

:class:`Table` pops the keys it is asked for and reports the leftovers as unknown keys, so a typo
never passes silently. The generic parts of the section use it (:mod:`streams.forward.parse`) and so
does each destination type's options (``SplunkOptions.parse`` and the others).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from streams.forward.errors import ForwardConfigError

__all__ = ["Table", "http_url", "read_secret"]


def read_secret(value: str, path: str, where: str) -> str:
    """A secret given inline or as a file (the file wins; trailing whitespace stripped)."""
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ForwardConfigError(f"{where}: cannot read {path}: {exc}") from exc
    return value


class Table:
    """Pops typed keys from one TOML table and reports leftovers as unknown keys."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, Mapping):
            raise ForwardConfigError(f"{where}: expected a table, got {type(data).__name__}")
        self.data = dict(data)
        self.where = where

    def error(self, key: str, msg: str) -> ForwardConfigError:
        """An error naming ``key`` of this table."""
        return ForwardConfigError(f"{self.where}.{key}: {msg}")

    def text(self, key: str, default: str = "", *, choices: tuple[str, ...] = ()) -> str:
        value = self.data.pop(key, default)
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {value!r}")
        if choices and value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    def required(self, key: str) -> str:
        if key not in self.data:
            raise ForwardConfigError(f"{self.where}: missing required key {key!r}")
        value = self.text(key)
        if not value:
            raise self.error(key, "must not be empty")
        return value

    def integer(self, key: str, default: int, *, lo: int | None = None, hi: int | None = None) -> int:
        value = self.data.pop(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer, got {value!r}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise self.error(key, f"must be within [{lo}, {hi}]; got {value}")
        return value

    def number(self, key: str, default: float, *, lo: float = 0.0) -> float:
        value = self.data.pop(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"expected a number, got {value!r}")
        if value < lo:
            raise self.error(key, f"must be >= {lo}; got {value}")
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self.data.pop(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {value!r}")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.data.pop(key, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(key, f"expected a list of strings, got {value!r}")
        return tuple(value)

    def table(self, key: str) -> Table | None:
        if key not in self.data:
            return None
        return Table(self.data.pop(key), f"{self.where}.{key}")

    def mapping(self, key: str, *, str_values: bool = False) -> dict[str, Any]:
        value = self.data.pop(key, {})
        if not isinstance(value, Mapping):
            raise self.error(key, "expected a table")
        if str_values and not all(isinstance(v, str) for v in value.values()):
            raise self.error(key, "values must be strings")
        return dict(value)

    def done(self) -> None:
        if self.data:
            names = ", ".join(sorted(self.data))
            raise ForwardConfigError(f"{self.where}: unknown key(s) {names}")


def http_url(t: Table, key: str = "url") -> str:
    """The ``http(s)://`` URL under ``key`` (required), without a trailing slash."""
    url = t.required(key)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise t.error(key, f"expected an http(s):// URL, got {url!r}")
    return url.rstrip("/")

"""Loading cadr's settings: one TOML file plus ``CADR_*`` environment variables.

The CLI builds one :class:`~schemas.settings.Settings` here and hands it to every component;
constructors never read the environment themselves. Precedence: defaults < TOML file < environment
< flags. Environment names are ``CADR_<SECTION>_<FIELD>`` (``CADR_KAFKA_BOOTSTRAP``,
``CADR_STORE_DSN``); top-level fields are ``CADR_<FIELD>`` (``CADR_DATA_DIR``). The settings types
themselves live in :mod:`schemas.settings`.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_type_hints

from schemas.settings import ConfigError, Settings

__all__ = ["load_settings"]


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    target = annotation if isinstance(annotation, type) else None
    text = str(annotation)
    try:
        if target is bool or text == "bool":
            if isinstance(value, bool):
                return value
            lowered = str(value).strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(f"not a boolean: {value!r}")
        if target is int or text == "int":
            return int(value)
        if target is float or text == "float":
            return float(value)
        if text.startswith("list"):
            if isinstance(value, list):
                return [str(v) for v in value]
            return [v.strip() for v in str(value).split(",") if v.strip()]
        if text.startswith("dict"):
            if not isinstance(value, dict):
                raise ValueError("expected a table")
            return value
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _apply(obj: Any, values: Mapping[str, Any], where: str) -> None:
    hints = get_type_hints(type(obj))
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(f"{where}: unknown setting {key!r}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}.{key}: expected a table")
            _apply(current, value, f"{where}.{key}")
        else:
            setattr(obj, key, _coerce(value, hints[key], f"{where}.{key}"))


def _env_overrides(settings: Settings, environ: Mapping[str, str]) -> None:
    hints = get_type_hints(Settings)
    for name in hints:
        current = getattr(settings, name)
        if dataclasses.is_dataclass(current):
            for sub in get_type_hints(type(current)):
                env = f"CADR_{name}_{sub}".upper()
                if env in environ:
                    _apply(current, {sub: environ[env]}, env)
        elif name != "forward":
            env = f"CADR_{name}".upper()
            if env in environ:
                _apply(settings, {name: environ[env]}, env)


def load_settings(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from defaults, an optional TOML file and the environment.

    ``path=None`` uses ``$CADR_CONFIG`` when set, else ``./cadr.toml`` when it exists.
    """
    env = os.environ if environ is None else environ
    settings = Settings()
    if path is None:
        path = env.get("CADR_CONFIG") or ("cadr.toml" if Path("cadr.toml").exists() else None)
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {p} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: {exc}") from exc
        _apply(settings, data, str(p))
    _env_overrides(settings, env)
    return settings

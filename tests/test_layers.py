"""The layers of the house (docs/architecture.md "Layers"), checked on the source of every module.

``schemas/`` is the ground floor: it imports nothing of the project but itself. ``sensors/`` and ``streams/``
never import ``cadr`` (the command-line package above them): what they need of it (settings, topic names,
GC tuning) is handed in. The check reads each module's syntax tree, so an import inside a function, under
``TYPE_CHECKING`` or spelt ``importlib.import_module("cadr....")`` counts as much as one at the top.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: the top-level packages and folders of this repository
PROJECT = frozenset({"bench", "cadr", "schemas", "sensors", "streams", "tests"})

#: what the modules under each package may import of the project (anything outside PROJECT is not the
#: project's); the longest package that names a module decides
ALLOWED: dict[str, frozenset[str]] = {
    "schemas": frozenset({"schemas"}),
    "sensors": frozenset({"schemas", "sensors", "streams"}),
    "streams": frozenset({"schemas", "sensors", "streams"}),
    # the rule engine is what the detector is built on: it reaches no stage (the rule-case runner, which
    # runs rules through the detector, is streams.rule_cases)
    "streams.rules": frozenset({"schemas", "streams.rules"}),
}

_DYNAMIC = {("importlib", "import_module"), ("", "import_module"), ("", "__import__")}


def imported_modules(source: str, module: str, *, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """``(line, dotted name)`` of every module ``source`` imports: ``import x``, ``from x import y``
    (relative ones resolved against ``module``), and ``importlib.import_module("x")`` / ``__import__("x")``
    with a literal name."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: max(0, len(parts) - node.level + 1)])
            if node.module:
                yield node.lineno, f"{base}.{node.module}" if base else node.module
            else:  # ``from . import x``: the names are modules of the package
                for alias in node.names:
                    yield node.lineno, f"{base}.{alias.name}" if base else alias.name
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                called = (func.value.id, func.attr)
            elif isinstance(func, ast.Name):
                called = ("", func.id)
            else:
                continue
            first = node.args[0]
            if called in _DYNAMIC and isinstance(first, ast.Constant) and isinstance(first.value, str):
                yield node.lineno, first.value


def violations(source: str, module: str, *, is_package: bool = False) -> list[str]:
    """The imports of ``module`` (whose source is ``source``) that its layer forbids."""
    layer = max((p for p in ALLOWED if _within(module, p)), key=len)
    allowed = ALLOWED[layer]
    found = []
    for line, name in imported_modules(source, module, is_package=is_package):
        if name.split(".")[0] in PROJECT and not any(_within(name, a) for a in allowed):
            found.append(f"{module}:{line} imports {name}")
    return found


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _modules(layer: str) -> list[tuple[str, Path]]:
    out = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out.append((".".join(parts), path))
    return out


@pytest.mark.parametrize("layer", ["schemas", "sensors", "streams"])
def test_no_module_imports_above_its_layer(layer: str) -> None:
    modules = _modules(layer)
    assert len(modules) > 3, f"no modules found under {ROOT / layer}"
    found = []
    for module, path in modules:
        found += violations(path.read_text(), module, is_package=path.name == "__init__.py")
    assert not found, "imports that reach above their layer:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("streams.detect", "from cadr.config import load_settings"),
        ("sensors.audit.service", "import cadr.runtime"),
        ("sensors.ebpf.service", "def f():\n    from cadr import topics\n"),
        ("streams.app", "import importlib\nimportlib.import_module('cadr.topics')"),
        ("streams.app", "from importlib import import_module\nimport_module('cadr')"),
        ("streams.app", "__import__('cadr.runtime')"),
        (
            "streams.app",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cadr.config import x\n",
        ),
        ("schemas.codec", "from streams.rules import model"),
        ("schemas.codec", "import sensors.publisher"),
        ("schemas.codec", "from tests.conftest import x"),
        ("streams.rules.ruleset", "from streams.detect import Detector"),
        ("streams.rules.model", "from streams import baseline"),
        ("streams.rules.model", "from ..detect import Detector"),
    ],
)
def test_the_check_sees_each_way_of_importing(module: str, source: str) -> None:
    assert violations(source, module)


@pytest.mark.parametrize(
    ("module", "source", "is_package"),
    [
        (
            "schemas.codec",
            "import orjson\nfrom schemas.errors import RecordError\nfrom . import records",
            False,
        ),
        ("streams.detect", "from schemas.settings import DetectSettings\nimport streams.rules", False),
        ("sensors.audit.sink", "from sensors.publisher import X\nfrom ..spool import Spool", False),
        ("streams.forward", "from .base import Destination", True),
        ("streams.app", "import importlib\nimportlib.import_module(name)", False),
        (
            "streams.rule_cases",
            "from streams.detect import Detector\nfrom streams.rules import RuleSet",
            False,
        ),
        (
            "streams.rules.ruleset",
            "from streams.rules.model import Rule\nfrom schemas.records import Event",
            False,
        ),
    ],
)
def test_the_check_lets_allowed_imports_through(module: str, source: str, is_package: bool) -> None:
    assert violations(source, module, is_package=is_package) == []


def test_relative_imports_resolve_against_the_package() -> None:
    assert [n for _, n in imported_modules("from ..spool import Spool", "sensors.audit.sink")] == [
        "sensors.spool"
    ]
    assert [n for _, n in imported_modules("from . import x", "streams.forward", is_package=True)] == [
        "streams.forward.x"
    ]
    # a relative import that climbs out of the package into the project's root is still the project
    assert violations("from ... import cadr", "streams.forward.base") != []

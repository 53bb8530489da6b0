"""gateway/core stays pure: no sockets, files, threads, clocks, environment, logging or randomness.

An ``ast`` scan of every module under gateway/core/ (new modules are picked up automatically)
allows imports only from an explicit list of side-effect-free standard library modules,
``zstandard``, ``cryptography``, ``msgspec`` and ``gateway.core`` itself, and no calls to the
builtins that do I/O or import by name. Randomness and time are passed in by the caller
(docs/development.md, "Layout and layers").
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import gateway.core

CORE_DIR = Path(gateway.core.__file__).parent
CORE_PACKAGE = "gateway.core"

# Pure standard library modules: computation only, no I/O, clock, environment or randomness.
ALLOWED_STDLIB = frozenset({
    "__future__",
    "abc",
    "base64",
    "binascii",
    "bisect",
    "collections",
    "collections.abc",
    "dataclasses",
    "enum",
    "functools",
    "hashlib",
    "heapq",
    "hmac",
    "ipaddress",
    "itertools",
    "json",
    "math",
    "re",
    "struct",
    "tomllib",  # parsing a configuration text already in memory (core.command_rules): computation only
    "types",
    "typing",
    "zlib",  # inflating a deflated dataset in memory (core.dataset): computation only
})
# Third-party packages the core may use, with all their submodules; and the core itself.
# msgspec parses bytes into typed values and does nothing else (no I/O, clock or state): the
# boundary's message shapes (core/schema.py) are domain rules, so they live in the core.
ALLOWED_PACKAGES = ("zstandard", "cryptography", "msgspec", CORE_PACKAGE)
# Builtins that do I/O, read input or import or run code by name: never called from core.
FORBIDDEN_CALLS = frozenset({"open", "print", "input", "__import__", "exec", "eval", "compile", "breakpoint"})


def module_name(path: Path) -> str:
    parts = path.relative_to(CORE_DIR).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((CORE_PACKAGE, *parts))


def is_allowed(name: str) -> bool:
    if name in ALLOWED_STDLIB:
        return True
    return any(name == package or name.startswith(package + ".") for package in ALLOWED_PACKAGES)


def resolve(node: ast.ImportFrom, importer: str, is_package: bool) -> list[str]:
    """Absolute names an ``from ... import`` brings in (relative imports resolved)."""
    if node.level == 0:
        assert node.module is not None
        base = node.module
    else:
        package = importer if is_package else importer.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    if node.module is None:  # "from . import envelope": the names are modules
        return [f"{base}.{alias.name}" for alias in node.names]
    return [base]


def violations(source: str, importer: str, is_package: bool = False) -> list[str]:
    """Every import or call in ``source`` that the core may not make, as 'line: what'."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = resolve(node, importer, is_package)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FORBIDDEN_CALLS:
            found.append(f"{node.lineno}: calls {node.func.id}()")
            continue
        else:
            continue
        found += [f"{node.lineno}: imports {name}" for name in names if not is_allowed(name)]
    return found


CORE_MODULES = sorted(CORE_DIR.rglob("*.py"))


def test_scan_finds_every_core_module_when_collecting() -> None:
    names = {module_name(path) for path in CORE_MODULES}
    expected = {"gateway.core", "gateway.core.codec", "gateway.core.envelope", "gateway.core.errors",
                "gateway.core.framing", "gateway.core.transfer"}
    assert expected <= names


@pytest.mark.parametrize("path", CORE_MODULES, ids=lambda p: str(p.relative_to(CORE_DIR)))
def test_core_module_imports_only_pure_modules_when_scanned(path: Path) -> None:
    found = violations(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py")
    assert not found, f"{path} is not pure:\n  " + "\n  ".join(found)


@pytest.mark.parametrize(
    "source",
    [
        "import os",
        "import socket as s",
        "from os import path",
        "import os.path",
        "from pathlib import Path",
        "import time, struct",
        "import random",
        "import logging",
        "import threading",
        "import sqlite3",
        "import asyncio",
        "import subprocess",
        "import datetime",
        "import secrets",
        "import uuid",
        "import importlib",
        "import paho.mqtt.client",
        "import cryptographyx",
        "from gateway import config",
        "from gateway.adapters import blobs",
        "from .. import config",
        "from ..adapters.blobs import write_atomic",
        "def f():\n    import os\n",
        "if TYPE_CHECKING:\n    import sqlite3\n",
        "open('x')",
        "print('x')",
        "__import__('os')",
        "eval('1')",
    ],
)
def test_scan_reports_a_violation_when_source_does_io_or_imports_an_impure_module(source: str) -> None:
    assert violations(source, "gateway.core.example")


@pytest.mark.parametrize(
    "source",
    [
        "from __future__ import annotations",
        "import struct, enum, json, hashlib, hmac, re",
        "from collections.abc import Iterator",
        "from dataclasses import dataclass, field",
        "import zstandard",
        "from cryptography.hazmat.primitives.ciphers.aead import AESGCM",
        "from gateway.core.errors import FrameError",
        "from gateway.core import envelope",
        "from . import envelope",
        "from .errors import FrameError",
        "from .sub.module import thing",
    ],
)
def test_scan_accepts_the_import_when_it_is_pure(source: str) -> None:
    assert violations(source, "gateway.core.example") == []


def test_scan_resolves_relative_imports_when_the_importer_is_a_package() -> None:
    assert violations("from . import errors", "gateway.core", is_package=True) == []
    assert violations("from .. import config", "gateway.core", is_package=True) == ["1: imports gateway.config"]

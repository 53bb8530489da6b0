"""The layer rules, as a contract a test checks (README, "Layout"; docs/architecture.md).

1. Third-party libraries: ``LIBRARIES`` maps each import name of a third-party distribution (and
   of ``sqlite3``, which the rules treat as a library) to the only gateway modules that may import
   it. Any gateway module importing a library not in the table fails: a new library needs a row.
   Every import counts, function-local and ``if TYPE_CHECKING:`` ones included. The rule is that
   libraries live in ``gateway/adapters/`` (and ``gateway/codecs/``, the pixel codecs' adapters);
   each entry outside them is an exception with its reason beside it.
2. No import cycles among gateway modules. Every import counts here too: module-level ones,
   function-local ones and ``if TYPE_CHECKING:`` ones. A function-local import is still allowed
   (``cli`` defers each service's imports so that ``mgw --help`` loads none of them), but it is a
   dependency all the same and may not close a circle: it only hides the cycle until the
   function runs. The fix for a cycle is to move the shared piece to the module that owns it or
   to invert the dependency (a protocol, as ``fleet.http.FleetView``).

3. The demo and test harnesses (``HARNESSES``) are used by ``mgw``'s demo commands only: no
   product module imports them (provisioning once imported ``render_toml`` from ``loopback``).

``gateway/core/`` has its own, stricter scan (tests/core/test_purity.py).
"""

from __future__ import annotations

import ast
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest

import gateway

ROOT = Path(gateway.__file__).parent.parent
PACKAGE = "gateway"

# import name -> {module path glob (relative to the repository): why that module may import it}
ADAPTERS_DICOM = {
    "gateway/adapters/dicom_*.py": "the DICOM adapters (SCP, SCU, admission, probe, names)",
    "gateway/adapters/mpps_scp.py": "the MPPS SCP (pynetdicom events, pydicom datasets)",
    "gateway/adapters/worklist_scp.py": "the Modality Worklist SCP (pynetdicom C-FIND events, pydicom identifiers)",
    "gateway/adapters/worklist_scu.py": "the Modality Worklist C-FIND SCU reading a RIS (pynetdicom, pydicom)",
    "gateway/adapters/mpps_scu.py": "the MPPS SCU passing performed statuses on to a RIS (pynetdicom, pydicom)",
    "gateway/adapters/storage_commitment.py": "the Storage Commitment SCU/SCP",
    "gateway/adapters/pacs.py": "the cloud's C-STORE forward to a PACS",
}
CORE = {"gateway/core/*.py": "the pure core (tests/core/test_purity.py allows it)"}
LIBRARIES: dict[str, dict[str, str]] = {
    "pynetdicom": ADAPTERS_DICOM,
    "pydicom": {
        **ADAPTERS_DICOM,
        "gateway/codecs/pixel.py": "pixel codecs decode a dataset's pixel data with pydicom",
        "gateway/demo.py": "finds pydicom's bundled test files for `mgw demo` (function-local)",
    },
    "data_store": {"gateway/demo.py": "the pydicom-data wheel's DICOM files for `mgw demo` (function-local)"},
    "numpy": {"gateway/codecs/imagecodecs_codec.py": "the image codecs take and give pixels as arrays"},
    "imagecodecs": {"gateway/codecs/imagecodecs_codec.py":
                    "lossless image codecs (libjxl, OpenJPH, OpenJPEG, CharLS) for PIXEL2 strips"},
    "paho": {"gateway/adapters/mqtt_*.py": "the MQTT adapter"},
    "hl7apy": {"gateway/adapters/hl7_orders.py": "HL7 v2 orders from a RIS (ORM^O01) into worklist entries"},
    "sqlite3": {"gateway/adapters/sqlite_db.py": "the one way a SQLite file is opened (every store uses it)"},
    "sqlite_utils": {"gateway/adapters/sqlite_db.py": "dict-row writes on that one connection"},
    "psycopg": {"gateway/adapters/postgres_db.py": "the PostgreSQL dialect (index, staging, fleet store use it)"},
    "pyudev": {"gateway/adapters/udev_watch.py": "the USB hot-plug watcher"},
    "prometheus_client": {"gateway/adapters/metrics_http.py": "the /metrics exposition"},
    "argon2": {"gateway/adapters/argon2_hash.py": "the console's password hashes (Argon2id)"},
    "uvicorn": {"gateway/adapters/uvicorn_server.py": "serves an ASGI app on a socket bound here, with TLS"},
    "authlib": {"gateway/adapters/oidc_client.py": "the console's OpenID Connect login (PKCE, ID token claims)"},
    "joserfc": {"gateway/adapters/oidc_client.py": "authlib's JOSE: the ID token's signature and the JWKS"},
    "httpx": {"gateway/adapters/oidc_client.py": "the OpenID client's bounded requests to the provider"},
    # Exception: the web framework's routes and middleware are the console's wiring (FleetDocs and the
    # store's answers in, responses out); an adapter around Starlette would rename its types one for one.
    "starlette": {"gateway/cloud/fleet/starlette_app.py": "exception: the fleet console's routes and middleware",
                  "gateway/cloud/fleet/starlette_auth.py": "exception: the console's login, CSRF and write routes",
                  "gateway/cloud/fleet/starlette_admin.py": "exception: the console's token, audit and OIDC routes",
                  "gateway/cloud/fleet/starlette_commands.py": "exception: the console's remote command routes"},
    "babel": {"gateway/adapters/gettext_catalog.py": "gettext catalogues (console and CLI): extraction, .po, .mo"},
    "fpdf": {"gateway/adapters/fpdf_report.py": "the commissioning report's PDF (CJK font embedded)"},
    "msgspec": {"gateway/core/schema.py": "typed boundary messages are domain rules (decision: test_purity.py)"},
    "zstandard": {"gateway/core/*.py": "lossless compression is computation: the core's codec and segments"},
    "cryptography": {
        **CORE,
        "gateway/adapters/keystore.py": "creates and loads the box's keys and CSRs",
        "gateway/adapters/enrolment_client.py": "pins the enrolment server's certificate",
        "gateway/adapters/host.py": "reads certificate expiry for the health report",
        "gateway/adapters/pem_files.py": "`mgw doctor` parses certificates, chains and keys the configuration names",
        "gateway/cloud/authority/ca.py": "the fleet CA: it signs certificates and CRLs; that is its job",
        # Exceptions: x509 parsing is computation on bytes already read, like the core's crypto;
        # an adapter around it would rename cryptography's types one for one.
        "gateway/cloud/broker/pki.py": "exception: reads the broker certificate's names (x509 parsing)",
        "gateway/cloud/enrolment/server.py": "exception: reads the CSR and peer certificate's names (x509)",
        "gateway/edge/provision.py": "exception: checks the issued certificate against the CA (x509)",
        "gateway/edge/renewal.py": "exception: reads the box certificate's expiry (x509)",
        "gateway/cloud/fleet/commission_verify.py": "exception: verifies a box's signed commissioning report "
                                                    "(x509 chain to the fleet CA, ECDSA)",
        "gateway/bundle.py": "exception: signs and verifies update bundles (Ed25519)",
        "gateway/field.py": "exception: `mgw bundle keygen` makes an Ed25519 key (function-local)",
    },
}

# harness module -> the only gateway modules that may import it
HARNESSES = {
    "gateway.loopback": {"gateway.demo"},
    "gateway.demo": {"gateway.cli"},
    "gateway.simulator": {"gateway.cli"},
    "gateway.link_proxy": set(),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted((ROOT / PACKAGE).rglob("*.py"))}


def resolve(node: ast.ImportFrom, importer: str, is_package: bool) -> list[str]:
    """Absolute names a ``from ... import`` brings in; ``pkg.name`` when ``name`` is a module."""
    if node.level == 0:
        base = node.module or ""
    else:
        package = importer if is_package else importer.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def imported(node: ast.stmt | ast.expr, importer: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        return resolve(node, importer, is_package)
    return []


def all_imports(source: str, importer: str, is_package: bool) -> list[tuple[int, str]]:
    return [(n.lineno, name) for n in ast.walk(ast.parse(source))
            if isinstance(n, ast.stmt) for name in imported(n, importer, is_package)]


def library_violations(relpath: str, imports: list[tuple[int, str]]) -> list[str]:
    found = []
    for line, name in imports:
        top = name.partition(".")[0]
        if top in (PACKAGE, "__future__") or (top in sys.stdlib_module_names and top not in LIBRARIES):
            continue
        allowed = LIBRARIES.get(top)
        if allowed is None:
            found.append(f"{relpath}:{line}: imports {name}, a library with no row in LIBRARIES")
        elif not any(fnmatch(relpath, pattern) for pattern in allowed):
            found.append(f"{relpath}:{line}: imports {name}; only {', '.join(allowed)} may")
    return found


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        found = all_imports(path.read_text(encoding="utf-8"), name, path.name == "__init__.py")
        edges[name] = {target for _, target in found if target in MODULES and target != name}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_scan_finds_every_gateway_package_when_collecting() -> None:
    packages = {name.split(".")[1] for name in MODULES if name.count(".") >= 1}
    assert {"adapters", "cloud", "edge", "core", "codecs", "appliance"} <= packages


@pytest.mark.parametrize("path", list(MODULES.values()), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_imports_a_library_only_when_the_contract_allows_it(path: Path) -> None:
    relpath = path.relative_to(ROOT).as_posix()
    imports = all_imports(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py")
    found = library_violations(relpath, imports)
    assert not found, "layer contract broken (tests/test_layers.py, LIBRARIES):\n  " + "\n  ".join(found)


def test_every_contract_row_names_a_module_that_exists_when_checked() -> None:
    relpaths = [p.relative_to(ROOT).as_posix() for p in MODULES.values()]
    stale = [f"{lib}: {pattern}" for lib, allowed in LIBRARIES.items() for pattern in allowed
             if not any(fnmatch(r, pattern) for r in relpaths)]
    assert not stale, f"rows for modules that no longer exist: {stale}"


@pytest.mark.parametrize(("relpath", "source"), [
    ("gateway/cloud/archive/index.py", "import psycopg"),
    ("gateway/adapters/store.py", "import sqlite3"),
    ("gateway/cloud/fleet/store.py", "import sqlite3"),
    ("gateway/edge/quarantine.py", "def f():\n    from pydicom.uid import UID\n"),
    ("gateway/edge/x.py", "if TYPE_CHECKING:\n    import psycopg\n"),
    ("gateway/adapters/store.py", "import paho.mqtt.client as paho"),
    ("gateway/adapters/x.py", "import requests"),
    ("gateway/core/x.py", "import pydicom"),
])
def test_scan_reports_a_violation_when_a_module_imports_a_library_it_may_not(relpath: str, source: str) -> None:
    assert library_violations(relpath, all_imports(source, "gateway.x", False))


@pytest.mark.parametrize(("relpath", "source"), [
    ("gateway/adapters/mqtt_link.py", "import paho.mqtt.client as paho"),
    ("gateway/adapters/postgres_db.py", "from psycopg.rows import dict_row"),
    ("gateway/edge/x.py", "import os, json\nfrom gateway.core import spool\nfrom . import y"),
    ("gateway/core/schema.py", "import msgspec"),
])
def test_scan_accepts_the_import_when_the_contract_allows_it(relpath: str, source: str) -> None:
    assert library_violations(relpath, all_imports(source, "gateway.x", False)) == []


def test_gateway_modules_form_no_import_cycle_when_loaded() -> None:
    found = cycles(graph())
    assert not found, "import cycles among gateway modules:\n  " + "\n  ".join(
        " <-> ".join(c) for c in found)


def test_no_product_module_imports_a_harness_when_scanned() -> None:
    found = [f"{importer} imports {target}" for importer, targets in graph().items() for target in targets
             if target in HARNESSES and importer not in HARNESSES[target]]
    assert not found, "harness imported by product code:\n  " + "\n  ".join(found)


def test_cycle_check_finds_a_cycle_when_two_modules_import_each_other() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]


def test_cycle_check_counts_every_import_when_building_the_graph() -> None:
    source = ("import gateway.cli\nif TYPE_CHECKING:\n    import gateway.field\n"
              "def f():\n    from gateway import loopback\n")
    names = {name for _, name in all_imports(source, "gateway.x", False)}
    assert names == {"gateway.cli", "gateway.field", "gateway.loopback"}

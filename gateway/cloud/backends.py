"""Opening what a cloud worker shares with the others, as its configuration says.

``[index] backend = "sqlite"`` (default): ``archive.db`` and a staging directory
under the node's state directory; every worker of the node shares them.
``"postgres"``: the index and staging in one PostgreSQL database, for workers
on several machines (the archive directory is then a shared filesystem).
The fleet service's store follows the same choice: ``fleet.db`` beside ``archive.db``, or its
own tables in the same PostgreSQL database. The fleet console reads the archive index too (the
versions of an instance, ``open_archive_index``), never the archive's objects.
Passwords come from 0600 files named by the configuration, never from TOML.
"""

from __future__ import annotations

import logging
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.adapters.sqlite_fleet_store import SqliteFleetStore
from gateway.cloud.archive.forward import Destination, destinations_from
from gateway.cloud.archive.index import Index
from gateway.cloud.archive.store import Archive
from gateway.cloud.fleet.store import FleetStore
from gateway.cloud.ingest.staging import FileStaging, Staging
from gateway.config import CloudSettings
from gateway.core.errors import ConfigError
from gateway.logs import MSG
from gateway.paths import Paths

if TYPE_CHECKING:
    from gateway.adapters.oidc_client import OidcClient

log = logging.getLogger(__name__)


def read_secret(path: Path) -> str:
    """One line from a 0600 file (trailing newline stripped)."""
    try:
        st = path.stat()
        text = path.read_text().strip("\r\n")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read secret: {exc.strerror}") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{path}: secret file must not be readable by group or others (chmod 600)")
    return text


MIN_TOKEN_CHARS = 16


def bearer_token(paths: Paths, relative: str) -> str:
    """The bearer token a /metrics endpoint requires, from its 0600 file; "" when none is configured."""
    if not relative:
        return ""
    path = paths.key_file(relative)
    token = read_secret(path)
    if len(token) < MIN_TOKEN_CHARS or not token.isprintable() or " " in token:
        raise ConfigError(f"{path}: a metrics bearer token must be at least {MIN_TOKEN_CHARS} printable "
                          "characters without spaces (e.g. openssl rand -hex 24)")
    return token


def oidc_client(settings: CloudSettings, paths: Paths) -> OidcClient | None:
    """The console's OpenID Connect client from ``[fleet.oidc]`` (None while no issuer is set); its
    secret from a 0600 file. authlib is imported only when a site uses it."""
    o = settings.fleet.oidc
    if not o.issuer:
        return None
    if not (o.client_id and o.client_secret_file and o.redirect_url):
        raise ConfigError("fleet.oidc: issuer is set, so client_id, client_secret_file and redirect_url are needed")
    from gateway.adapters.oidc_client import OidcClient

    return OidcClient(o.issuer, o.client_id, read_secret(paths.key_file(o.client_secret_file)), o.redirect_url,
                      ca_file=paths.key_file(o.ca_file) if o.ca_file else None)


def _postgres() -> None:
    """psycopg is an optional extra (the edge image does not carry it): a clear error if absent."""
    try:
        from gateway.adapters import postgres_db  # noqa: F401  (imports psycopg)
    except ImportError as exc:
        raise ConfigError("index.backend = \"postgres\" needs psycopg 3: "
                          "pip install 'modality-gateway[postgres]'") from exc


def postgres_dsn(settings: CloudSettings, paths: Paths) -> str:
    _postgres()
    from gateway.adapters.postgres_db import with_password

    index = settings.index
    if not index.password_file:
        return index.dsn
    return with_password(index.dsn, read_secret(paths.key_file(index.password_file)))


def forward_destinations(settings: CloudSettings) -> tuple[str, ...]:
    """Queue names of the PACS destinations turned on (stow, cstore)."""
    names = []
    if settings.forward.stow_url:
        names.append("stow")
    if settings.forward.cstore_host:
        names.append("cstore")
    return tuple(names)


def open_archive(settings: CloudSettings, paths: Paths, migrating: bool = False) -> Archive:
    destinations = forward_destinations(settings)
    key_file = paths.key_file(settings.cloud.archive_key_file)
    if settings.index.backend == "postgres":
        from gateway.adapters.postgres_index import PostgresIndex

        index = PostgresIndex(postgres_dsn(settings, paths))
        archive = Archive(paths.archive_dir, index, destinations, key_file, migrating)
    else:
        archive = Archive(paths.archive_dir, paths.archive_db, destinations, key_file, migrating)
    log.info("archive index opened", extra={
        "MESSAGE_ID": MSG.INDEX_OPENED.value, "BACKEND": settings.index.backend,
        "INDEX": archive.index.where, "SCHEMA": archive.schema_version()})
    return archive


def open_archive_index(settings: CloudSettings, paths: Paths) -> Index | None:
    """The archive index alone, for readers that never touch the objects (the versions listing of
    ``mgw cloud archive versions`` and the console): SQLite or PostgreSQL as the configuration says.
    None when it is a SQLite file that does not exist (no worker archived here yet): a reader never
    creates it."""
    if settings.index.backend != "postgres" and not paths.archive_db.exists():
        return None
    if settings.index.backend == "postgres":
        from gateway.adapters.postgres_index import PostgresIndex

        return PostgresIndex(postgres_dsn(settings, paths))
    from gateway.adapters.sqlite_index import SqliteIndex

    return SqliteIndex(paths.archive_db)


def open_staging(settings: CloudSettings, paths: Paths) -> Staging:
    if settings.index.backend == "postgres":
        from gateway.adapters.postgres_staging import PostgresStaging

        return PostgresStaging(postgres_dsn(settings, paths))
    return FileStaging(paths.staging_dir)


def open_destinations(settings: CloudSettings, paths: Paths) -> list[Destination]:
    fwd = settings.forward
    password = read_secret(paths.key_file(fwd.stow_password_file)) if fwd.stow_password_file else ""
    return destinations_from(fwd, password)


def open_fleet_store(settings: CloudSettings, paths: Paths) -> FleetStore:
    store: FleetStore
    if settings.index.backend == "postgres":
        from gateway.adapters.postgres_fleet_store import PostgresFleetStore

        store = PostgresFleetStore(postgres_dsn(settings, paths))
    else:
        store = SqliteFleetStore(paths.state_dir / "fleet.db")
    log.info("fleet store opened", extra={
        "MESSAGE_ID": MSG.FLEET_STORE_OPENED.value, "BACKEND": settings.index.backend,
        "STORE": store.where, "SCHEMA": store.schema_version()})
    return store

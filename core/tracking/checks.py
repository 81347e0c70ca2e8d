"""Check an MLflow tracking store before any work (docs/architecture.md, "Preflight").

``check_store(uri)`` turns every store that would fail later (after the data was loaded or a model
trained) into one ``BdtoolError`` line naming the store and the fix:

- ``sqlite:///PATH``: the folder of PATH is created (default mode) and must take new files; PATH,
  if it exists, must be a writable file and a readable SQLite database (``check_sqlite_file``:
  its header, its size against the page count the header records, its schema table);
  ``<folder>/artifacts`` (where bdtool puts the artifacts of a sqlite store), if it exists, must
  be a writable folder.
- ``http(s)://HOST[:PORT]``: ``URI/health`` must answer within ``timeout`` seconds (through the
  environment's proxy, as MLflow would); MLflow itself retries for minutes before failing.
- ``file://`` and plain paths: MLflow 3 refuses file stores ("maintenance mode") unless
  ``MLFLOW_ALLOW_FILE_STORE=true``; without it they are refused here with the sqlite equivalent to
  use, with it the folder is checked like a sqlite store's.
- other database engines (postgresql, mysql, mssql), databricks and the schemes of installed
  MLflow plugins (entry-point group ``mlflow.tracking_store``) are passed to MLflow as they are;
  any other scheme is refused.

No mlflow import: the checks are cheap and run before the heavy imports.
"""

from __future__ import annotations

import os
import secrets
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from bdtool.core.errors import BdtoolError

CONNECT_TIMEOUT_S = 4.0
PASSED_THROUGH = ("postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc")
"""Schemes MLflow supports that bdtool does not probe (their drivers do)."""
SUPPORTED = "sqlite:///PATH, http(s)://HOST:PORT, postgresql://, mysql://, mssql://, databricks"


def write_probe(folder: Path) -> None:
    """Create and remove a file in ``folder``: OSError when files cannot be written there (the
    store check here and ``--output``'s, core/experiment/output.py)."""
    probe = folder / f".bdtool-probe-{secrets.token_hex(6)}"
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    os.unlink(probe)


def _probe_folder(folder: Path, uri: str, what: str) -> None:
    """Create ``folder`` if missing (default mode) and write and remove a file in it."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise BdtoolError(f"tracking store {uri}: cannot create the {what} {folder} ({exc.strerror or exc}); "
                          "fix its parent's permissions or pass another --tracking-uri") from None
    try:
        write_probe(folder)
    except OSError as exc:
        raise BdtoolError(f"tracking store {uri}: the {what} {folder} is not writable ({exc.strerror or exc}); "
                          "make it writable or pass another --tracking-uri") from None


def _check_folder_store(folder: Path, uri: str, db: Path | None = None) -> None:
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise BdtoolError(f"tracking store {uri}: {folder} is a file, not a folder; pass another --tracking-uri")
    for parent in folder.parents:
        if os.path.lexists(parent) and not os.path.isdir(parent):
            raise BdtoolError(f"tracking store {uri}: cannot create {folder}, {parent} is a file, not a folder; "
                              "pass another --tracking-uri")
    _probe_folder(folder, uri, "store folder")
    if db is not None and db.exists():
        if not db.is_file():
            raise BdtoolError(f"tracking store {uri}: {db} is not a file; pass another --tracking-uri")
        if not os.access(db, os.R_OK | os.W_OK):
            raise BdtoolError(f"tracking store {uri}: the database {db} is read-only; "
                              "make it writable or pass another --tracking-uri")
        check_sqlite_file(db, uri)
    artifacts = folder / "artifacts"
    if artifacts.is_dir():
        _probe_folder(artifacts, uri, "artifact folder")


SQLITE_HEADER = b"SQLite format 3\x00"


def check_sqlite_file(db: Path, uri: str) -> None:
    """An existing, non-empty ``db`` must be a whole SQLite database (sqlite.org/fileformat.html,
    "The Database Header"): the 16-byte magic string; when the header's page count is valid (its
    change counter equals its version-valid-for number) a file at least that many pages long; and a
    readable schema table. A damaged store is then one line before any work, not a SQLAlchemy
    traceback after it (what MLflow gives). No full integrity check: that reads every page."""
    import sqlite3

    size = db.stat().st_size
    if size == 0:  # sqlite and MLflow treat an empty file as a new database
        return
    fix = "restore it from a backup, move it away, or pass another --tracking-uri"
    with open(db, "rb") as f:
        header = f.read(100)
    if not header.startswith(SQLITE_HEADER):
        raise BdtoolError(f"tracking store {uri}: {db} is not an SQLite database (damaged or another file); {fix}")
    if len(header) < 100:
        raise BdtoolError(f"tracking store {uri}: the database {db} is truncated ({size} bytes); {fix}")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    if header[24:28] == header[92:96] and pages and size < pages * page_size:
        raise BdtoolError(f"tracking store {uri}: the database {db} is truncated ({size} bytes, its header says "
                          f"{pages} pages of {page_size}); {fix}")
    try:
        with sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=CONNECT_TIMEOUT_S) as conn:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        conn.close()
    except sqlite3.Error as exc:
        raise BdtoolError(f"tracking store {uri}: the database {db} cannot be read ({exc}); {fix}") from None


def _check_server(uri: str, timeout: float) -> None:
    """A GET of ``URI/health`` (every MLflow server answers it; the environment's proxy is used as
    MLflow would) within ``timeout`` seconds. Refused, timed out, a gateway error or a 404 (no
    MLflow server there) is one line; any other answer (401/403 of a server with auth) passes."""
    parsed = urllib.parse.urlsplit(uri)
    if not parsed.hostname:
        raise BdtoolError(f"tracking store {uri}: no host in the URI; pass --tracking-uri http(s)://HOST:PORT")
    try:
        parsed.port
    except ValueError:
        raise BdtoolError(f"tracking store {uri}: the port is not a number; fix --tracking-uri") from None
    health = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(urllib.request.Request(health, method="GET"), timeout=timeout):
            return
    except urllib.error.HTTPError as exc:
        if exc.code not in (404, 502, 503, 504):
            return
        reason = f"HTTP {exc.code} from {health}" + ("; is it an MLflow tracking server?" if exc.code == 404 else "")
    except (socket.timeout, TimeoutError):
        reason = f"no answer within {timeout:g} s"
    except urllib.error.URLError as exc:
        inner = exc.reason
        if isinstance(inner, (socket.timeout, TimeoutError)):
            reason = f"no answer within {timeout:g} s"
        elif isinstance(inner, OSError):
            reason = (inner.strerror or str(inner) or type(inner).__name__).lower()
        else:
            reason = str(inner)
    except (OSError, ValueError) as exc:
        reason = str(exc) or type(exc).__name__
    raise BdtoolError(f"cannot reach the tracking server at {uri} ({reason}); start it or fix --tracking-uri")


def _plugin_schemes() -> set[str]:
    """Schemes that installed MLflow plugins register (entry-point group ``mlflow.tracking_store``)."""
    from importlib.metadata import entry_points

    return {ep.name.lower() for ep in entry_points(group="mlflow.tracking_store")}


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def check_store(uri: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise one-line ``BdtoolError`` if the store ``uri`` (already resolved: see
    ``store.resolve_tracking_uri``) cannot be used; return quietly otherwise."""
    parsed = urllib.parse.urlsplit(uri)
    scheme = parsed.scheme.lower()
    if scheme == "sqlite":
        if not uri.startswith("sqlite:///"):
            raise BdtoolError(f"tracking store {uri}: a sqlite store is sqlite:///PATH (relative) or "
                              "sqlite:////ABSOLUTE/PATH; fix --tracking-uri")
        path = uri[len("sqlite:///"):].split("?", 1)[0]
        if not path or path == ":memory:":
            return
        db = Path(path).expanduser()
        _check_folder_store(db.parent if str(db.parent) else Path("."), uri, db)
        return
    if scheme in ("http", "https"):
        _check_server(uri, timeout)
        return
    if scheme in ("file", "") or (len(scheme) == 1 and len(uri) > 2 and uri[1] == ":"):  # plain or Windows path
        folder = Path(urllib.request.url2pathname(parsed.path) if scheme == "file" else uri).expanduser()
        if not _truthy(os.environ.get("MLFLOW_ALLOW_FILE_STORE")):
            raise BdtoolError(f"tracking store {uri}: MLflow 3 no longer accepts file stores; use "
                              f"--tracking-uri sqlite:///{folder / 'mlflow.db'} (or set MLFLOW_ALLOW_FILE_STORE=true)")
        _check_folder_store(folder, uri)
        return
    if scheme.split("+", 1)[0] in PASSED_THROUGH or scheme in _plugin_schemes():
        return
    raise BdtoolError(f"tracking store {uri}: unknown scheme '{scheme}://'; use one of {SUPPORTED}")

"""A real PostgreSQL server for main_app's history tests, started by the suite itself.

Debian's ``postgresql`` package (``scripts/install.sh --system`` installs it) gives the server
binaries; the fixture runs ``initdb`` into a temporary folder and the server on a free port on
127.0.0.1, once per test session. PostgreSQL refuses to run as root (as CI does): then it runs as
the ``postgres`` system user the package creates (or ``rvchat-pg``, created here if that is missing).
Tests that need it skip, saying why, when the binaries are not there.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from rvchat_app.store import Store
from rvchat_common.testing import free_port

PG_USER = "rvchat"  # the database role; trust authentication on 127.0.0.1 only


@dataclass
class PgServer:
    host: str
    port: int
    bindir: Path

    def url(self, database: str) -> str:
        return f"postgresql://{PG_USER}@{self.host}:{self.port}/{database}"

    def create_database(self, prefix: str = "rvchat") -> str:
        """A new, empty database; its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        subprocess.run([str(self.bindir / "createdb"), "-h", self.host, "-p", str(self.port), "-U", PG_USER,
                        name], check=True, capture_output=True, timeout=30)
        return self.url(name)


def _pg_bindir() -> Path | None:
    for initdb in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True):
        return Path(initdb).parent
    found = shutil.which("initdb") or shutil.which("pg_ctl")
    return Path(found).resolve().parent if found else None


def _system_user() -> str | None:
    """A non-root account to run the server as, when we are root; None when we are not root."""
    if os.geteuid() != 0:
        return None
    import pwd

    for name in ("postgres", "rvchat-pg"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "rvchat-pg"],
                   check=True, capture_output=True)
    return "rvchat-pg"


@pytest.fixture(scope="session")
def postgres() -> PgServer:
    bindir = _pg_bindir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        pytest.skip("PostgreSQL server binaries not found: install Debian's `postgresql` package "
                    "(scripts/install.sh --system does)")
    user = _system_user()
    as_user = ["runuser", "-u", user, "--"] if user else []
    # Under /tmp (world-traversable), not pytest's per-user 0700 folder the server user cannot enter.
    root = Path(tempfile.mkdtemp(prefix="rvchat-pg-"))
    data, sockets, log = root / "data", root / "run", root / "server.log"
    sockets.mkdir()
    if user:
        shutil.chown(root, user)
        shutil.chown(sockets, user)
    init = subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", PG_USER, "--auth=trust",
                           "-E", "UTF8", "--no-sync"], capture_output=True, text=True, timeout=120)
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"initdb failed: {init.stderr.strip()[-500:]}")
    port = free_port()
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c max_connections=50"
    start = subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log),
                            "-w", "-t", "60", "start"], capture_output=True, text=True, timeout=90)
    if start.returncode != 0:
        tail = log.read_text(errors="replace")[-1000:] if log.exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"PostgreSQL did not start: {start.stderr.strip()}\n{tail}")
    try:
        yield PgServer("127.0.0.1", port, bindir)
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path) -> str:
    """A fresh history database on each backend: a SQLite path, or a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "history.sqlite3")
    return request.getfixturevalue("postgres").create_database()


@pytest.fixture
async def store(tmp_path):
    """A fresh SQLite history in the test's folder (test_store.py has its own, on both backends)."""
    s = Store(str(tmp_path / "t.sqlite3"))
    await s.open()
    yield s
    await s.close()

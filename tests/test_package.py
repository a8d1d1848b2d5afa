"""The package as a user gets it: a wheel built from the repository, installed in a fresh
virtualenv, run from an empty directory (no alembic.ini, no migrations/ beside it): migrate,
schema, and serve in embedded mode until its health check answers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import free_port
from tests.servers import PROJECT_ROOT, STARTUP_TIMEOUT

INSTALL_TIMEOUT = 900  # dependencies from the package index, on a busy machine


def run(command: list[str | Path], cwd: Path, env: dict[str, str], timeout: float = 120) -> str:
    done = subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert done.returncode == 0, f"{command}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_the_wheel_runs_from_an_empty_directory(tmp_path: Path) -> None:
    # Nothing of the checkout may leak in: not its directory, not its virtualenv.
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "VIRTUAL_ENV") and not key.startswith(("DATABASE_", "REDIS_"))}
    dist, venv, empty = tmp_path / "dist", tmp_path / "venv", tmp_path / "empty"
    empty.mkdir()
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", dist, PROJECT_ROOT], tmp_path, env,
        INSTALL_TIMEOUT)
    (wheel,) = dist.glob("bookmyevent-*.whl")
    run([sys.executable, "-m", "venv", venv], tmp_path, env)
    run([venv / "bin" / "pip", "install", "--quiet", "--disable-pip-version-check", wheel], tmp_path, env,
        INSTALL_TIMEOUT)
    command = venv / "bin" / "bookmyevent"

    run([command, "migrate"], empty, env)
    assert (empty / "bookmyevent.db").exists()  # the embedded default: a SQLite file right here
    assert "type Query" in run([command, "schema"], empty, env)
    port = free_port()
    server = subprocess.Popen([command, "serve"], cwd=empty, env={**env, "PORT": str(port)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            assert server.poll() is None, server.communicate()[0]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "serve did not answer /healthz"
                time.sleep(0.2)
        playground = httpx.get(f"http://127.0.0.1:{port}/graphql", headers={"Accept": "text/html"})
        assert "/static/graphiql/graphiql.min.js" in playground.text
        assert httpx.get(f"http://127.0.0.1:{port}/static/graphiql/graphiql.min.js").status_code == 200
    finally:
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=30)[0]
    assert f"http://127.0.0.1:{port}/ " in output  # the seat map's address, printed at start

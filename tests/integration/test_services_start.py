"""The pinned dependency set really runs the servers users start: Prefect's and MLflow's.

(Version traps found here: prefect 3.9 needs a certifi the registry lacks; prefect 3.8 with
fastapi >= 0.155 dies at start on `Body(min_items=...)`.)
"""

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support import free_port

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 120) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        assert process.poll() is None, f"server exited with {process.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.perf_counter() - started
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} not healthy after {timeout} s")


def start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        args, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=log.parent, start_new_session=True
    )


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)  # the group we created: the server and its workers
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_prefect_server_starts(tmp_path: Path) -> None:
    port = free_port()
    env = os.environ | {
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    server = start(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        tmp_path / "prefect.log",
        env,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/api/health", server)
    finally:
        stop(server)


def test_mlflow_server_starts(tmp_path: Path) -> None:
    port = free_port()
    server = start(
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path}/mlflow.db",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        tmp_path / "mlflow.log",
        dict(os.environ),
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", server)
    finally:
        stop(server)

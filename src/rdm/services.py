"""The local services of `make services`, on 127.0.0.1 and without Docker: a Prefect server (SQLite),
an MLflow server (SQLite backend, local artifacts, one worker) and the process serving the three
deployments (`flows/serve.py`). Their databases, logs and process ids live in `services.state`;
`stop` ends exactly the processes `start` recorded there.

`services.stack: postgres` (`rdm services start --stack postgres`) starts the compose stack's shape
instead (infra/README.md): PostgreSQL under both servers, MLflow serving its artifacts (to S3 where
`services.artifacts` says so), the process pool of infra/work-pool.json with the deployments of
infra/prefect.yaml, and a `prefect worker` that runs them.

The MLflow server uses the project's own store (`mlflow.db`) and artifact folder (`mlruns/`), so the
runs of `dvc repro` and of the flows are browsable in one UI and readable without the server.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from rdm import postgres
from rdm.config import ServicesParams
from rdm.errors import UserError

STATE_FILE = "services.json"
POSTGRES_FILE = "postgres.json"
"""Where the stack's PostgreSQL runs (data folder, port), for `stop`."""
POOL = "rdm-gpu"
"""The process pool of infra/work-pool.json, which infra/prefect.yaml's deployments name."""
PROFILE_MARK = "prefect-profile-set"
DEPLOYMENTS = (
    "train-rdm/train-rdm",
    "sample-styles/sample-styles",
    "refresh-style-collections/refresh-style-collections",
)


class ServiceError(UserError):
    pass


@dataclass(frozen=True)
class Urls:
    prefect_api: str
    prefect_ui: str
    mlflow: str


def urls(params: ServicesParams) -> Urls:
    prefect = f"http://{params.host}:{params.prefect_port}"
    return Urls(f"{prefect}/api", prefect, f"http://{params.host}:{params.mlflow_port}")


def environment(params: ServicesParams) -> dict[str, str]:
    """What a process needs to use these services: the variables `make services` prints."""
    return {
        "PREFECT_API_URL": urls(params).prefect_api,
        "MLFLOW_TRACKING_URI": urls(params).mlflow,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DVC_NO_ANALYTICS": "1",
    }


def _profile_api_url() -> str | None:
    """PREFECT_API_URL in the user's active Prefect profile (None when unset), asked of the Prefect CLI
    as `_point_prefect_cli` sets it: the package never imports Prefect (docs/architecture.md)."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # the profile's, not the shell's
    shown = subprocess.run(
        [_bin("prefect"), "config", "view", "--hide-defaults"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    found = re.search(r"^PREFECT_API_URL='(.*)' \(from profile\)$", shown, re.M)
    return found[1] if found else None


def _point_prefect_cli(api: str | None) -> None:
    """Set (or, with None, unset) PREFECT_API_URL in the user's active Prefect profile, so that a plain
    `prefect deployment run ...` reaches this server, as `prefect config set` after `prefect server
    start` would."""
    args = ["config", "set", f"PREFECT_API_URL={api}"] if api else ["config", "unset", "PREFECT_API_URL"]
    subprocess.run([_bin("prefect"), *args], stdin=subprocess.DEVNULL, capture_output=True, check=True)


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _launch(args: list[str], log: Path, env: dict[str, str], cwd: Path) -> int:
    with log.open("ab") as out:
        process = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )
    return process.pid


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _alive(pid: int) -> bool:
    _reap(pid)  # a child of ours that exited is a zombie until collected
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait(what: str, ready: Callable[[], bool], pid: int, log: Path, timeout: float) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if not _alive(pid):
            raise ServiceError(f"{what} exited while starting; its log ({log}) ends:\n{_tail(log)}")
        if ready():
            return time.perf_counter() - started
        time.sleep(1)
    raise ServiceError(f"{what} did not answer within {timeout:.0f} s (services.startup_timeout); see {log}")


def _tail(log: Path, lines: int = 20) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.is_file() else ""


def served_deployments(api: str) -> list[str]:
    """The `flow/deployment` names the Prefect server knows."""
    request = urllib.request.Request(
        f"{api}/deployments/filter", data=b"{}", headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            deployments = json.load(response)
    except OSError:
        return []
    flows = {}
    for deployment in deployments:
        flow_id = deployment["flow_id"]
        if flow_id not in flows:
            with urllib.request.urlopen(f"{api}/flows/{flow_id}", timeout=5) as response:
                flows[flow_id] = json.load(response)["name"]
    return sorted(f"{flows[d['flow_id']]}/{d['name']}" for d in deployments)


def start(params: ServicesParams, root: Path) -> dict[str, int]:
    """Start the three processes (unless already running) and wait until each answers."""
    state = (root / params.state).resolve()
    state.mkdir(parents=True, exist_ok=True)
    recorded = _read_state(state)
    if recorded and any(_ours(pid) for pid in recorded.values()):
        gone = [name for name, pid in recorded.items() if not _ours(pid)]
        if gone:  # with the stack they were started as, whatever `--stack` says now
            stack = "postgres" if (state / POSTGRES_FILE).is_file() else "sqlite"
            return _restart(params.model_copy(update={"stack": stack}), root, recorded, gone)
        print(f"services: already running ({state / STATE_FILE}); `make services-stop` first to restart")
        status(params, root)
        return recorded
    env = _process_environment(params, state)
    try:
        pids: dict[str, int] = {}
        if params.stack == "postgres":
            server = _postgres(params, state)
            (state / POSTGRES_FILE).write_text(json.dumps({"data": str(server.data), "port": server.port}))
            pids["postgres"] = postgres.start(server)
            _write_state(state, pids)
            print(f"services: PostgreSQL {server.host}:{server.port} up ({server.data})")
        pids |= _launch_servers(params, root, state, env)
        _write_state(state, pids)
        _wait_for_servers(params, state, pids)
        if params.stack == "postgres":
            _deploy(root, state, env)
            pids["worker"] = _launch_worker(root, state, env)
        else:
            pids["deployments"] = _launch_deployments(root, state, env)
        _write_state(state, pids)
        _wait_for_deployments(params, state, pids.get("deployments") or pids["worker"])
        _point_prefect_cli_here(params, state)
    except BaseException:  # leave nothing half-started behind
        stop(params, root)
        raise
    _print_usage(params, root)
    return pids


def _restart(params: ServicesParams, root: Path, recorded: dict[str, int], gone: list[str]) -> dict[str, int]:
    """Bring back the recorded services that have exited (a crash, a kill), leaving the running ones."""
    state = (root / params.state).resolve()
    env = _process_environment(params, state)
    pids = dict(recorded)
    for name in gone:
        if name == "postgres":
            server = _postgres(params, state)
            if (server.data / "postmaster.pid").is_file() and _alive(postgres.pid(server)):
                pids[name] = postgres.pid(server)  # restarted by someone else meanwhile
                continue
            pids[name] = postgres.start(server)
        elif name in ("prefect", "mlflow"):
            pids |= _launch_servers(params, root, state, env, only=name)
        elif name == "worker":
            pids[name] = _launch_worker(root, state, env)
        else:
            pids[name] = _launch_deployments(root, state, env)
        print(f"services: restarted {name} (pid {pids[name]})")
    _write_state(state, pids)
    _wait_for_servers(params, state, pids)
    return pids


def _process_environment(params: ServicesParams, state: Path) -> dict[str, str]:
    """The environment of the three processes; also written to `<state>/env` for the user's shell."""
    exported = environment(params)
    if params.stack == "postgres":
        exported["RDM_PROJECT_DIR"] = str(state.parent)
    (state / "env").write_text("".join(f"export {key}={value}\n" for key, value in exported.items()))
    return (
        os.environ
        | exported
        | {
            "PREFECT_HOME": str(state / "prefect"),  # the server's database, the served flows' results
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # dvc and rdm for flows
        }
    )


def _postgres(params: ServicesParams, state: Path) -> postgres.Postgres:
    """The stack's PostgreSQL, with the user and password the compose file takes from the environment."""
    return postgres.Postgres(
        data=Path(params.postgres_data or state / "postgres").resolve(),
        port=params.postgres_port,
        user=os.environ.get("POSTGRES_USER", "rdm"),
        password=os.environ.get("POSTGRES_PASSWORD", "rdm-local-only"),
        host=params.host,
    )


def _launch_servers(
    params: ServicesParams, root: Path, state: Path, env: dict[str, str], only: str | None = None
) -> dict[str, int]:
    """Start the Prefect and the MLflow server (or `only` one), without waiting: their process ids."""
    prefect = [_bin("prefect"), "server", "start", "--host", params.host, "--port", str(params.prefect_port)]
    mlflow = [_bin("mlflow"), "server", *_mlflow_stores(params, root, state)]
    mlflow += ["--host", params.host, "--port", str(params.mlflow_port), "--workers", "1"]
    prefect_env = env
    if params.stack == "postgres":
        database = _postgres(params, state).url("prefect", "postgresql+asyncpg")
        prefect_env = env | {"PREFECT_SERVER_DATABASE_CONNECTION_URL": database}
    commands = {"prefect": (prefect, prefect_env), "mlflow": (mlflow, env)}
    return {
        name: _launch(args, state / f"{name}.log", run_env, root)
        for name, (args, run_env) in commands.items()
        if only in (None, name)
    }


def _mlflow_stores(params: ServicesParams, root: Path, state: Path) -> list[str]:
    if params.stack == "postgres":  # as infra/docker-compose.yml runs it: clients log through the server
        artifacts = params.artifacts or str(state / "mlartifacts")
        backend = _postgres(params, state).url("mlflow", "postgresql+psycopg2")
        return ["--backend-store-uri", backend, "--artifacts-destination", artifacts, "--serve-artifacts"]
    return [
        "--backend-store-uri",
        f"sqlite:///{(root / 'mlflow.db').resolve()}",
        # artifacts where `sqlite:///mlflow.db` without a server puts them, so that runs
        # logged through the server and runs of a plain `dvc repro` read each other's
        "--default-artifact-root",
        str((root / "mlruns").resolve()),
        "--no-serve-artifacts",
    ]


def _deploy(root: Path, state: Path, env: dict[str, str]) -> None:
    """The pool, the deployments and the automations as infra/README.md has a user make them (an
    automation already on the server, from an earlier start on the same database, is kept)."""
    infra = root / "infra"
    pool = ["work-pool", "create", POOL, "--type", "process"]
    commands = [
        [*pool, "--base-job-template", str(infra / "work-pool.json")],
        ["--no-prompt", "deploy", "--all", "--prefect-file", str(infra / "prefect.yaml")],
    ]
    if not _automations_exist(infra / "automations.yaml", env):
        commands.append(["automation", "create", "--from-file", str(infra / "automations.yaml")])
    with (state / "deploy.log").open("a") as log:
        for command in commands:
            done = subprocess.run(
                [_bin("prefect"), *command], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT
            )
            if done.returncode and "already exists" not in _tail(state / "deploy.log", 5):
                raise ServiceError(f"prefect {' '.join(command)} failed; see {state / 'deploy.log'}")
    print(f"services: work pool {POOL}, the deployments of infra/prefect.yaml and its automations created")


def _automations_exist(path: Path, env: dict[str, str]) -> bool:
    names = {automation["name"] for automation in yaml.safe_load(path.read_text())["automations"]}
    listed = subprocess.run([_bin("prefect"), "automation", "ls"], env=env, capture_output=True, text=True)
    return all(name in listed.stdout for name in names)


def _launch_worker(root: Path, state: Path, env: dict[str, str]) -> int:
    """A process worker of the pool; each flow run it starts changes into RDM_PROJECT_DIR (the pull
    step of infra/prefect.yaml)."""
    worker = [_bin("prefect"), "worker", "start", "--pool", POOL, "--type", "process"]
    heartbeat = {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}  # what infra/automations.yaml watches
    return _launch(worker, state / "worker.log", env | heartbeat | {"PYTHONPATH": str(root)}, root)


def _wait_for_servers(params: ServicesParams, state: Path, pids: dict[str, int]) -> None:
    address = urls(params)
    seconds = _wait(
        "the Prefect server",
        lambda: _answers(f"{address.prefect_api}/health"),
        pids["prefect"],
        state / "prefect.log",
        params.startup_timeout,
    )
    print(f"services: Prefect server {address.prefect_ui} up in {seconds:.0f} s")
    seconds = _wait(
        "the MLflow server",
        lambda: _answers(f"{address.mlflow}/health"),
        pids["mlflow"],
        state / "mlflow.log",
        params.startup_timeout,
    )
    print(f"services: MLflow server {address.mlflow} up in {seconds:.0f} s")


def _launch_deployments(root: Path, state: Path, env: dict[str, str]) -> int:
    """Start `flows/serve.py`, which registers the deployments with the running Prefect server."""
    return _launch(
        [sys.executable, "-m", "flows.serve"],
        state / "deployments.log",
        env | {"PYTHONPATH": str(root)},
        root,
    )


def _wait_for_deployments(params: ServicesParams, state: Path, pid: int) -> None:
    api = urls(params).prefect_api
    seconds = _wait(
        "the deployments (flows/serve.py)",
        lambda: set(DEPLOYMENTS) <= set(served_deployments(api)),
        pid,
        state / "deployments.log",
        params.startup_timeout,
    )
    print(f"services: deployments {', '.join(DEPLOYMENTS)} served in {seconds:.0f} s")


def _point_prefect_cli_here(params: ServicesParams, state: Path) -> None:
    """Point the user's Prefect profile at this server, recording what it pointed at for `stop` to restore."""
    (state / PROFILE_MARK).write_text(json.dumps({"previous": _profile_api_url()}) + "\n")
    _point_prefect_cli(urls(params).prefect_api)


def _print_usage(params: ServicesParams, root: Path) -> None:
    print(
        f"\nYour Prefect profile now points at {urls(params).prefect_api} (`make services-stop` undoes it).\n"
        f"Run:  prefect deployment run train-rdm/train-rdm --watch\n"
        f"      (MLFLOW_TRACKING_URI and the rest for your shell: source {params.state}/env)\n"
        f"UIs:  Prefect {urls(params).prefect_ui}   MLflow {urls(params).mlflow}"
    )


def stop(params: ServicesParams, root: Path) -> None:
    """End the processes `start` recorded, each with its whole process group (flow runs, workers),
    the deployments first so that their runs are reported while the servers still listen."""
    state = (root / params.state).resolve()
    for name, pid in reversed(_read_state(state).items()):
        if name == "postgres" or not _ours(pid):
            continue  # PostgreSQL last, by its data folder: it may have been restarted under another pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.perf_counter() + 30
        while _group_alive(pid) and time.perf_counter() < deadline:
            _reap(pid)
            time.sleep(0.3)
        if _group_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            _reap(pid)
        print(f"services: stopped {name} (pid {pid})")
    if (state / POSTGRES_FILE).is_file():
        recorded = json.loads((state / POSTGRES_FILE).read_text())
        postgres.stop(postgres.Postgres(Path(recorded["data"]), recorded["port"]))
        (state / POSTGRES_FILE).unlink()
        print(f"services: stopped PostgreSQL ({recorded['data']})")
    (state / STATE_FILE).unlink(missing_ok=True)
    if (state / PROFILE_MARK).is_file():
        _point_prefect_cli(json.loads((state / PROFILE_MARK).read_text())["previous"])
        (state / PROFILE_MARK).unlink()


def _ours(pid: int) -> bool:
    """The recorded process is still one `start` launched (a pid may have been reused since)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return any(program in command for program in ("prefect", "mlflow", "flows.serve", "postgres"))


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap(pid: int) -> None:
    """Collect a child that has exited (when started by this process), so it stops counting as alive."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def status(params: ServicesParams, root: Path) -> dict[str, bool]:
    state = (root / params.state).resolve()
    address = urls(params)
    checks = {
        "prefect": _answers(f"{address.prefect_api}/health"),
        "mlflow": _answers(f"{address.mlflow}/health"),
        "deployments": set(DEPLOYMENTS) <= set(served_deployments(address.prefect_api)),
    }
    for name, pid in _read_state(state).items():
        print(
            f"services: {name:12s} pid {pid:7d} {'running' if _ours(pid) else 'gone'}"
            f"{'' if checks.get(name, True) else ' (not answering)'}"
        )
    return checks


def _read_state(state: Path) -> dict[str, int]:
    path = state / STATE_FILE
    return {k: int(v) for k, v in json.loads(path.read_text()).items()} if path.is_file() else {}


def _write_state(state: Path, pids: dict[str, int]) -> None:
    (state / STATE_FILE).write_text(json.dumps(pids, indent=2) + "\n")

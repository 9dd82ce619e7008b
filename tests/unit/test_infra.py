"""The scale-out stack in infra/, parsed and checked, never started: Docker cannot run on this machine,
so `docker compose config` runs only where a docker binary exists."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from rdm.config import load_config
from tests.support import REPO_ROOT, debian_tool

INFRA = REPO_ROOT / "infra"
COMPOSE = INFRA / "docker-compose.yml"

SERVICES = {"qdrant", "postgres", "minio", "minio-init", "mlflow", "prefect-server", "prefect-worker"}
DEPLOYMENTS = {"train-rdm", "sample-styles", "refresh-style-collections"}
WORKER_ENV = {
    "PREFECT_API_URL": "http://prefect-server:4200/api",
    "MLFLOW_TRACKING_URI": "http://mlflow:5000",
    "QDRANT_URL": "http://qdrant:6333",
    "AWS_ENDPOINT_URL": "http://minio:9000",
    "RDM_STORE_BACKEND": "server",
}
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ...; `$$` is a literal `$` for the container.
BRACED = re.compile(r"(?<!\$)\$\{(?P<name>[A-Za-z_]\w*)(?P<op>:?[-?+])?(?P<rest>[^}]*)\}")
BARE = re.compile(r"(?<!\$)\$(?P<name>[A-Za-z_]\w*)")
PLACEHOLDER = re.compile(r"\{\{\s*([\w.]+)\s*\}\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    return env if isinstance(env, dict) else dict(item.split("=", 1) for item in env)


def option(command: list[str], flag: str) -> str:
    """The value after `flag` in an exec-form command."""
    assert flag in command, f"{flag} missing from {command}"
    return command[command.index(flag) + 1]


def test_every_service_of_the_stack_is_declared(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) >= SERVICES


def test_dependencies_exist_and_wait_for_health_or_completion(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on without conditions waits for nothing"
        for target, spec in depends_on.items():
            assert target in services, f"{name} depends on undeclared {target}"
            condition = spec.get("condition")
            if condition == "service_healthy":
                assert services[target].get("healthcheck", {}).get("test"), f"{target} has no healthcheck"
            else:
                assert condition == "service_completed_successfully", f"{name} -> {target}: {condition}"
                assert services[target].get("restart") == "no", f"{target} is not a one-shot job"
    assert services["prefect-worker"]["depends_on"]["prefect-server"]["condition"] == "service_healthy"
    assert services["mlflow"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"


def test_long_running_services_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    long_running = [name for name, service in services.items() if service.get("restart") != "no"]
    assert set(long_running) >= SERVICES - {"minio-init"}
    for name in long_running:
        check = services[name].get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
        assert check["test"][0] in {"CMD", "CMD-SHELL"}, f"{name}: {check['test']}"


def test_host_ports_are_bound_to_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    published = [(name, port) for name, service in services.items() for port in service.get("ports", [])]
    assert {name for name, _ in published} >= {"qdrant", "mlflow", "prefect-server", "minio"}
    for name, port in published:
        if isinstance(port, dict):
            assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
        else:
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is reachable from other machines"


def test_worker_reserves_an_nvidia_gpu(services: dict[str, dict[str, Any]]) -> None:
    devices = services["prefect-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) and d.get("count", 0) in (1, "all")
        for d in devices
    ), devices


def test_mlflow_serves_s3_artifacts_to_the_compose_hostnames(services: dict[str, dict[str, Any]]) -> None:
    mlflow = services["mlflow"]
    command = mlflow["command"]
    assert command[:2] == ["mlflow", "server"]
    assert "--serve-artifacts" in command
    assert option(command, "--artifacts-destination").startswith("s3://mlflow/")
    assert option(command, "--backend-store-uri").startswith(
        "postgresql+psycopg2://"
    )  # SQLAlchemy 2.1: psycopg 3 else
    assert option(command, "--backend-store-uri").endswith("@postgres:5432/mlflow")
    hosts = set(option(command, "--allowed-hosts").split(","))
    assert hosts >= {"mlflow", "mlflow:5000", "localhost", "127.0.0.1"}
    assert urlparse(env_of(mlflow)["MLFLOW_S3_ENDPOINT_URL"]).hostname == "minio"


def test_prefect_server_uses_postgres(services: dict[str, dict[str, Any]]) -> None:
    server = services["prefect-server"]
    env = env_of(server)
    assert env["PREFECT_SERVER_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert env["PREFECT_SERVER_DATABASE_CONNECTION_URL"].endswith("@postgres:5432/prefect")
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert option(server["command"], "--host") == "0.0.0.0"
    init = (INFRA / "postgres" / "init.sql").read_text()
    for statement in (
        "CREATE DATABASE mlflow",
        "CREATE DATABASE prefect",
        "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    ):
        assert statement in init
    assert init.index("\\connect prefect") < init.index("CREATE EXTENSION")


def test_every_variable_has_a_default_or_is_documented() -> None:
    text = COMPOSE.read_text()
    readme = (INFRA / "README.md").read_text()
    used = list(BRACED.finditer(text))
    assert used, "no ${VAR} substitutions: are the secrets hard-coded?"
    for match in used:
        has_default = match["op"] in {":-", "-"} and match["rest"] != ""
        assert has_default or match["name"] in readme, f"${{{match['name']}}} has no default and no docs"
    assert not BARE.findall(text), "write ${VAR} (or $$VAR for the container's shell), not $VAR"


def test_secrets_come_from_substitutions(services: dict[str, dict[str, Any]]) -> None:
    secrets = {"POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"}
    seen = 0
    for name, service in services.items():
        for key, value in env_of(service).items():
            if key in secrets:
                seen += 1
                assert BRACED.fullmatch(str(value)), f"{name}: {key} is hard-coded"
    assert seen >= 6


def test_worker_environment_points_at_the_stack(services: dict[str, dict[str, Any]]) -> None:
    env = env_of(services["prefect-worker"])
    for key, value in WORKER_ENV.items():
        assert env.get(key) == value, key
        if value.startswith("http"):
            assert urlparse(value).hostname in services, f"{key} names no service"
    assert BRACED.fullmatch(env["AWS_ACCESS_KEY_ID"])["name"] == "MINIO_ROOT_USER"
    assert BRACED.fullmatch(env["AWS_SECRET_ACCESS_KEY"])["name"] == "MINIO_ROOT_PASSWORD"
    assert env["RDM_PROJECT_DIR"] == "/srv/rdm"  # where the image holds the project


def test_images_build_from_files_in_the_repository(services: dict[str, dict[str, Any]]) -> None:
    for name in ("prefect-worker", "mlflow"):
        build = services[name]["build"]
        assert (COMPOSE.parent / build["context"]).resolve() == REPO_ROOT
        assert (REPO_ROOT / build["dockerfile"]).is_file(), build
    worker = (REPO_ROOT / services["prefect-worker"]["build"]["dockerfile"]).read_text()
    assert re.search(r"^FROM pytorch/pytorch:2\.\d+\.\d+-cuda12\.\d+-cudnn\d+-runtime$", worker, re.M)
    assert "pip install --no-cache-dir -c requirements.lock ." in worker
    assert re.search(r"^WORKDIR /srv/rdm$", worker, re.M)
    assert "git" in worker and '"prefect", "worker", "start"' in worker
    for service in services.values():
        for volume in service.get("volumes", []):
            if volume.startswith("."):
                assert (COMPOSE.parent / volume.split(":")[0]).exists(), volume


def test_docker_compose_accepts_the_file(tmp_path: Path) -> None:
    """Compose's own validation against the Compose Specification schema: with Compose v2 where
    installed, else with Debian's Compose v1 (installed by the test), which validates the same
    services but predates the top-level `name`, so it reads a copy without that line."""
    has_v2 = (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    )
    if has_v2:
        command = ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"]
    else:
        copy = COMPOSE.parent / f".compose-v1-{tmp_path.name}.yml"  # beside it: relative paths still resolve
        copy.write_text(re.sub(r"^name: .*\n", "", COMPOSE.read_text(), flags=re.M))
        command = [debian_tool("docker-compose", "docker-compose"), "-f", str(copy), "config", "--quiet"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, cwd=COMPOSE.parent)
    finally:
        if not has_v2:
            copy.unlink()
    assert result.returncode == 0, result.stderr


def test_work_pool_is_a_valid_process_base_job_template(services: dict[str, dict[str, Any]]) -> None:
    from prefect.server.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    template = json.loads((INFRA / "work-pool.json").read_text())
    properties = template["variables"]["properties"]
    placeholders = {
        name
        for value in template["job_configuration"].values()
        for name in PLACEHOLDER.findall(json.dumps(value))
    }
    assert placeholders and placeholders <= set(properties), placeholders - set(properties)
    default = ProcessWorker.get_default_base_job_template()
    assert set(template["job_configuration"]) == set(default["job_configuration"])
    WorkPoolCreate(name="rdm-gpu", type="process", base_job_template=template)  # Prefect's own check

    # the worker's environment is the one place: pool defaults would override a worker outside compose
    assert properties["env"]["default"] == {} and properties["working_dir"]["default"] is None
    command = services["prefect-worker"]["command"]
    assert option(command, "--pool") == "rdm-gpu" and option(command, "--type") == "process"
    assert option(command, "--base-job-template") == "/srv/rdm/infra/work-pool.json"


def test_prefect_yaml_declares_the_deployments_on_the_gpu_pool() -> None:
    from prefect.client.schemas.schedules import CronSchedule

    project = yaml.safe_load((INFRA / "prefect.yaml").read_text())
    pinned = re.search(r'"prefect==([\d.]+)"', (REPO_ROOT / "pyproject.toml").read_text())
    assert pinned and project["prefect-version"] == pinned[1]
    directory = {"directory": "{{ $RDM_PROJECT_DIR }}"}  # read from the worker's environment at run time
    assert project["pull"] == [{"prefect.deployments.steps.set_working_directory": directory}]
    deployments = {d["name"]: d for d in project["deployments"]}
    assert set(deployments) == DEPLOYMENTS
    for name, deployment in deployments.items():
        assert re.fullmatch(r"flows/\w+\.py:[A-Za-z_]\w*", deployment["entrypoint"]), name
        assert deployment["work_pool"]["name"] == "rdm-gpu"
        assert "env" not in deployment["work_pool"].get("job_variables", {}), "would replace the pool's env"
    refresh = deployments["refresh-style-collections"]
    assert refresh["entrypoint"] == "flows/refresh_styles.py:refresh_style_collections"
    assert refresh["concurrency_limit"] == 1
    [schedule] = refresh["schedules"]
    configured = load_config(REPO_ROOT / "params.yaml").refresh
    assert (schedule["cron"], schedule["timezone"]) == (configured.schedule, configured.timezone)
    CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])  # a cron Prefect accepts
    assert not any("schedules" in deployments[name] for name in DEPLOYMENTS - {refresh["name"]})

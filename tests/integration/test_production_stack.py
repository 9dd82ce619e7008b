"""The production stack's shape, run for real without Docker (infra/README.md): `rdm services start
--stack postgres` in a copy of this project starts PostgreSQL from this machine's binaries, the MLflow
server on it with its artifacts in an S3 bucket (moto's server standing in for MinIO), the Prefect
server on it, the process pool of infra/work-pool.json, the deployments of infra/prefect.yaml and a
`prefect worker`. The environment holds only what infra/README.md tells a user to set.

One stack serves the module: it trains once (through the worker), then takes a load of concurrent
runs, then a PostgreSQL restart."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from mlflow import MlflowClient

from rdm import postgres
from tests.support import clone_project, free_port, run_ok

pytestmark = pytest.mark.slow

ENOUGH_TO_RETRIEVE = {"style_images": 24}  # as tests/integration/test_operations.py
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


class Stack:
    def __init__(self, repo: Path, env: dict[str, str], ports: dict[str, int], s3: str, data: Path) -> None:
        self.repo, self.env, self.ports, self.s3, self.data = repo, env, ports, s3, data
        self.mlflow = f"http://127.0.0.1:{ports['mlflow']}"
        self.prefect = f"http://127.0.0.1:{ports['prefect']}/api"
        self.postgres = postgres.Postgres(data, ports["postgres"])

    def bucket_keys(self, bucket: str) -> list[str]:
        client = boto3.client("s3", endpoint_url=self.s3, **_boto_credentials())
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def sql(self, database: str, query: str) -> list[tuple]:
        import psycopg2

        connection = psycopg2.connect(self.postgres.url(database))
        try:
            with connection.cursor() as cursor:
                cursor.execute(query)
                return list(cursor.fetchall())
        finally:
            connection.close()

    def submit(self, deployment: str) -> str:
        """`prefect deployment run NAME` without waiting: the flow run's id."""
        return self.submit_with(deployment, None)

    def submit_with(self, deployment: str, parameters: dict | None) -> str:
        args = ["prefect", "deployment", "run", deployment]
        if parameters:
            args += ["--params", json.dumps(parameters)]
        out = run_ok(args, self.repo, self.env)
        found = re.search(r"UUID: ([0-9a-f-]{36})", out)
        assert found, out
        return found[1]

    def stage_outcomes(self) -> list[dict]:
        with urllib.request.urlopen(
            f"{self.prefect}/artifacts/train-rdm-stages/latest", timeout=10
        ) as response:
            return list(json.loads(json.load(response)["data"]))

    def wait(self, run_ids: list[str], timeout: float = 1500) -> dict[str, dict]:
        """Each flow run's final record, once all are finished."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = {run_id: self.api(f"/flow_runs/{run_id}") for run_id in run_ids}
            if all(run["state_type"] in TERMINAL for run in runs.values()):
                return runs
            time.sleep(3)
        raise AssertionError(f"flow runs not finished after {timeout} s")

    def api(self, path: str) -> dict:
        with urllib.request.urlopen(f"{self.prefect}{path}", timeout=10) as response:
            return dict(json.load(response))

    def collections(self) -> str:
        return run_ok(["rdm", "collections"], self.repo, self.env)


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_CREDENTIALS["AWS_DEFAULT_REGION"],
    }


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1, in place of MinIO, with the buckets minio-init makes."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, **_boto_credentials())
    for bucket in ("mlflow", "rdm-dvc"):
        client.create_bucket(Bucket=bucket)
    try:
        yield endpoint
    finally:
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")).close()
        server.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, s3: str) -> Iterator[Stack]:
    try:
        postgres._binary("initdb")
    except postgres.PostgresError:
        env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
        run_ok(["apt-get", "install", "-y", "-q", "postgresql"], Path.cwd(), env)
    tmp_path = tmp_path_factory.mktemp("stack")
    # outside tmp_path, whose parents are closed to the OS user postgres runs as under root
    data_root = Path(tempfile.mkdtemp(prefix="rdm-test-postgres-"))
    data_root.chmod(0o755)
    ports = {name: free_port() for name in ("prefect", "mlflow", "postgres")}
    services = {
        "prefect_port": ports["prefect"],
        "mlflow_port": ports["mlflow"],
        "postgres_port": ports["postgres"],
        "postgres_data": str(data_root / "data"),
        "artifacts": "s3://mlflow/artifacts",
        "startup_timeout": 300,
    }
    repo, env = clone_project(tmp_path, services=services, generate=ENOUGH_TO_RETRIEVE)
    run_ok(["dvc", "remote", "default", "s3"], repo, env)  # s3://rdm-dvc/store, as .dvc/config names it
    for name in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        env.pop(name, None)
    # what infra/README.md has a user set: S3's endpoint and credentials (DVC, boto3 and the MLflow
    # server's artifact store); the Prefect profile is pointed at the server by `services start`
    env = (
        env
        | S3_CREDENTIALS
        | {
            "AWS_ENDPOINT_URL": s3,
            "MLFLOW_S3_ENDPOINT_URL": s3,
            "PREFECT_HOME": str(tmp_path / "prefect-home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
    )
    try:
        out = run_ok(["rdm", "services", "start", "--stack", "postgres"], repo, env, timeout=600)
        assert "the deployments of infra/prefect.yaml and its automations created" in out
        client_env = env | {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports['mlflow']}"}
        yield Stack(repo, client_env, ports, s3, data_root / "data")
    finally:
        run_ok(["rdm", "services", "stop"], repo, env)
        shutil.rmtree(data_root, ignore_errors=True)
    assert not [name for name, port in ports.items() if listening(port)], "still listening after stop"


@pytest.fixture(scope="module")
def trained(stack: Stack) -> dict:
    """`prefect deployment run train-rdm/train-rdm`, run by the worker: the flow run's record."""
    started = time.perf_counter()
    [run] = stack.wait([stack.submit("train-rdm/train-rdm")]).values()
    assert run["state_type"] == "COMPLETED", run["state"]
    print(f"train-rdm through the worker: {time.perf_counter() - started:.0f} s")
    return run


def test_the_worker_trains_tracks_in_postgres_and_s3_and_registers(stack: Stack, trained: dict) -> None:
    assert trained["work_pool_name"] == "rdm-gpu"  # run by the pool's worker, not a served process
    client = MlflowClient(tracking_uri=stack.mlflow)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs and all(r.info.status == "FINISHED" for r in runs)
    assert stack.sql("mlflow", "select count(*) from runs")[0][0] == len(runs)  # the store is Postgres
    assert stack.sql("prefect", "select count(*) from flow_run where state_type = 'COMPLETED'")[0][0] >= 1
    artifacts = stack.bucket_keys("mlflow")
    assert any(key.endswith("MLmodel") for key in artifacts), artifacts[:20]  # the model, in the bucket
    assert stack.bucket_keys("rdm-dvc"), "the data versions were pushed to the S3 remote"

    # the registered model, from a fresh process, through the server only
    drawn = stack.repo / "drawn"
    sample = ["rdm", "sample", "--model", "models:/rdm@latest", "--prompt", "a red star", "--style", "neon"]
    run_ok([*sample, "-n", "1", "--steps", "2", "--out", str(drawn)], stack.repo, stack.env)
    [record] = [json.loads(line) for line in (drawn / "samples.jsonl").read_text().splitlines()]
    assert record["model"]["version"] == "1" and (drawn / record["file"]).is_file()


def test_four_batches_and_a_refresh_at_once_lose_nothing(stack: Stack, trained: dict) -> None:
    before = stack.collections()
    started = time.perf_counter()
    batches = [stack.submit("sample-styles/sample-styles") for _ in range(4)]
    refresh = stack.submit("refresh-style-collections/refresh-style-collections")
    runs = stack.wait([*batches, refresh])
    seconds = time.perf_counter() - started
    states = {run["name"]: run["state_type"] for run in runs.values()}
    print(f"4 sample-styles + 1 refresh at once through the worker: {seconds:.0f} s, states {states}")
    assert set(states.values()) == {"COMPLETED"}, states

    client = MlflowClient(tracking_uri=stack.mlflow)
    experiments = [e.experiment_id for e in client.search_experiments()]
    for run_id in batches:
        name = f"sample-styles {runs[run_id]['name']}-{run_id[:8]}"
        [tracked] = client.search_runs(experiments, f"attributes.run_name = '{name}'")
        assert tracked.info.status == "FINISHED" and len(tracked.data.metrics) > 10, name
    assert stack.collections() == before  # the refresh found nothing new and broke nothing


def test_the_stack_carries_on_after_postgres_restarts(stack: Stack, trained: dict) -> None:
    postgres.stop(stack.postgres)
    assert not listening(stack.ports["postgres"])
    postgres.start(stack.postgres)
    [run] = stack.wait([stack.submit("sample-styles/sample-styles")]).values()
    assert run["state_type"] == "COMPLETED", run["state"]
    client = MlflowClient(tracking_uri=stack.mlflow)
    name = f"sample-styles {run['name']}-{run['id'][:8]}"
    experiments = [e.experiment_id for e in client.search_experiments()]
    assert client.search_runs(experiments, f"attributes.run_name = '{name}'")


def test_a_training_outlives_the_mlflow_server_killed_and_restarted(stack: Stack, trained: dict) -> None:
    """The MLflow server is killed while the training logs to it and brought back by `rdm services
    start` (which restarts what has exited): the training finishes with every metric point logged."""
    client = MlflowClient(tracking_uri=stack.mlflow)
    experiments = [e.experiment_id for e in client.search_experiments()]
    steps, every = 60, 2
    changes = {"params": {"train.max_steps": steps, "train.log_every_n_steps": every}}
    flow_run = stack.submit_with("train-rdm/train-rdm", changes)
    before = losses_logged(client, experiments)
    training = None  # the run whose loss points grow (resumed from its checkpoint, the earlier one)
    while training is None and stack.api(f"/flow_runs/{flow_run}")["state_type"] not in TERMINAL:
        now = losses_logged(client, experiments)
        training = next((run for run, n in now.items() if n > before.get(run, 0)), None)
        time.sleep(0.5)
    assert training is not None, "the training never logged"
    mlflow_pid = json.loads((stack.repo / ".services" / "services.json").read_text())["mlflow"]
    os.killpg(mlflow_pid, signal.SIGKILL)
    while listening(stack.ports["mlflow"]):
        time.sleep(0.2)
    time.sleep(5)  # the training logs into the void meanwhile
    assert "restarted mlflow" in run_ok(["rdm", "services", "start"], stack.repo, stack.env)

    [run] = stack.wait([flow_run]).values()
    assert run["state_type"] == "COMPLETED", run["state"]
    history = MlflowClient(tracking_uri=stack.mlflow).get_metric_history(training, "train/loss")
    logged = sorted(m.step for m in history)
    assert len(logged) == len(set(logged)) == steps // every, logged  # one point every 2 steps, none lost


def losses_logged(client: MlflowClient, experiments: list[str]) -> dict[str, int]:
    """Run id -> how many train/loss points it holds."""
    runs = client.search_runs(experiments)
    return {
        r.info.run_id: len(client.get_metric_history(r.info.run_id, "train/loss"))
        for r in runs
        if "train/loss" in r.data.metrics
    }


def test_a_run_whose_worker_dies_is_marked_crashed_and_reruns_from_the_cache(
    stack: Stack, trained: dict
) -> None:
    """The worker and its flow run are killed mid-run, as when its machine is lost: the heartbeat
    automation (infra/automations.yaml) marks the run Crashed, `rdm services start` brings the worker
    back, and the rerun skips every stage DVC already has."""
    import psutil

    changes = {"params": {"train.max_steps": 80}}  # more than any earlier test: the training reruns
    flow_run = stack.submit_with("train-rdm/train-rdm", changes)
    while stack.api(f"/flow_runs/{flow_run}")["state_type"] != "RUNNING":
        time.sleep(0.5)
    time.sleep(5)  # into its first stages
    worker = psutil.Process(json.loads((stack.repo / ".services" / "services.json").read_text())["worker"])
    for process in [*worker.children(recursive=True), worker]:
        process.kill()
    started = time.perf_counter()
    [crashed] = stack.wait([flow_run], timeout=300).values()
    print(
        f"worker killed: the run marked {crashed['state_type']} after {time.perf_counter() - started:.0f} s"
    )
    assert crashed["state_type"] == "CRASHED", crashed["state"]

    assert "restarted worker" in run_ok(["rdm", "services", "start"], stack.repo, stack.env)
    [rerun] = stack.wait([stack.submit_with("train-rdm/train-rdm", changes)]).values()
    assert rerun["state_type"] == "COMPLETED", rerun["state"]
    outcomes = {row["stage"]: row["outcome"] for row in stack.stage_outcomes()}
    assert outcomes["prepare-training"] == outcomes["autoencoder"] == "skipped", outcomes
    assert outcomes["train"] == "ran", outcomes

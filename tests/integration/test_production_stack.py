"""The production stack's shape, run for real without Docker (infra/README.md): `rdm services start
--stack postgres` in a copy of this project starts PostgreSQL from this machine's binaries, the MLflow
server on it with its artifacts in an S3 bucket (moto's server standing in for MinIO), the Prefect
server on it, the process pool of infra/work-pool.json, the deployments of infra/prefect.yaml and a
`prefect worker`. The test's environment holds only what infra/README.md tells a user to set."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
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


class Stack:
    def __init__(self, repo: Path, env: dict[str, str], ports: dict[str, int], s3: str, data: Path) -> None:
        self.repo, self.env, self.ports, self.s3, self.data = repo, env, ports, s3, data
        self.mlflow = f"http://127.0.0.1:{ports['mlflow']}"
        self.prefect = f"http://127.0.0.1:{ports['prefect']}/api"

    def bucket_keys(self, bucket: str) -> list[str]:
        client = boto3.client("s3", endpoint_url=self.s3)
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def sql(self, database: str, query: str) -> list[tuple]:
        import psycopg2

        connection = psycopg2.connect(postgres.Postgres(self.data, self.ports["postgres"]).url(database))
        try:
            with connection.cursor() as cursor:
                cursor.execute(query)
                return list(cursor.fetchall())
        finally:
            connection.close()

    def flow_runs(self) -> list[dict]:
        request = urllib.request.Request(
            f"{self.prefect}/flow_runs/filter", data=b"{}", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return list(json.load(response))


@pytest.fixture
def stack(tmp_path: Path, s3_endpoint: str) -> Iterator[Stack]:
    try:
        postgres._binary("initdb")
    except postgres.PostgresError:
        run_ok(
            ["apt-get", "install", "-y", "-q", "postgresql"],
            tmp_path,
            os.environ | {"DEBIAN_FRONTEND": "noninteractive"},
        )
    # outside tmp_path, whose parents are closed to the OS user postgres runs as under root
    data_root = Path(tempfile.mkdtemp(prefix="rdm-test-postgres-"))
    data_root.chmod(0o755)
    ports = {name: free_port() for name in ("prefect", "mlflow", "postgres")}
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    for bucket in ("mlflow", "rdm-dvc"):  # what minio-init makes in the compose stack
        s3.create_bucket(Bucket=bucket)
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
    # what infra/README.md has a user set: the S3 endpoint (DVC and boto3; the MLflow server's own),
    # and the credentials s3_endpoint put in the environment; the Prefect profile is pointed by `start`
    env = env | {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    for name in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    try:
        out = run_ok(["rdm", "services", "start", "--stack", "postgres"], repo, env, timeout=600)
        assert "work pool rdm-gpu and the deployments of infra/prefect.yaml created" in out
        yield Stack(
            repo,
            env | {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports['mlflow']}"},
            ports,
            s3_endpoint,
            data_root / "data",
        )
    finally:
        run_ok(["rdm", "services", "stop"], repo, env)
        shutil.rmtree(data_root, ignore_errors=True)
    assert not [name for name, port in ports.items() if listening(port)], "still listening after stop"


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_the_worker_trains_tracks_in_postgres_and_s3_and_registers(stack: Stack) -> None:
    out = run_ok(
        ["prefect", "deployment", "run", "train-rdm/train-rdm", "--watch", "--watch-timeout", "1200"],
        stack.repo,
        stack.env,
        timeout=1300,
    )
    assert "Flow run finished successfully in 'Completed'" in out, out[-3000:]
    [run] = [r for r in stack.flow_runs() if r["name"] and r["state_type"] == "COMPLETED"]
    assert run["work_pool_name"] == "rdm-gpu"  # run by the pool's worker, not a served process

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
    run_ok(
        [*sample, "-n", "1", "--steps", "2", "--out", str(drawn)],
        stack.repo,
        stack.env,
    )
    [record] = [json.loads(line) for line in (drawn / "samples.jsonl").read_text().splitlines()]
    assert record["model"]["version"] == "1" and (drawn / record["file"]).is_file()

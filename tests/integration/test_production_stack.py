"""The production stack's shape, run for real without Docker (infra/README.md): `rdm services start
--stack postgres` in a copy of this project starts PostgreSQL from this machine's binaries, the MLflow
server on it with its artifacts in an S3 bucket (moto's server standing in for MinIO), the Prefect
server on it, the process pool of infra/work-pool.json, the deployments of infra/prefect.yaml and a
`prefect worker`; the style source is a prefix of another bucket. The environment holds only what
infra/README.md tells a user to set.

One stack serves the module, in order: it trains once (through the worker), takes a load of concurrent
runs while the refresh really changes a collection, a PostgreSQL restart, the MLflow server killed
during a training, the worker killed during a training, and a DDP training on two processes. The
trainings continue one checkpoint and one MLflow run, so each test checks the steps it added."""

from __future__ import annotations

import hashlib
import io
import itertools
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
from typing import Any

import boto3
import pytest
from mlflow import MlflowClient
from PIL import Image

from rdm import postgres
from rdm.config import load_config
from rdm.evaluation.split import classifier_ids
from rdm.retrieval.store import style_collection
from tests.support import clone_project, free_port, run_ok

pytestmark = pytest.mark.slow

ENOUGH_TO_RETRIEVE = {"style_images": 24}  # as tests/integration/test_operations.py
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
STYLES = "s3://rdm-styles/styles"  # prepare.sources.styles: the refresh reads the bucket


class Stack:
    def __init__(self, repo: Path, env: dict[str, str], ports: dict[str, int], s3: str, data: Path) -> None:
        self.repo, self.env, self.ports, self.s3, self.data = repo, env, ports, s3, data
        self.mlflow = f"http://127.0.0.1:{ports['mlflow']}"
        self.prefect = f"http://127.0.0.1:{ports['prefect']}/api"
        self.postgres = postgres.Postgres(data, ports["postgres"])

    def bucket_keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
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

    def logs(self, flow_run: str) -> str:
        """The flow run's log, as the Prefect UI shows it."""
        lines: list[str] = []
        while True:
            query = {"logs": {"flow_run_id": {"any_": [flow_run]}}, "limit": 200, "offset": len(lines)}
            request = urllib.request.Request(
                f"{self.prefect}/logs/filter",
                data=json.dumps(query).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                page = [entry["message"] for entry in json.load(response)]
            lines += page
            if len(page) < 200:
                return "\n".join(lines)

    def collections(self) -> dict[str, int]:
        """Collection name -> points, from `rdm collections`."""
        rows = run_ok(["rdm", "collections"], self.repo, self.env).splitlines()[1:]
        return {row.split()[0]: int(row.split()[2]) for row in rows if row.strip()}

    def s3_client(self) -> Any:
        return boto3.client("s3", endpoint_url=self.s3, **_boto_credentials())


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
    for bucket in ("mlflow", "rdm-dvc", "rdm-styles"):
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
    repo, env = clone_project(
        tmp_path, services=services, generate=ENOUGH_TO_RETRIEVE, prepare={"sources": {"styles": STYLES}}
    )
    run_ok(["dvc", "remote", "default", "s3"], repo, env)  # s3://rdm-dvc/store, as .dvc/config names it
    run_ok(["dvc", "repro", "generate"], repo, env)
    upload_styles(repo / "data" / "raw" / "styles", s3)
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


def upload_styles(folder: Path, endpoint: str) -> None:
    """The demo's style images as a bucket of a user's collection: s3://rdm-styles/styles/<style>/."""
    client = boto3.client("s3", endpoint_url=endpoint, **_boto_credentials())
    for path in sorted(folder.rglob("*.png")):
        client.put_object(
            Bucket="rdm-styles", Key=f"styles/{path.relative_to(folder)}", Body=path.read_bytes()
        )


def flipped(png: bytes) -> bytes:
    """Another valid image of the same style."""
    buffer = io.BytesIO()
    Image.open(io.BytesIO(png)).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(buffer, format="PNG")
    return buffer.getvalue()


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
    """Four batches read the collections while the refresh swaps in a grown one: every run completes,
    every batch is tracked, and the collection holds exactly the bucket's new images."""
    before = stack.collections()
    client, style = stack.s3_client(), "neon"
    keys = stack.bucket_keys("rdm-styles", f"styles/{style}/")
    new = [flipped(client.get_object(Bucket="rdm-styles", Key=key)["Body"].read()) for key in keys[:4]]
    for n, png in enumerate(new):
        client.put_object(Bucket="rdm-styles", Key=f"styles/{style}/added-{n}.png", Body=png)
    config = load_config(stack.repo / "params.yaml")
    ids = {hashlib.sha256(png).hexdigest() for png in new}
    kept_out = classifier_ids(ids, config.evaluate.classifier_share, config.evaluate.split_seed)

    started = time.perf_counter()
    batches = [stack.submit("sample-styles/sample-styles") for _ in range(4)]
    refresh = stack.submit("refresh-style-collections/refresh-style-collections")
    runs = stack.wait([*batches, refresh])
    seconds = time.perf_counter() - started
    states = {run["name"]: run["state_type"] for run in runs.values()}
    print(f"4 sample-styles + 1 refresh at once through the worker: {seconds:.0f} s, states {states}")
    failed = {
        run["name"]: stack.logs(i)[-4000:] for i, run in runs.items() if run["state_type"] != "COMPLETED"
    }
    for name, log in failed.items():
        print(f"--- {name} failed; its log ends:\n{log}")
    assert set(states.values()) == {"COMPLETED"}, (states, failed)

    client = MlflowClient(tracking_uri=stack.mlflow)
    experiments = [e.experiment_id for e in client.search_experiments()]
    for run_id in batches:
        name = f"sample-styles {runs[run_id]['name']}-{run_id[:8]}"
        [tracked] = client.search_runs(experiments, f"attributes.run_name = '{name}'")
        assert tracked.info.status == "FINISHED" and len(tracked.data.metrics) > 10, name
    grown = style_collection(style)
    expected = before | {grown: before[grown] + len(ids - kept_out)}
    assert stack.collections() == expected  # the new images, but the classifier's share; no other change


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


def test_a_run_whose_worker_dies_is_marked_crashed_and_reruns_from_the_cache_and_checkpoint(
    stack: Stack, trained: dict
) -> None:
    """The worker and its flow run are killed mid-training, as when its machine is lost: the heartbeat
    automation (infra/automations.yaml) marks the run Crashed, `rdm services start` brings the worker
    back, and the rerun skips every stage DVC already has and resumes from the killed run's checkpoint."""
    import psutil

    client = MlflowClient(tracking_uri=stack.mlflow)
    experiments = [e.experiment_id for e in client.search_experiments()]
    done = last_steps(client, experiments)
    changes = {"params": {"train.max_steps": 120, "train.checkpoint_every_n_steps": 10}}
    flow_run = stack.submit_with("train-rdm/train-rdm", changes)
    while max(last_steps(client, experiments).values()) < max(done.values()) + 26:  # a checkpoint at +20
        assert stack.api(f"/flow_runs/{flow_run}")["state_type"] not in TERMINAL, "finished before the kill"
        time.sleep(0.5)
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
    report = json.loads((stack.repo / "reports" / "train.json").read_text())
    assert max(done.values()) + 20 <= report["resumed_from_step"] < 120, report  # the killed run's


def test_a_ddp_training_through_the_worker_keeps_every_metric_point(stack: Stack, trained: dict) -> None:
    """Two CPU processes (Lightning DDP, gloo) train through the worker; rank 0 alone logs to the
    server, and every loss point of the steps they add is there once."""
    client = MlflowClient(tracking_uri=stack.mlflow)
    experiments = [e.experiment_id for e in client.search_experiments()]
    training = json.loads((stack.repo / "models" / "checkpoints" / "mlflow_run.json").read_text())["run_id"]
    start = last_steps(client, experiments)[training]  # where the earlier trainings of this run stopped
    changes = {"params": {"train.max_steps": 160, "train.accelerator": "cpu", "train.devices": 2}}
    flow_run = stack.submit_with("train-rdm/train-rdm", changes)
    [run] = stack.wait([flow_run]).values()
    assert run["state_type"] == "COMPLETED", run["state"]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in stack.logs(flow_run)
    every = load_config(stack.repo / "params.yaml").train.log_every_n_steps
    added = sorted(m.step for m in client.get_metric_history(training, "train/loss") if m.step > start)
    # one point every `every` steps of the 40 added: none lost, none twice
    assert len(added) == 40 // every and all(b - a == every for a, b in itertools.pairwise(added)), added


def last_steps(client: MlflowClient, experiments: list[str]) -> dict[str, int]:
    """Run id -> the last step its train/loss reached."""
    return {
        r.info.run_id: max(m.step for m in client.get_metric_history(r.info.run_id, "train/loss"))
        for r in client.search_runs(experiments)
        if "train/loss" in r.data.metrics
    }

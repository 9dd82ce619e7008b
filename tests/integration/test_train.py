"""Training on a tiny pipeline: tracked in MLflow, registered, loadable in a fresh process, resumable
after a kill into the same run, runnable as 2-process DDP on CPUs, and clear about stale inputs."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from mlflow import MlflowClient

from rdm.config import Config, load_config
from rdm.errors import UserError
from rdm.stages import train
from rdm.stages.train import TrainError
from tests.support import rdm_env, run_pipeline, tracking_client, work_in, write_params

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Config]:
    """generate -> prepare -> clip -> embed -> neighbors -> autoencoder, tiny, in a temp folder."""
    root = tmp_path_factory.mktemp("training")
    with contextlib.chdir(root):
        config = load_config(write_params(root))
        run_pipeline(config)
    return root, config


@pytest.fixture
def in_pipeline(pipeline: tuple[Path, Config], monkeypatch: pytest.MonkeyPatch) -> Config:
    work_in(pipeline[0], monkeypatch)
    return pipeline[1]


def with_train(config: Config, **changes: object) -> Config:
    return config.model_copy(update={"train": config.train.model_copy(update=changes)})


def rdm(root: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        ["rdm", *args], cwd=root, env=rdm_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_training_is_tracked_registered_and_loads_in_a_fresh_process(in_pipeline: Config) -> None:
    config = with_train(in_pipeline, checkpoints="models/ckpt-tracked", out="models/rdm-tracked")
    report = train.run(config, progress=False)
    assert report["steps"] == 12 and report["registered"]["alias_uri"] == "models:/rdm@latest"
    assert "MLFLOW_TRACKING_URI" not in os.environ  # MLflow exports it; the training puts it back

    client = tracking_client(Path.cwd())
    run = client.get_run(json.loads(Path("models/ckpt-tracked/mlflow_run.json").read_text())["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.k"] == "4" and run.data.params["autoencoder.image_size"] == "32"
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert len(losses) >= 2 and all(0 < m.value < 10 for m in losses)
    assert {"val/loss", "train/lr", "train/samples"} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"images", "samples"} <= artifacts  # the stepped sample grids and the final one
    grids = client.list_artifacts(run.info.run_id, "images")
    assert any(a.path.endswith(".png") for a in grids)
    assert client.get_registered_model("rdm").name == "rdm"

    code = (
        "import mlflow, numpy as np; mlflow.set_tracking_uri('sqlite:///mlflow.db'); "
        "m = mlflow.pyfunc.load_model('models:/rdm@latest'); "
        "x = np.random.default_rng(0).normal(size=(3, 5, 128)).astype('float32'); "
        "y = m.predict(x / np.linalg.norm(x, axis=-1, keepdims=True), params={'steps': 3}); "
        "print('SHAPE', y.shape, y.dtype)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SHAPE (3, 32, 32, 3) uint8" in done.stdout


def test_a_killed_training_resumes_its_steps_and_its_mlflow_run(pipeline: tuple[Path, Config]) -> None:
    root, _ = pipeline
    long = write_params(root, "long.yaml", train={"max_steps": 400, "checkpoints": "models/ckpt-kill"})
    process = rdm(root, "--params", str(long), "train")
    checkpoint = root / "models" / "ckpt-kill" / "last.ckpt"
    killed_at = 0
    deadline = time.monotonic() + 300
    while killed_at < 8 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.5)
        with contextlib.suppress(Exception):  # a checkpoint being written is not readable yet
            killed_at = torch.load(checkpoint, map_location="cpu", weights_only=True)["global_step"]
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert killed_at >= 8, "no checkpoint was written before the deadline"
    run_id = json.loads((root / "models" / "ckpt-kill" / "mlflow_run.json").read_text())["run_id"]

    short = write_params(
        root, "short.yaml", train={"max_steps": killed_at + 8, "checkpoints": "models/ckpt-kill"}
    )
    resumed = rdm(root, "--params", str(short), "train")
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output[-3000:]
    report = json.loads((root / "reports" / "train.json").read_text())
    assert report["resumed_from_step"] >= killed_at and report["steps"] == killed_at + 8

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    assert json.loads((root / "models" / "ckpt-kill" / "mlflow_run.json").read_text())["run_id"] == run_id
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert min(steps) < killed_at < max(steps) and max(steps) >= killed_at + 6
    assert client.get_run(run_id).info.status == "FINISHED"


def test_two_process_ddp_on_cpus_trains(pipeline: tuple[Path, Config]) -> None:
    root, _ = pipeline
    params = write_params(
        root,
        "ddp.yaml",
        train={"accelerator": "cpu", "devices": 2, "max_steps": 6, "checkpoints": "models/ckpt-ddp"},
    )
    process = rdm(root, "--params", str(params), "train")
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in output
    assert json.loads((root / "reports" / "train.json").read_text())["steps"] == 6


def test_stale_or_missing_inputs_name_the_stage_to_run(in_pipeline: Config, tmp_path: Path) -> None:
    stale = tmp_path / "stale.parquet"
    table = pq.read_table(in_pipeline.neighbors.out)
    meta = json.loads(table.schema.metadata[b"rdm"]) | {"clip_fingerprint": "0123456789abcdef"}
    pq.write_table(table.replace_schema_metadata({"rdm": json.dumps(meta)}), stale)
    other_clip = in_pipeline.model_copy(
        update={"neighbors": in_pipeline.neighbors.model_copy(update={"out": str(stale)})}
    )
    with pytest.raises(TrainError, match=r"CLIP weights 0123456789abcdef.*dvc repro neighbors"):
        train.run(other_clip, progress=False)

    more_k = in_pipeline.model_copy(
        update={
            "neighbors": in_pipeline.neighbors.model_copy(update={"k": 6}),
            "train": in_pipeline.train.model_copy(update={"k": 6}),
        }
    )
    with pytest.raises(TrainError, match=r"holds 4 neighbours per image but train\.k is 6"):
        train.run(more_k, progress=False)

    missing = in_pipeline.model_copy(
        update={"neighbors": in_pipeline.neighbors.model_copy(update={"out": str(tmp_path / "none.parquet")})}
    )
    with pytest.raises(UserError, match=r"none\.parquet: no neighbours; run `dvc repro neighbors`"):
        train.run(missing, progress=False)

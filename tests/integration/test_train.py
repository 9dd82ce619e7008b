"""Training on a tiny pipeline: tracked in MLflow, registered, loadable in a fresh process, resumable
after a kill into the same run, runnable as 2-process DDP on CPUs, and clear about stale inputs. The
same model content is registered once (reruns, copies); a resumed training whose run is gone opens a
new run with the params, data versions and commit."""

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from mlflow import MlflowClient
from safetensors.torch import load_file, save_file

from rdm.artifacts.model import content_digest, read_card
from rdm.config import Config, load_config
from rdm.errors import UserError
from rdm.stages import train
from rdm.stages.train import TrainError
from rdm.tracking.registry import DIGEST_TAG, register_model, registered_version
from rdm.tracking.runs import RUN_FILE
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


ONCE = "rdm-once"
"""The registered model of the `trained` fixture, apart from the other tests' `rdm`."""
NEIGHBORS_MD5 = "0123456789abcdef0123456789abcdef.dir"


@pytest.fixture(scope="module")
def trained(pipeline: tuple[Path, Config]) -> tuple[Config, dict[str, Any]]:
    """One tracked training registered as `rdm-once`, run in a git checkout with a dvc.lock (so that
    its runs get a commit and data versions); returns its config and report."""
    root, config = pipeline
    with contextlib.chdir(root), pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
        subprocess.run([*git, "init", "-q"], check=True)
        subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "test"], check=True)
        outs = [{"path": "data/neighbors", "hash": "md5", "md5": NEIGHBORS_MD5}]
        Path("dvc.lock").write_text(yaml.safe_dump({"stages": {"neighbors": {"outs": outs}}}))
        tracking = config.tracking.model_copy(update={"registered_model": ONCE})
        once = with_train(config, checkpoints="models/ckpt-once", out="models/rdm-once")
        once = once.model_copy(update={"tracking": tracking})
        report = train.run(once, progress=False)
    return once, report


def versions_of(name: str) -> set[str]:
    return {str(v.version) for v in tracking_client(Path.cwd()).search_model_versions(f"name='{name}'")}


def run_of(checkpoints: str) -> str:
    return str(json.loads((Path(checkpoints) / RUN_FILE).read_text())["run_id"])


def resume_in(trained: tuple[Config, dict[str, Any]], checkpoints: str, run_file: dict[str, str]) -> Config:
    """The `trained` training set to resume from a copy of its checkpoints in `checkpoints`, whose run
    file says `run_file`."""
    config = with_train(trained[0], checkpoints=checkpoints, out=checkpoints.replace("ckpt", "rdm"))
    shutil.copytree(trained[0].train.checkpoints, checkpoints)
    (Path(checkpoints) / RUN_FILE).write_text(json.dumps(run_file))
    return config


def assert_has_its_inputs(run_id: str, config: Config) -> None:
    """The run holds the training's params, the data versions of dvc.lock and the commit."""
    run = tracking_client(Path.cwd()).get_run(run_id)
    assert run.data.params["train.max_steps"] == str(config.train.max_steps)
    assert run.data.params["train.checkpoints"] == config.train.checkpoints
    assert run.data.tags["data.neighbors.md5"] == NEIGHBORS_MD5
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout
    assert run.data.tags["mlflow.source.git.commit"] == head.strip()
    assert run.info.status == "FINISHED"


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

    # another checkpoint interval too: Lightning's checkpoint callback then restores no state of its own;
    # one that does not divide the last step, which must be checkpointed all the same
    end = killed_at + 8 + (1 if (killed_at + 8) % 3 == 0 else 0)
    resumed_settings = {
        "max_steps": end,
        "checkpoint_every_n_steps": 3,
        "checkpoints": "models/ckpt-kill",
    }
    short = write_params(root, "short.yaml", train=resumed_settings)
    resumed = rdm(root, "--params", str(short), "train")
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output[-3000:]
    report = json.loads((root / "reports" / "train.json").read_text())
    assert report["resumed_from_step"] >= killed_at and report["steps"] == end
    assert sorted(p.name for p in checkpoint.parent.glob("*.ckpt")) == ["last.ckpt"]  # no last-v1.ckpt
    last = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert last["global_step"] == end
    # saved before the EMA weights were copied over the trained ones, which a rerun resumes from
    trained, averaged = last["current_model_state"], last["state_dict"]
    assert any(not torch.equal(trained[name], averaged[name]) for name in averaged)

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    assert json.loads((root / "models" / "ckpt-kill" / "mlflow_run.json").read_text())["run_id"] == run_id
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert min(steps) < killed_at < max(steps) and max(steps) >= end - 2
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


def test_a_rerun_of_a_finished_training_keeps_its_registered_version(
    trained: tuple[Config, dict[str, Any]], in_pipeline: Config
) -> None:
    config, first = trained
    before = versions_of(ONCE)
    again = train.run(config, progress=False)
    assert again["resumed_from_step"] == config.train.max_steps  # nothing left to train
    assert again["registered"]["version"] == first["registered"]["version"]
    assert again["registered"]["run_id"] == first["registered"]["run_id"] == run_of(config.train.checkpoints)
    assert versions_of(ONCE) == before
    assert tracking_client(Path.cwd()).get_run(run_of(config.train.checkpoints)).info.status == "FINISHED"


def test_the_same_model_content_is_registered_once(
    trained: tuple[Config, dict[str, Any]], in_pipeline: Config, tmp_path: Path
) -> None:
    config, first = trained
    folder, version = Path(config.train.out), first["registered"]["version"]
    card = read_card(folder)
    champion = config.tracking.model_copy(update={"alias": "champion"})
    before = versions_of(ONCE)
    assert register_model(champion, str(card.run_id), folder, card)["version"] == version

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    moved = dataclasses.replace(card, run_id="a-run-of-another-store", versions={})
    (copy / "rdm.json").write_text(json.dumps(dataclasses.asdict(moved)))
    assert registered_version(with_train(config, out=str(copy)))["version"] == version
    assert versions_of(ONCE) == before

    changed = tmp_path / "changed"
    shutil.copytree(folder, changed)
    weights = changed / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    next(iter(tensors.values())).view(-1)[0] += 1e-3
    save_file(tensors, weights, metadata={"format": "pt"})
    new = register_model(champion, str(card.run_id), changed, card)
    assert new["version"] not in before and versions_of(ONCE) == before | {new["version"]}
    client = tracking_client(Path.cwd())
    assert client.get_model_version(ONCE, new["version"]).tags[DIGEST_TAG] == content_digest(changed)
    assert str(client.get_model_version_by_alias(ONCE, "champion").version) == new["version"]
    assert register_model(champion, str(card.run_id), changed, card)["version"] == new["version"]

    assert register_model(champion, str(card.run_id), folder, card)["version"] == version
    assert str(client.get_model_version_by_alias(ONCE, "champion").version) == version  # moved back


def test_a_resumed_training_whose_run_was_deleted_opens_a_new_run_with_its_inputs(
    trained: tuple[Config, dict[str, Any]], in_pipeline: Config
) -> None:
    client = tracking_client(Path.cwd())
    experiment = client.get_experiment_by_name(in_pipeline.tracking.experiment)
    assert experiment is not None
    deleted = client.create_run(experiment.experiment_id).info.run_id
    client.delete_run(deleted)
    uri = f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    config = resume_in(trained, "models/ckpt-deleted", {"tracking_uri": uri, "run_id": deleted})
    finished_at = trained[0].train.max_steps
    config = with_train(config, max_steps=finished_at + 4)
    report = train.run(config, progress=False)
    assert report["resumed_from_step"] == finished_at and report["steps"] == finished_at + 4

    run_id = run_of(config.train.checkpoints)
    assert run_id != deleted
    assert_has_its_inputs(run_id, config)
    assert report["registered"]["run_id"] == run_id == read_card(Path(config.train.out)).run_id
    assert report["registered"]["version"] != trained[1]["registered"]["version"]  # trained on: new content
    assert client.get_model_version(ONCE, report["registered"]["version"]).run_id == run_id


def test_a_resumed_training_tracked_elsewhere_opens_a_new_run_and_finds_its_version(
    trained: tuple[Config, dict[str, Any]], in_pipeline: Config, tmp_path: Path
) -> None:
    first_run = trained[1]["registered"]["run_id"]
    elsewhere = {"tracking_uri": f"sqlite:///{tmp_path / 'other.db'}", "run_id": first_run}
    config = resume_in(trained, "models/ckpt-elsewhere", elsewhere)
    before = versions_of(ONCE)
    report = train.run(config, progress=False)
    assert report["resumed_from_step"] == config.train.max_steps

    run_id = run_of(config.train.checkpoints)
    assert run_id != first_run
    assert_has_its_inputs(run_id, config)
    assert report["registered"]["version"] == trained[1]["registered"]["version"]  # the same content
    assert versions_of(ONCE) == before

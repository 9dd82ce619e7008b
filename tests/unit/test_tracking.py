"""Where runs are tracked: the configured store, the environment's override, relative paths pinned;
which run a training logs into and whether it is new; the data versions a run records; the digest
that keeps a model's content from being registered twice."""

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from rdm.artifacts.model import ModelCard, ModelError, content_digest, read_card, save_model
from rdm.config import TrackingParams
from rdm.tracking.runs import RUN_FILE, data_versions, open_logger, tracking_at, tracking_uri


def test_a_relative_sqlite_store_is_pinned_to_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking_uri(TrackingParams()) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert tracking_uri(TrackingParams(tracking_uri="sqlite:////srv/m.db")) == "sqlite:////srv/m.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(TrackingParams()) == "http://127.0.0.1:5000"


def test_tracking_at_leaves_no_store_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    with tracking_at(f"sqlite:///{tmp_path / 'a.db'}"):
        assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path / 'a.db'}"
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with tracking_at(f"sqlite:///{tmp_path / 'b.db'}"):
        pass
    assert "MLFLOW_TRACKING_URI" not in os.environ


def test_data_versions_name_the_md5_of_folder_and_file_outputs(tmp_path: Path) -> None:
    lock = tmp_path / "dvc.lock"
    outs = {
        "prepare": [
            {"path": "data/prepared/train.parquet", "hash": "md5", "md5": "a1"},
            {"path": "data/prepared/images/train", "hash": "md5", "md5": "b2.dir"},
            {"path": "reports/prepare.json", "hash": "md5", "md5": "c3"},  # not a training input
        ],
        "neighbors": [{"path": "data/neighbors/", "hash": "md5", "md5": "d4.dir"}],
        "embed": [{"path": "data/embeddings/d_train"}],  # not recorded yet
    }
    lock.write_text(yaml.safe_dump({"schema": "2.0", "stages": {k: {"outs": v} for k, v in outs.items()}}))
    assert data_versions(lock) == {
        "data.prepared.train.md5": "a1",
        "data.prepared.images.train.md5": "b2.dir",
        "data.neighbors.md5": "d4.dir",
    }
    assert data_versions(tmp_path / "none.lock") == {}


class Part:
    """A diffusers part as `save_model` sees it: tensors and a config, saved like `save_pretrained`."""

    def __init__(self, tensors: dict[str, torch.Tensor], config: dict) -> None:
        self.tensors, self.config = tensors, config

    def save_pretrained(self, folder: Path) -> None:
        folder.mkdir(parents=True)
        save_file(self.tensors, folder / "diffusion_pytorch_model.safetensors", metadata={"format": "pt"})
        (folder / "config.json").write_text(json.dumps(self.config, indent=2))


def tiny_model(folder: Path, run_id: str = "run-1", loaded_from: str = "models/autoencoder") -> Path:
    generator = torch.Generator().manual_seed(0)
    unet = Part({"w": torch.randn(4, 3, generator=generator), "b": torch.zeros(4)}, {"layers": 1})
    vae = Part({"w": torch.randn(2, 2, generator=generator)}, {"_name_or_path": loaded_from, "ch": 8})
    schedule = Part({}, {"num_train_timesteps": 1000})
    card = ModelCard(4, 8, (4, 8, 8), 32, 0.5, "clip", "0123", 12, {"data.neighbors.md5": "x.dir"}, run_id)
    save_model(folder, unet, vae, schedule, card)
    return folder


def test_the_content_digest_follows_what_the_model_draws_not_the_run_that_made_it(tmp_path: Path) -> None:
    digest = content_digest(tiny_model(tmp_path / "a"))
    assert digest == content_digest(tiny_model(tmp_path / "again"))  # safetensors are byte-stable

    copy = tiny_model(tmp_path / "copy", loaded_from="elsewhere/autoencoder")
    card = replace(read_card(copy), run_id="run-2", versions={"mlflow.source.git.commit": "abc"})
    (copy / "rdm.json").write_text(json.dumps(card.__dict__))
    (copy / "samples.png").write_bytes(b"a grid")
    assert content_digest(copy) == digest

    changed = tiny_model(tmp_path / "changed")
    weights = changed / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    tensors["w"][0, 0] += 1e-3
    save_file(tensors, weights, metadata={"format": "pt"})
    assert content_digest(changed) != digest

    other_k = tiny_model(tmp_path / "other-k")
    (other_k / "rdm.json").write_text(json.dumps(replace(read_card(other_k), k=8).__dict__))
    assert content_digest(other_k) != digest

    shutil.rmtree(other_k / "scheduler")
    with pytest.raises(ModelError, match=r"other-k: no scheduler/ beside rdm\.json"):
        content_digest(other_k)


def test_open_logger_says_when_the_run_is_new(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params, checkpoints = TrackingParams(tracking_uri=uri, experiment="t"), tmp_path / "ckpt"

    def opened(resume: bool) -> tuple[str, bool]:
        logger, created = open_logger(params, checkpoints, "train-rdm", resume=resume)
        assert json.loads((checkpoints / RUN_FILE).read_text())["run_id"] == logger.run_id
        return logger.run_id, created

    first, created = opened(resume=False)
    assert created
    assert opened(resume=True) == (first, False)
    restarted, created = opened(resume=False)  # a training started over gets a new run
    assert created and restarted != first

    MlflowClient(uri).delete_run(restarted)
    replacement, created = opened(resume=True)
    assert created and replacement not in (first, restarted)

    other_store = {"tracking_uri": f"sqlite:///{tmp_path / 'other.db'}", "run_id": replacement}
    (checkpoints / RUN_FILE).write_text(json.dumps(other_store))
    elsewhere, created = opened(resume=True)
    assert created and elsewhere != replacement

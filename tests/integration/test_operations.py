"""Day-to-day operations with the real servers: `rdm services start` (what `make services` runs)
brings up a Prefect server, an MLflow server and the three served deployments in a copy of this
project; `prefect deployment run train-rdm/train-rdm` trains on the tiny config, the run and the
registered model land in MLflow, a second run skips every stage, a changed param reruns only the
stages that read it, the refresh deployment reports to MLflow, and both UIs show it all in headless
Chromium (screenshots in test-output/screenshots/)."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from rdm.artifacts.samples import FLOORS
from tests.browser import rendered_text, screenshot
from tests.support import clone_project, free_port, run_ok

pytestmark = pytest.mark.slow

ENOUGH_TO_RETRIEVE = {"style_images": 24}
"""TINY's 6 images per style keep too few retrievable for sample.k (5) once the style classifier's share
(evaluate.classifier_share) is left out of every collection; 24 leave 12 or more."""


class Services:
    def __init__(self, repo: Path, env: dict[str, str], prefect: str, mlflow: str) -> None:
        self.repo, self.env, self.prefect, self.mlflow = repo, env, prefect, mlflow

    def deploy(self, name: str, parameters: dict | None = None) -> float:
        """`prefect deployment run NAME --watch` as a user types it; returns its wall time."""
        args = ["prefect", "deployment", "run", name, "--watch", "--watch-timeout", "900"]
        if parameters:
            args += ["--params", json.dumps(parameters)]
        started = time.perf_counter()
        out = run_ok(args, self.repo, self.env)
        assert "Flow run finished successfully in 'Completed'" in out, out[-3000:]
        return time.perf_counter() - started

    def latest_artifact(self, key: str) -> list[dict]:
        with urllib.request.urlopen(f"{self.prefect}/api/artifacts/{key}/latest", timeout=10) as response:
            return list(json.loads(json.load(response)["data"]))

    def stage_outcomes(self) -> dict[str, str]:
        return {row["stage"]: row["outcome"] for row in self.latest_artifact("train-rdm-stages")}


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    prefect_port, mlflow_port = free_port(), free_port()
    repo, env = clone_project(
        tmp_path,
        services={"prefect_port": prefect_port, "mlflow_port": mlflow_port, "startup_timeout": 300},
        generate=ENOUGH_TO_RETRIEVE,
    )
    # the "user's" Prefect profile, which `services start` points at its server
    env = env | {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    run_ok(["rdm", "services", "start"], repo, env, timeout=600)
    try:
        yield Services(repo, env, f"http://127.0.0.1:{prefect_port}", f"http://127.0.0.1:{mlflow_port}")
    finally:
        run_ok(["rdm", "services", "stop"], repo, env)
    for port in (prefect_port, mlflow_port):
        with pytest.raises(OSError):  # nothing listens any more
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=3)


def test_deployments_train_track_register_skip_and_show_in_the_uis(services: Services) -> None:
    first = services.deploy("train-rdm/train-rdm")
    outcomes = services.stage_outcomes()
    assert set(outcomes) >= {
        "generate",
        "prepare-training",
        "prepare-styles",
        "clip",
        "embed-training",
        "embed-styles",
        "autoencoder",
        "reconstruct",
        "train",
        "sample",
        "evaluate",
    }
    assert set(outcomes.values()) == {"ran"}, outcomes

    client = MlflowClient(services.mlflow)
    experiment = client.get_experiment_by_name("rdm")
    assert experiment is not None
    (training,) = client.search_runs([experiment.experiment_id], "attributes.run_name = 'train-rdm'")
    assert "train/loss" in training.data.metrics and "eval/classifier.holdout_top1" in training.data.metrics
    versions = client.search_model_versions("name = 'rdm'")
    assert [v.run_id for v in versions] == [training.info.run_id]
    pushed = [p for p in (services.repo.parent / "remote").rglob("*") if p.is_file()]
    assert len(pushed) > 100, "the data was pushed to the DVC remote"

    second = services.deploy("train-rdm/train-rdm")
    assert set(services.stage_outcomes().values()) == {"skipped"}
    assert second < 60, f"a run with nothing to do took {second:.0f} s"

    services.deploy("train-rdm/train-rdm", {"params": {"evaluate.classifier.epochs": 150}})
    changed = services.stage_outcomes()
    assert {s for s, outcome in changed.items() if outcome == "ran"} == {"evaluate"}, changed
    assert "epochs: 150" in (services.repo / "params.yaml").read_text()

    services.deploy(
        "sample-styles/sample-styles",
        {"model": "models:/rdm@latest", "styles": ["neon", "mosaic"], "per_style": 2},
    )
    (batch,) = (services.repo / "data" / "batches").iterdir()
    records = (batch / "samples" / "samples.jsonl").read_text().splitlines()
    sampling = yaml.safe_load((services.repo / "params.yaml").read_text())["sample"]
    per_style = dict.fromkeys(sampling["methods"], 2) | dict.fromkeys(FLOORS, sampling["floor_per_style"])
    assert len(records) == 2 * sum(per_style.values())  # styles x (methods x 2 + floors x floor_per_style)
    assert {json.loads(r)["style"] for r in records} == {"neon", "mosaic"}
    assert {json.loads(r)["method"] for r in records} == {m for m, n in per_style.items() if n}
    assert (batch / "evaluate.json").is_file()

    services.deploy("refresh-style-collections/refresh-style-collections")
    (refresh,) = client.search_runs(
        [experiment.experiment_id], "attributes.run_name = 'refresh-style-collections'"
    )
    assert refresh.data.metrics["refresh/added"] == 0 and refresh.data.metrics["refresh/removed"] == 0
    assert any(key.endswith("/points") and value > 0 for key, value in refresh.data.metrics.items())
    print(f"train-rdm: first run {first:.0f} s, second (nothing changed) {second:.0f} s")

    run_page = (
        f"{services.mlflow}/#/experiments/{experiment.experiment_id}/runs/{training.info.run_id}"
        "/artifacts/samples/samples.png"
    )
    assert screenshot(run_page, "mlflow-train-run-samples").stat().st_size > 20_000
    assert "samples.png" in rendered_text(run_page)
    deployments_page = f"{services.prefect}/deployments"
    assert screenshot(deployments_page, "prefect-deployments").stat().st_size > 20_000
    page = rendered_text(deployments_page)
    for name in ("train-rdm", "sample-styles", "refresh-style-collections"):
        assert name in page
    assert "every day" in page  # the refresh schedule, 0 3 * * *
    assert screenshot(f"{services.prefect}/runs", "prefect-flow-runs").stat().st_size > 20_000

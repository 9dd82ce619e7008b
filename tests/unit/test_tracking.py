"""Where runs are tracked: the configured store, the environment's override, relative paths pinned."""

import os
from pathlib import Path

import pytest

from rdm.config import TrackingParams
from rdm.tracking.runs import tracking_at, tracking_uri


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

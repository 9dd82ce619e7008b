"""Shared fixtures: the real config shrunk to test size, and files of every kind ingestion meets."""

from __future__ import annotations

import os
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

# Keep tools' state out of the user's home and off the network, before they are imported.
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="rdm-prefect-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import yaml

from rdm.config import Config, config_from_dict
from tests.support import REPO_ROOT, TINY, deep_update, free_port, messy_files


@pytest.fixture
def tiny_config() -> Config:
    """The project's own params.yaml with the demo shrunk to a few dozen images and training steps."""
    return config_from_dict(deep_update(yaml.safe_load((REPO_ROOT / "params.yaml").read_text()), TINY))


@pytest.fixture(scope="session")
def messy_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("messy") / "styles"
    for rel, (data, _) in messy_files().items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real S3 API (moto's server) on 127.0.0.1, with test credentials in the environment."""
    from moto.server import ThreadedMotoServer

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # moto's backends are global to the process: start from, and leave behind, no buckets
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")).close()
    try:
        yield endpoint
    finally:
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")).close()
        server.stop()

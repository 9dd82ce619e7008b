"""`dvc push` and `dvc pull` round trips of a `dvc add`ed folder through a local directory remote and an
S3 remote on moto's server (endpoint from `.dvc/config.local`, or from AWS_ENDPOINT_URL alone): the
remote holds one object per file plus the `.dir` manifest, and the pulled bytes equal the originals."""

import shutil
import sys
from pathlib import Path

import boto3
import pytest

from tests.support import dvc_env, run_ok

pytestmark = pytest.mark.slow

DVC = str(Path(sys.executable).parent / "dvc")
BUCKET = "rdm-dvc"
FILES = {
    "a.txt": b"alpha\n" * 200,
    "b.bin": bytes(range(256)) * 8,
    "nested/c.csv": b"x,y\n" + b"1,2\n" * 300,
    "nested/deeper/d.json": b'{"k": "v"}\n',
}


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A fresh git + DVC project with `data/` (FILES) added to DVC."""
    repo = tmp_path / "repo"
    repo.mkdir()
    env = dvc_env(tmp_path) | {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        env.pop(name, None)
    run_ok(["git", "init", "-q"], repo, env)
    run_ok([DVC, "init", "-q"], repo, env)
    for rel, data in FILES.items():
        (repo / "data" / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / "data" / rel).write_bytes(data)
    run_ok([DVC, "add", "data"], repo, env)
    return repo, env


def s3_client(endpoint: str):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def stored_objects(store: Path | str) -> list[str]:
    """The files under a local remote, or the keys under `store/` in BUCKET when `store` is an endpoint."""
    if isinstance(store, Path):
        return [p.as_posix() for p in store.rglob("*") if p.is_file()]
    pages = s3_client(store).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="store/")
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


@pytest.mark.parametrize("kind", ["local", "s3-config-local", "s3-env-endpoint"])
def test_push_then_pull_restores_identical_bytes(
    kind: str, project: tuple[Path, dict[str, str]], request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    repo, env = project
    if kind == "local":
        store: Path | str = tmp_path / "store"
        run_ok([DVC, "remote", "add", "store", str(store)], repo, env)
    else:
        endpoint = store = request.getfixturevalue("s3_endpoint")
        s3_client(endpoint).create_bucket(Bucket=BUCKET)
        run_ok([DVC, "remote", "add", "store", f"s3://{BUCKET}/store"], repo, env)
        if kind == "s3-config-local":
            run_ok([DVC, "remote", "modify", "--local", "store", "endpointurl", endpoint], repo, env)
            assert endpoint in (repo / ".dvc" / "config.local").read_text()
            assert endpoint not in (repo / ".dvc" / "config").read_text()
            run_ok(["git", "check-ignore", "-q", ".dvc/config.local"], repo, env)
        else:
            env = env | {"AWS_ENDPOINT_URL": endpoint}  # nothing in the config names the endpoint

    assert stored_objects(store) == []
    run_ok([DVC, "push", "-r", "store"], repo, env)
    objects = stored_objects(store)
    assert len(objects) == len(FILES) + 1, objects  # one per file plus the .dir manifest
    assert sum(o.endswith(".dir") for o in objects) == 1

    shutil.rmtree(repo / "data")
    shutil.rmtree(repo / ".dvc" / "cache")
    run_ok([DVC, "pull", "-r", "store"], repo, env)
    data = repo / "data"
    assert {p.relative_to(data).as_posix(): p.read_bytes() for p in data.rglob("*") if p.is_file()} == FILES

"""Ingestion from a bucket on a real S3 API (moto's server on 127.0.0.1), same checks as the folder."""

import pickle
from pathlib import Path

import boto3
import pandas as pd
import pytest

from rdm.config import S3Params
from rdm.data.ingest import ingest
from rdm.data.shards import ShardSource
from rdm.data.sources import SourceError, open_source
from tests.support import messy_files
from tests.unit.test_ingest import LIMITS, check_messy_result, check_shard_result, write_shards


@pytest.fixture
def s3(s3_endpoint: str) -> S3Params:
    return S3Params(endpoint_url=s3_endpoint, region="us-east-1")


def upload_messy(params: S3Params, bucket: str, prefix: str) -> None:
    client = boto3.client("s3", endpoint_url=params.endpoint_url, region_name=params.region)
    client.create_bucket(Bucket=bucket)
    for rel, (data, _) in messy_files().items():
        client.put_object(Bucket=bucket, Key=f"{prefix}/{rel}", Body=data)


def test_bucket_prefix_ingests_like_a_folder(s3: S3Params, tmp_path: Path) -> None:
    upload_messy(s3, "art", "collections/v1")
    out = tmp_path / "out"
    result = ingest(
        open_source("s3://art/collections/v1", s3), "styles", out, LIMITS, workers=4, progress=False
    )
    check_messy_result(result, out, lambda rel: f"s3://art/collections/v1/{rel}")
    source = open_source("s3://art/collections/v1", s3)
    travelled = pickle.loads(pickle.dumps(source))  # as a Ray task gets it: its own client, made again
    assert travelled.client is not None and travelled.client is not source.client
    assert travelled.read("s3://art/collections/v1/alpha/good.png") == messy_files()["alpha/good.png"][0]


def test_manifest_on_s3_resolves_relative_keys(s3: S3Params, tmp_path: Path) -> None:
    upload_messy(s3, "art", "raw")
    client = boto3.client("s3", endpoint_url=s3.endpoint_url, region_name=s3.region)
    table = pd.DataFrame({"path": ["alpha/good.png", "beta/empty.jpg"], "caption": ["a", "b"]})
    client.put_object(Bucket="art", Key="raw/manifest.csv", Body=table.to_csv(index=False).encode())
    result = ingest(open_source("s3://art/raw/manifest.csv", s3), "train", tmp_path, LIMITS, progress=False)
    assert [(r.source, r.caption) for r in result.records] == [("s3://art/raw/alpha/good.png", "a")]
    assert [r.reason for r in result.rejections] == ["empty"]


def test_empty_prefix_is_named(s3: S3Params) -> None:
    boto3.client("s3", endpoint_url=s3.endpoint_url, region_name=s3.region).create_bucket(Bucket="art")
    with pytest.raises(SourceError, match="s3://art/nothing: no objects under this prefix"):
        list(open_source("s3://art/nothing", s3).items())


def test_webdataset_shards_under_a_prefix_are_read_by_ranged_gets(s3: S3Params, tmp_path: Path) -> None:
    client = boto3.client("s3", endpoint_url=s3.endpoint_url, region_name=s3.region)
    client.create_bucket(Bucket="laion")
    write_shards(tmp_path / "shards")
    for path in sorted((tmp_path / "shards").iterdir()):
        client.put_object(Bucket="laion", Key=f"part-0/{path.name}", Body=path.read_bytes())
    source = open_source("s3://laion/part-0", s3)
    assert isinstance(source, ShardSource)
    out = tmp_path / "out"
    result = ingest(source, "d_train", out, LIMITS, progress=False)
    check_shard_result(result, out, lambda shard: f"s3://laion/part-0/{shard}")
    first = list(source.shard_items("s3://laion/part-0/00000.tar"))
    travelled = pickle.loads(pickle.dumps(source.reader(first)))  # what a Ray task gets for one shard
    assert set(travelled.members) == {i.location for i in first} != set(source.members)
    assert [travelled.read(i.location) for i in first] == [source.read(i.location) for i in first]

"""The refresh of the style collections from an S3 bucket (moto's server): images added, changed and
deleted in the bucket, `rdm refresh` (what the refresh-style-collections flow runs) leaves each
collection holding exactly the bucket's good images but the style classifier's share (which the embed
stage leaves out of every collection), a reader searching all the while sees the old collection or the
new one and never a mix, and a second refresh at the same time is refused."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import boto3
import pandas as pd
import pytest
from PIL import Image

from rdm.artifacts.embeddings import VectorChunks
from rdm.artifacts.manifest import read_manifest, styles_side_lock
from rdm.config import load_config
from rdm.embedding import model as clip_model
from rdm.evaluation.split import classifier_ids, classifier_share
from rdm.files import exclusive
from rdm.retrieval.backends import open_store
from rdm.retrieval.store import style_collection
from rdm.stages import clip, embed, evaluate, generate, prepare
from tests.support import rdm_env, work_in, write_params

pytestmark = pytest.mark.slow
BUCKET = "art"


def flipped(png: bytes) -> bytes:
    """A different, valid image of the same style."""
    buffer = io.BytesIO()
    Image.open(io.BytesIO(png)).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(buffer, format="PNG")
    return buffer.getvalue()


def bucket_ids(client, style: str) -> set[str]:
    """sha256 of every good image under styles/<style>/ (the rejected file is named broken.png)."""
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=f"styles/{style}/")["Contents"]
    return {
        hashlib.sha256(client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()).hexdigest()
        for o in listed
        if not o["Key"].endswith("broken.png")
    }


def test_refresh_follows_the_bucket_atomically_one_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_endpoint: str
) -> None:
    work_in(tmp_path, monkeypatch)
    write_params(
        tmp_path,
        prepare={"sources": {"styles": f"s3://{BUCKET}/styles"}},
        s3={"endpoint_url": s3_endpoint, "region": "us-east-1"},
    )
    config = load_config(tmp_path / "params.yaml")
    generate.run(config, progress=False)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    raw_styles = Path(config.generate.out) / "styles"
    for path in sorted(raw_styles.rglob("*.png")):
        client.put_object(Bucket=BUCKET, Key=f"styles/{path.relative_to(raw_styles)}", Body=path.read_bytes())
    prepare.run(config.prepare, config.s3, progress=False)
    clip.run(config.clip, Path(config.prepare.out), config.sample.style_text, progress=False)
    keep_out = classifier_share(config)  # as `rdm embed` (the DVC stage) fills the collections
    embed.run(config.embed, config.store, Path(config.clip.out), Path(config.prepare.out), False, keep_out)
    share, seed = config.evaluate.classifier_share, config.evaluate.split_seed

    def retrievable(ids: set[str]) -> set[str]:
        """What a collection holds of these images: all but the style classifier's share."""
        return ids - classifier_ids(ids, share, seed)

    def in_collection(png: bytes) -> bool:
        return bool(retrievable({hashlib.sha256(png).hexdigest()}))

    grown, changed, shrunk = "neon", "mosaic", "hatching"
    names = {s: style_collection(s) for s in (grown, changed, shrunk)}
    with open_store(config.store) as store:
        before = {s: store.ids(name) for s, name in names.items()}
    assert before[grown] == retrievable(bucket_ids(client, grown))

    def keys(style: str) -> list[str]:
        listed = client.list_objects_v2(Bucket=BUCKET, Prefix=f"styles/{style}/")["Contents"]
        return [o["Key"] for o in listed]

    def read(k: str) -> bytes:
        return client.get_object(Bucket=BUCKET, Key=k)["Body"].read()

    # edits of images outside the classifier's share, so that every collection really changes
    new = [png for png in (flipped(read(k)) for k in keys(grown)) if in_collection(png)][:2]
    to_change = next(k for k in keys(changed) if in_collection(flipped(read(k))))
    to_delete = next(k for k in keys(shrunk) if in_collection(read(k)))
    assert len(new) == 2
    client.put_object(Bucket=BUCKET, Key=f"styles/{grown}/new-1.png", Body=new[0])
    client.put_object(Bucket=BUCKET, Key=f"styles/{grown}/new-2.png", Body=new[1])
    client.put_object(Bucket=BUCKET, Key=f"styles/{grown}/broken.png", Body=b"not an image at all\n" * 10)
    client.put_object(Bucket=BUCKET, Key=to_change, Body=flipped(read(to_change)))
    client.delete_object(Bucket=BUCKET, Key=to_delete)
    after = {s: retrievable(bucket_ids(client, s)) for s in names}
    assert all(after[s] != before[s] for s in names)

    seen: list[dict[str, frozenset[str]]] = []
    stop = threading.Event()

    def reader() -> None:
        with open_store(config.store) as store:
            while not stop.is_set():
                seen.append({s: frozenset(store.ids(name)) for s, name in names.items()})

    thread = threading.Thread(target=reader)
    thread.start()
    env = rdm_env()
    first = subprocess.Popen(
        ["rdm", "refresh"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lock = Path(config.store.path) / ".locks" / "refresh.lock"
    deadline = time.monotonic() + 120
    while (
        not (lock.is_file() and lock.read_text().strip())
        and first.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    second = subprocess.run(["rdm", "refresh"], env=env, capture_output=True, text=True, check=False)
    output, _ = first.communicate(timeout=600)
    stop.set()
    thread.join()

    assert first.returncode == 0, output
    assert second.returncode == 2 and "being changed by pid" in second.stderr, second.stderr
    with open_store(config.store) as store:
        for style, name in names.items():
            assert store.ids(name) == after[style], style
    for snapshot in seen:
        for style in names:
            assert snapshot[style] in (before[style], after[style]), (
                f"{style}: a partial collection was visible"
            )
    assert len(seen) > 3 and seen[-1] == {s: frozenset(after[s]) for s in names}

    report = json.loads(Path(config.refresh.metrics).read_text())
    assert report["styles"][grown] == {
        "added": 2,
        "changed": 0,
        "removed": 0,
        "rejected": 1,
        "points": len(after[grown]),
    }
    assert (report["styles"][changed]["changed"], report["styles"][shrunk]["removed"]) == (1, 1)
    assert report["embedded"] == 3, "only the two new images and the changed one go through CLIP"

    # an evaluation waits while a refresh holds the styles side: its manifest written, its vectors not yet
    manifest = Path(config.prepare.out) / "styles.parquet"
    refreshed = manifest.read_bytes()
    judge_clip = clip_model.load(Path(config.clip.out), "cpu")
    style_chunks = VectorChunks(Path(config.embed.out) / "styles", judge_clip.card)
    judged: dict[str, Any] = {}

    def judge() -> None:
        try:
            judged["judges"] = evaluate.train_judges(config, judge_clip, style_chunks)
        except Exception as error:
            judged["error"] = error

    with exclusive(styles_side_lock(config.store.path), "the style collections"):
        table = read_manifest(manifest)
        pd.concat([table, table.iloc[:1].assign(id="0" * 64)]).to_parquet(manifest, index=False)
        thread = threading.Thread(target=judge)
        thread.start()
        time.sleep(2)
        assert thread.is_alive(), f"the judges did not wait for the refresh: {judged}"
        manifest.write_bytes(refreshed)
    thread.join(timeout=300)
    assert "judges" in judged, judged
    assert judged["judges"].style_ids == list(read_manifest(manifest)["id"])

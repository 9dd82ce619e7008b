import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from rdm.artifacts.manifest import read_manifest
from rdm.cli import main
from rdm.data.images import Limits
from rdm.data.ingest import JOURNAL, IngestResult, ingest
from rdm.data.shards import ShardSource
from rdm.data.sources import SourceError, open_source
from tests.support import MESSY_CAPTIONS, messy_files

LIMITS = Limits(min_side=32, max_side=512, max_pixels=40_000_000)


def check_messy_result(result: IngestResult, out: Path, location_of) -> None:
    """The shared expectations for a folder of every kind of file, wherever it was read from."""
    files = {rel: expected for rel, (_, expected) in messy_files().items() if rel not in MESSY_CAPTIONS}
    assert result.seen == len(files)
    accepted = {r.source: r for r in result.records}
    rejected = {r.source: r for r in result.rejections}
    assert len(accepted) + len(rejected) == len(files)
    for rel, expected in files.items():
        if expected is None:
            assert location_of(rel) in accepted, f"{rel} was rejected: {rejected.get(location_of(rel))}"
        else:
            assert rejected[location_of(rel)].reason == expected, rel
    assert "good.png" in rejected[location_of("beta/copy-of-good.png")].detail

    by_name = {Path(src).name: rec for src, rec in accepted.items()}
    for record in accepted.values():
        stored = out / record.path
        with Image.open(stored) as image:
            assert image.mode == "RGB"
            assert image.size == (record.width, record.height)
        assert record.id == hashlib.sha256(messy_files()[_rel(record.source)][0]).hexdigest()
        assert record.style == _rel(record.source).split("/")[0]
    assert (by_name["rotated.jpg"].width, by_name["rotated.jpg"].height) == (40, 80)  # EXIF applied
    assert (by_name["big.png"].width, by_name["big.png"].height) == (512, 256)  # fitted to max_side
    assert by_name["good.png"].caption == "a gradient, quite good"
    grey16 = np.asarray(Image.open(out / by_name["grey16.png"].path))
    assert 120 <= grey16.mean() <= 136  # 16-bit mid-grey scaled, not clipped to white
    rgba = np.asarray(Image.open(out / by_name["rgba.png"].path))
    assert (rgba[:, :24] == 255).all()  # transparent half composited on white
    good_jpg = by_name["good.jpg"]
    assert good_jpg.path.endswith(".jpg")  # kept as it was: stored bytes are the original bytes
    assert hashlib.sha256((out / good_jpg.path).read_bytes()).hexdigest() == good_jpg.id


def _rel(location: str) -> str:
    return "/".join(location.replace("\\", "/").split("/")[-2:])


def test_folder_of_every_kind_of_file(messy_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = ingest(open_source(str(messy_folder)), "styles", out, LIMITS, progress=False)
    check_messy_result(result, out, lambda rel: str(messy_folder / rel))


def test_reingesting_is_idempotent(messy_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = ingest(open_source(str(messy_folder)), "x", out, LIMITS, progress=False)
    stored = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    second = ingest(open_source(str(messy_folder)), "x", out, LIMITS, progress=False)
    assert first.records == second.records
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stored


def test_ids_seen_in_an_earlier_split_are_duplicates(messy_folder: Path, tmp_path: Path) -> None:
    seen: dict[str, str] = {}
    first = ingest(open_source(str(messy_folder)), "train", tmp_path, LIMITS, seen=seen, progress=False)
    second = ingest(open_source(str(messy_folder)), "d_train", tmp_path, LIMITS, seen=seen, progress=False)
    assert not second.records
    assert second.reasons()["duplicate"] == len(first.records) + 1


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_manifest_sources(messy_folder: Path, tmp_path: Path, suffix: str) -> None:
    rows = pd.DataFrame(
        {
            "path": ["alpha/good.png", str(messy_folder / "alpha/good.jpg"), "alpha/missing.png"],
            "caption": ["one", "two", "three"],
            "style": ["s1", "", "s3"],
        }
    )
    manifest = messy_folder / f"manifest{suffix}"
    {
        ".csv": lambda: rows.to_csv(manifest, index=False),
        ".jsonl": lambda: rows.to_json(manifest, orient="records", lines=True),
        ".parquet": lambda: rows.to_parquet(manifest),
    }[suffix]()
    try:
        result = ingest(open_source(str(manifest)), "train", tmp_path, LIMITS, progress=False)
    finally:
        manifest.unlink()
    assert [(r.caption, r.style) for r in result.records] == [("one", "s1"), ("two", None)]
    assert [r.reason for r in result.rejections] == ["unreadable"]
    assert "missing.png" in result.rejections[0].source


def test_manifest_without_path_column_is_named(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,caption\na.png,x\n")
    with pytest.raises(SourceError, match=r"m\.csv: manifest has no 'path' column"):
        list(open_source(str(manifest)).items())


def test_empty_style_folder_and_missing_source_are_named(tmp_path: Path) -> None:
    (tmp_path / "styles" / "neon").mkdir(parents=True)
    (tmp_path / "styles" / "mosaic").mkdir()
    (tmp_path / "styles" / "mosaic" / "a.png").write_bytes(b"x")
    with pytest.raises(SourceError, match=r"\['neon'\] hold no files"):
        list(open_source(str(tmp_path / "styles")).items())
    with pytest.raises(SourceError, match="no such folder or manifest"):
        open_source(str(tmp_path / "nowhere"))


def test_style_collections_reject_files_without_a_style(tmp_path: Path) -> None:
    (tmp_path / "src" / "neon").mkdir(parents=True)
    messy = messy_files()
    (tmp_path / "src" / "loose.png").write_bytes(messy["alpha/good.png"][0])
    (tmp_path / "src" / "neon" / "ok.jpg").write_bytes(messy["alpha/good.jpg"][0])
    result = ingest(
        open_source(str(tmp_path / "src")),
        "styles",
        tmp_path / "out",
        LIMITS,
        require_style=True,
        progress=False,
    )
    assert [r.style for r in result.records] == ["neon"]
    assert [r.reason for r in result.rejections] == ["no_style"]


def test_a_rejected_style_image_keeps_its_style(tmp_path: Path) -> None:
    """What the refresh counts its rejections by: the style the source files an image under."""
    (tmp_path / "src" / "neon").mkdir(parents=True)
    (tmp_path / "src" / "neon" / "broken.png").write_bytes(b"not an image at all\n" * 10)
    (tmp_path / "src" / "loose.png").write_bytes(messy_files()["alpha/good.png"][0])
    source = open_source(str(tmp_path / "src"))
    result = ingest(source, "styles", tmp_path / "out", LIMITS, require_style=True, progress=False)
    styles = {Path(r.source).name: r.as_dict()["style"] for r in result.rejections}
    assert styles == {"broken.png": "neon", "loose.png": None}


def test_rdm_ingest_prints_counts_by_reason(messy_folder: Path, tmp_path: Path, capsys) -> None:
    from tests.support import REPO_ROOT

    out = tmp_path / "checked"
    code = main(["--params", str(REPO_ROOT / "params.yaml"), "ingest", str(messy_folder), "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "16 files seen, 10 accepted, 6 rejected" in printed
    for reason in ("truncated", "empty", "not_an_image", "too_small", "too_large", "duplicate"):
        assert f"  {reason}" in printed
    assert len(read_manifest(out / "manifest.parquet")) == 10
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert {r["reason"] for r in rejected} == {
        "truncated",
        "empty",
        "not_an_image",
        "too_small",
        "too_large",
        "duplicate",
    }


def image_bytes(colour: tuple[int, int, int], fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(buffer, format=fmt)
    return buffer.getvalue()


SHARD_SAMPLES = {
    "00000.tar": {
        "000000000.jpg": image_bytes((200, 10, 10), "JPEG"),
        "000000000.txt": b"a red square\n",
        "000000000.json": json.dumps({"key": "000000000", "caption": "not this one"}).encode(),
        "000000001.png": image_bytes((10, 10, 200), "PNG"),
        "000000001.json": json.dumps({"caption": "a blue square", "style": "neon"}).encode(),
    },
    "00001.tar": {
        "000000002.jpg": b"\xff\xd8 not really a jpeg",
        "000000002.txt": b"broken",
        "000000003.json": json.dumps({"status": "failed_to_download"}).encode(),  # no image: no sample
    },
}
"""img2dataset's layout: numbered shards of samples whose members share a key."""


def write_shards(folder: Path) -> dict[str, bytes]:
    """The shards of SHARD_SAMPLES in `folder`, with img2dataset's parquet beside them; returns
    each shard's bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for shard, members in SHARD_SAMPLES.items():
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        written[shard] = buffer.getvalue()
        (folder / shard).write_bytes(written[shard])
        pd.DataFrame({"key": sorted({n.split(".")[0] for n in members})}).to_parquet(
            folder / shard.replace(".tar", ".parquet")
        )
    return written


def check_shard_result(result: IngestResult, out: Path, shard_location: Callable[[str], str]) -> None:
    """Every image member accounted for, read from its offset with its sidecars' caption and style."""
    assert result.seen == 3  # three image members; the lone .json and the parquet are no samples
    accepted = {r.source: r for r in result.records}
    first, second = shard_location("00000.tar"), shard_location("00001.tar")
    assert set(accepted) == {f"{first}#000000000.jpg", f"{first}#000000001.png"}
    red, blue = accepted[f"{first}#000000000.jpg"], accepted[f"{first}#000000001.png"]
    assert (red.caption, red.style) == ("a red square", None)  # the .txt wins over the .json
    assert (blue.caption, blue.style) == ("a blue square", "neon")
    assert red.id == hashlib.sha256(SHARD_SAMPLES["00000.tar"]["000000000.jpg"]).hexdigest()
    assert (out / blue.path).read_bytes() == SHARD_SAMPLES["00000.tar"]["000000001.png"]
    [broken] = result.rejections
    assert (broken.source, broken.reason) == (f"{second}#000000002.jpg", "not_an_image")
    unpacked = [p for p in out.rglob("*") if p.is_file() and not {"images", JOURNAL} & set(p.parts)]
    assert not unpacked


def test_webdataset_shards_are_ingested_from_their_offsets(tmp_path: Path) -> None:
    write_shards(tmp_path / "laion")
    source = open_source(str(tmp_path / "laion"))
    out = tmp_path / "out"
    result = ingest(source, "d_train", out, LIMITS, progress=False)
    check_shard_result(result, out, lambda shard: str(tmp_path / "laion" / shard))
    # a single shard is a source too
    one = ingest(open_source(str(tmp_path / "laion" / "00000.tar")), "d_train", out, LIMITS, progress=False)
    assert len(one.records) == 2


def test_shards_resume_one_by_one_and_a_changed_shard_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = write_shards(tmp_path / "laion")
    (tmp_path / "laion" / "00001.tar").write_bytes(written["00001.tar"][:700])  # an interrupted download
    out = tmp_path / "out"
    with pytest.raises(SourceError, match=r"00001\.tar"):
        ingest(open_source(str(tmp_path / "laion")), "d_train", out, LIMITS, progress=False)
    (tmp_path / "laion" / "00001.tar").write_bytes(written["00001.tar"])  # downloaded again

    read: list[str] = []
    original = ShardSource.read
    monkeypatch.setattr(ShardSource, "read", lambda self, loc: read.append(loc) or original(self, loc))
    resumed = ingest(open_source(str(tmp_path / "laion")), "d_train", out, LIMITS, progress=False)
    check_shard_result(resumed, out, lambda shard: str(tmp_path / "laion" / shard))
    assert read == [f"{tmp_path / 'laion' / '00001.tar'}#000000002.jpg"]  # the finished shard replayed

    read.clear()
    again = ingest(open_source(str(tmp_path / "laion")), "d_train", out, LIMITS, progress=False)
    assert again == resumed and read == []
    stricter = ingest(
        open_source(str(tmp_path / "laion")), "d_train", out, LIMITS, require_style=True, progress=False
    )
    assert [r.source for r in stricter.records] == [f"{tmp_path / 'laion' / '00000.tar'}#000000001.png"]
    (tmp_path / "laion" / "00000.tar").write_bytes(written["00000.tar"] + bytes(1024))  # changed
    read.clear()
    ingest(open_source(str(tmp_path / "laion")), "d_train", out, LIMITS, progress=False)
    assert sorted(read) == [f"{tmp_path / 'laion' / '00000.tar'}#00000000{n}" for n in ("0.jpg", "1.png")]


def test_a_damaged_shard_is_named(tmp_path: Path) -> None:
    written = write_shards(tmp_path / "laion")
    (tmp_path / "laion" / "00001.tar").write_bytes(written["00001.tar"][:700])  # cut inside a member
    with pytest.raises(SourceError, match=r"00001\.tar: not a readable tar shard"):
        list(open_source(str(tmp_path / "laion")).items())

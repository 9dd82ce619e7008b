"""The `evaluate` stage end to end on a synthetic project: real manifests, vector chunks, PNGs and
records, with CLIP replaced by a lookup of known features (no model is loaded)."""

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from rdm.artifacts.clip import ClipCard
from rdm.artifacts.embeddings import VectorChunks
from rdm.artifacts.evaluation import read_evaluation
from rdm.artifacts.manifest import Record, write_manifest
from rdm.artifacts.samples import NULL, OTHER_STYLE, POSTFIX, POSTFIX_TEXT, RETRIEVAL
from rdm.config import Config, config_from_dict
from rdm.errors import UserError
from rdm.evaluation.split import classifier_ids
from rdm.files import write_jsonl
from rdm.stages import evaluate

STYLES = ["hatching", "neon", "ukiyo_e"]
CONTENTS = ["circle", "star"]
COLOURS = ["red", "blue"]
PROMPTS = [(f"a {colour} {content}", content, colour) for content in CONTENTS for colour in COLOURS]
RNG = np.random.default_rng(11)
CENTRES = {name: RNG.normal(size=16) * 3 for name in [*STYLES, "plain", *CONTENTS, *COLOURS]}
CARD = ClipCard(model="fake", source="test", embed_dim=48, fingerprint="0123456789abcdef")


def feature(style: str, content: str, colour: str) -> np.ndarray:
    """(48,) style, content and colour, 16 dimensions each, plus a little noise."""
    parts = [CENTRES[style], CENTRES[content], CENTRES[colour]]
    return np.concatenate(parts) + RNG.normal(scale=0.1, size=48)


def record(n: int, split: str, style: str | None, caption: str | None, content: str | None) -> Record:
    return Record(f"{split}{n:060d}", split, f"images/{split}-{n}.png", "test", caption, style, content, 8, 8)


def build(root: Path, floors: bool, reconstructions: bool) -> tuple[Config, dict[str, np.ndarray]]:
    """A project under `root`; returns its config and the feature of every image path."""
    config = config_from_dict(
        {
            "prepare": {"out": str(root / "prepared")},
            "clip": {"out": str(root / "clip")},
            "embed": {"out": str(root / "embeddings")},
            "sample": {"out": str(root / "samples")},
            "autoencoder": {"reconstructions": str(root / "reconstructions")},
            "evaluate": {
                "classifier": {"epochs": 100},
                "bootstrap_resamples": 200,
                "metrics": str(root / "reports" / "evaluate.json"),
                "plots": str(root / "reports" / "evaluate"),
            },
            "tracking": {"enabled": False},
        }
    )
    prepared = root / "prepared"
    prepared.mkdir(parents=True)
    lookup: dict[str, np.ndarray] = {}

    styles = [record(n, "styles", STYLES[n % 3], None, None) for n in range(90)]
    write_manifest(styles, prepared / "styles.parquet")
    VectorChunks(root / "embeddings" / "styles", CARD).append(
        [r.id for r in styles], np.stack([feature(str(r.style), "circle", "red") for r in styles])
    )
    train = []
    for n in range(80):
        content, colour = CONTENTS[n % 2], COLOURS[(n // 2) % 2]
        style = ["neon", "hatching", "plain", "plain"][n % 4]  # ukiyo_e in no training image
        train.append(record(n, "train", style, f"a {colour} {content}", content))
    write_manifest(train, prepared / "train.parquet")
    VectorChunks(root / "embeddings" / "train", CARD).append(
        [r.id for r in train],
        np.stack([feature(str(r.style), str(r.content), str(r.caption).split()[1]) for r in train]),
    )
    pd.DataFrame(PROMPTS, columns=["prompt", "content", "color"]).to_parquet(prepared / "prompts.parquet")

    samples = root / "samples"
    (samples / "images").mkdir(parents=True)
    methods = [RETRIEVAL, POSTFIX, *([POSTFIX_TEXT, NULL, OTHER_STYLE] if floors else [])]
    rows: list[dict[str, Any]] = []
    for n_style, style in enumerate(STYLES):
        other = STYLES[(n_style + 1) % 3]
        for method in methods:
            for i in range(8 if method in (RETRIEVAL, POSTFIX) else 4):
                prompt, content, colour = PROMPTS[i % len(PROMPTS)]
                shown = style if method == RETRIEVAL or (method == POSTFIX and i % 2) else other
                file = f"images/{len(rows):05d}-{style}-{method}-s{i}.png"
                # pixels: retrieval images follow the collection more than the seed
                pixel = (40 * n_style + 3 * i, 100, 50 + i)
                Image.new("RGB", (8, 8), pixel).save(samples / file)
                lookup[str(samples / file)] = feature(shown, content, colour)
                collection = {POSTFIX: "d_train", OTHER_STYLE: f"style-{other}"}.get(method, f"style-{style}")
                neighbors = [{"id": styles[i].id, "score": 0.5, "style": style}] if method != NULL else []
                rows.append(
                    {"file": file, "prompt": prompt, "style": style, "method": method, "seed": i}
                    | {"collection": collection, "neighbors": neighbors, "model": {"run_id": None}}
                )
    write_jsonl(samples / "samples.jsonl", rows)

    if reconstructions:
        folder = root / "reconstructions"
        folder.mkdir()
        rebuilt = []
        for r in styles[:30]:
            Image.new("RGB", (8, 8)).save(folder / f"{r.id[-6:]}.png")
            lookup[str(folder / f"{r.id[-6:]}.png")] = feature(str(r.style), "circle", "red")
            rebuilt.append({"file": f"{r.id[-6:]}.png", "style": r.style, "id": r.id})
        write_jsonl(folder / "reconstructions.jsonl", rebuilt)
    return config, lookup


@pytest.fixture
def fake_clip(monkeypatch: pytest.MonkeyPatch) -> dict[str, np.ndarray]:
    """CLIP replaced: image features looked up by path, text features made up."""
    lookup: dict[str, np.ndarray] = {}

    def encode_paths(clip: Any, paths: list[Path], *args: Any, **kwargs: Any) -> Any:
        yield np.stack([lookup[str(p)] for p in paths]).astype(np.float32)

    clip = SimpleNamespace(
        device=torch.device("cpu"),
        card=CARD,
        encode_text=lambda texts: torch.randn(len(texts), 48, generator=torch.Generator().manual_seed(0)),
    )
    monkeypatch.setattr(evaluate.clip_model, "load", lambda folder, device: clip)
    monkeypatch.setattr(evaluate, "encode_paths", encode_paths)
    return lookup


def test_evaluate_reports_intervals_floors_ceiling_labels_and_sensitivity(
    tmp_path: Path, fake_clip: dict[str, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    config, lookup = build(tmp_path, floors=True, reconstructions=True)
    fake_clip.update(lookup)
    metrics = evaluate.run(config, progress=False)

    assert json.loads((tmp_path / "reports" / "evaluate.json").read_text()) == metrics
    assert set(metrics) >= {
        "classifier",
        "content_classifier",
        "colour_classifier",
        "seen_styles",
        "held_out_styles",
        "floors",
        "ceiling",
        "sensitivity",
        "styles",
    }
    kept_back = classifier_ids([f"styles{n:060d}" for n in range(90)], 0.3, 0)
    assert metrics["classifier"]["retrievable_images"] == 90 - len(kept_back)
    assert (
        metrics["content_classifier"]["holdout_top1"] == 1.0
        and metrics["colour_classifier"]["holdout_top1"] == 1.0
    )
    seen = metrics["seen_styles"]  # ukiyo_e is in no training image: held out
    assert seen["styles"] == 2 and metrics["held_out_styles"]["styles"] == 1
    assert seen[RETRIEVAL]["accuracy"] == 1.0 and seen[POSTFIX]["accuracy"] == 0.5
    assert seen[RETRIEVAL]["content_hits"] == 1.0 and seen[RETRIEVAL]["colour_hits"] == 1.0
    assert 0.0 <= seen[RETRIEVAL]["context_content_hits"] <= 1.0  # what the neighbours offered
    assert seen[f"{RETRIEVAL}_minus_{POSTFIX}"]["low"] > 0
    assert metrics["floors"][OTHER_STYLE]["collection_accuracy"]["estimate"] == 1.0
    assert metrics["ceiling"]["reconstructions"]["estimate"] == 1.0 and "originals" in metrics["ceiling"]
    assert metrics["ceiling"]["images"] < 30  # the classifier's own training images are left out
    assert (
        metrics["sensitivity"]["pixels"]["ratio"] > 1 and metrics["sensitivity"]["pairs"]["across_seeds"] > 0
    )
    table = pd.read_csv(tmp_path / "reports" / "evaluate" / "styles.csv", keep_default_na=False)  # "null"
    assert set(table["method"]) == {RETRIEVAL, POSTFIX, POSTFIX_TEXT, NULL, OTHER_STYLE}
    wide = pd.read_csv(tmp_path / "reports" / "evaluate" / "style_accuracy.csv")
    assert {"accuracy_retrieval", "relative_improvement", "difference_postfix_low"} <= set(wide.columns)
    assert (tmp_path / "reports" / "evaluate" / "style_accuracy.png").stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "seen styles" in printed and "ceiling" in printed and "sensitivity" in printed


def test_evaluate_takes_old_records_and_no_reconstructions(
    tmp_path: Path, fake_clip: dict[str, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    config, lookup = build(tmp_path, floors=False, reconstructions=False)
    fake_clip.update(lookup)
    metrics = evaluate.run(config, progress=False)
    assert "floors" not in metrics and "ceiling" not in metrics
    assert set(metrics["seen_styles"]) >= {RETRIEVAL, POSTFIX, f"{RETRIEVAL}_minus_{POSTFIX}"}
    assert POSTFIX_TEXT not in metrics["seen_styles"]
    printed = capsys.readouterr().out
    assert "no ceiling row" in printed and "no autoencoder reconstructions to score" in printed
    # what `rdm report` prints from: the comparison table and the metrics, as written
    comparison, read = read_evaluation(Path(config.evaluate.plots), Path(config.evaluate.metrics))
    assert read == metrics and list(comparison["style"]) == sorted(metrics["styles"])
    with pytest.raises(UserError, match="no evaluation yet; run `dvc repro evaluate`"):
        read_evaluation(tmp_path / "nowhere", Path(config.evaluate.metrics))

"""The style evaluation's pieces: the Frechet distance, the classifiers, the plan of requests, the
scores of synthetic samples (floors, ceiling, content and colour), the report and the stage's readers.
The statistics (split, bootstrap, sensitivity) are in test_evaluation_statistics.py."""

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from scipy import linalg

from rdm.artifacts.autoencoder import read_reconstructions
from rdm.artifacts.samples import METHODS, NULL, OTHER_STYLE, POSTFIX, POSTFIX_TEXT, RETRIEVAL
from rdm.config import ClassifierParams, ConfigError, EvaluateParams, config_from_dict
from rdm.errors import UserError
from rdm.evaluation.classifier import FittedClassifier, fit_classifier, holdout_split
from rdm.evaluation.labels import colour_from_caption, hits
from rdm.evaluation.metrics import frechet_distance
from rdm.evaluation.report import compare_methods, format_table, style_differences, summary
from rdm.evaluation.scores import ceiling, context_hits, sample_scores, score_table
from rdm.evaluation.split import classifier_ids
from rdm.sampling.batch import Request, plan
from rdm.stages.evaluate import read_pixels, style_classifier
from tests.support import REPO_ROOT


def test_frechet_distance_matches_the_fid_formula() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 8))
    b = rng.normal(size=(300, 8)) @ rng.normal(size=(8, 8)) * 0.5 + 1.0
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(
        cov_a + cov_b - 2 * linalg.sqrtm(cov_a @ cov_b).real
    )
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(a, a + 2.0) == pytest.approx(8 * 4.0, rel=1e-6)  # a shift of 2 in 8 dimensions
    # fewer samples than dimensions (a singular covariance) still gives a finite, non-negative value
    assert 0 <= frechet_distance(a[:5], b[:5]) < np.inf


def test_holdout_split_holds_out_the_same_share_of_every_style() -> None:
    labels = ["a"] * 20 + ["b"] * 10 + ["c"] * 3
    train, held = holdout_split(labels, 0.2, seed=0)
    assert sorted([*train, *held]) == list(range(33))
    assert [sum(labels[i] == s for i in held) for s in "abc"] == [4, 2, 1]
    assert np.array_equal(held, holdout_split(labels, 0.2, seed=0)[1])


def test_the_classifier_separates_styles_it_can_see() -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 16))
    labels = [s for s in "wxyz" for _ in range(30)]
    features = centres[[ord(s) - ord("w") for s in labels]] + rng.normal(scale=0.3, size=(120, 16))
    fitted = fit_classifier(features, labels, ClassifierParams(epochs=100))
    assert fitted.holdout_accuracy == 1.0 and fitted.holdout_size == 24
    logits = fitted.classifier.logits(centres)
    assert list(logits.argmax(1)) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="at least two labels"):
        fit_classifier(features[:30], labels[:30], ClassifierParams(epochs=1))
    held = np.array([n % 10 == 0 for n in range(120)])  # held out by the caller (by id, in the stage)
    chosen = fit_classifier(features, labels, ClassifierParams(epochs=100), held_out=held)
    assert (chosen.train_size, chosen.holdout_size) == (108, 12) and chosen.holdout_accuracy == 1.0
    with pytest.raises(ValueError, match=r"no training images for \['w'\]"):
        fit_classifier(features, labels, ClassifierParams(epochs=1), held_out=np.arange(120) < 30)


def test_plan_gives_every_style_and_method_the_same_prompts_and_seeds() -> None:
    requests = plan(["a red star", "a blue moon"], ["neon", "mosaic"], METHODS, 3, seed=10)
    assert len(requests) == 2 * len(METHODS) * 3
    columns = {
        (style, method): [(r.prompt, r.seed) for r in requests if (r.style, r.method) == (style, method)]
        for style in ["neon", "mosaic"]
        for method in METHODS
    }
    assert all(
        rows == [("a red star", 10), ("a blue moon", 11), ("a red star", 12)] for rows in columns.values()
    )
    assert requests[0] == Request("a red star", "neon", RETRIEVAL, 10)
    with pytest.raises(ValueError, match="unknown method"):
        plan(["a"], ["neon"], ["prompt-only"], 1, 0)


def test_comparison_gives_the_relative_improvement_of_retrieval_over_postfix() -> None:
    rows = [
        ("neon", RETRIEVAL, False, 0.6),
        ("neon", POSTFIX, False, 0.4),
        ("ukiyo_e", RETRIEVAL, True, 0.3),
        ("ukiyo_e", POSTFIX, True, 0.0),
    ]
    table = pd.DataFrame(
        [
            {
                "style": s,
                "method": m,
                "held_out": h,
                "samples": 10,
                "accuracy": a,
                "target_logit": a,
                "frechet": 1.0,
                "clip_score": 0.2,
                "on_style_neighbors": 1.0,
            }
            for s, m, h, a in rows
        ]
    )
    comparison = compare_methods(table).set_index("style")
    assert comparison.loc["neon", "relative_improvement"] == pytest.approx(0.5)
    assert np.isnan(comparison.loc["ukiyo_e", "relative_improvement"])  # postfix at 0: no ratio
    assert bool(comparison.loc["ukiyo_e", "held_out"])
    printed = format_table(comparison.reset_index())
    assert "ukiyo_e*" in printed and "* held out of training" in printed and "seen styles" in printed


def test_postfix_must_say_where_the_style_goes() -> None:
    with pytest.raises(ConfigError, match=r"sample: .*must contain \{style\}"):
        config_from_dict({"sample": {"postfix": "artistic"}})
    sample = config_from_dict({"sample": {"style_words": {"ukiyo_e": "ukiyo-e"}}}).sample
    assert sample.style_text("ukiyo_e") == "ukiyo-e" and sample.style_text("pixel_art") == "pixel art"


# --- synthetic samples: 32-d features, the first 16 carry the style, the last 16 the content ---------

STYLES = ["hatching", "neon", "ukiyo_e"]
CONTENTS = ["circle", "star"]
RNG = np.random.default_rng(7)
STYLE_CENTRES = {s: RNG.normal(size=16) * 3 for s in STYLES}
CONTENT_CENTRES = {c: RNG.normal(size=16) * 3 for c in CONTENTS}
PROMPTS = {"a circle": "circle", "a star": "star"}


def feature(style: str, content: str) -> np.ndarray:
    return np.concatenate([STYLE_CENTRES[style], CONTENT_CENTRES[content]])  # (32,)


@pytest.fixture(scope="module")
def judges() -> tuple[FittedClassifier, FittedClassifier]:
    """A style and a content classifier, each trained on its half of the features (the other half noise)."""
    rng = np.random.default_rng(0)
    styles = [s for s in STYLES for _ in range(20)]
    contents = [c for c in CONTENTS for _ in range(30)]
    style_x = np.stack([np.concatenate([STYLE_CENTRES[s], rng.normal(size=16) * 3]) for s in styles])
    content_x = np.stack([np.concatenate([rng.normal(size=16) * 3, CONTENT_CENTRES[c]]) for c in contents])
    params = ClassifierParams(epochs=150)
    return fit_classifier(style_x, styles, params), fit_classifier(content_x, contents, params)


def synthetic(floors: bool) -> tuple[list[dict[str, Any]], np.ndarray]:
    """10 requests per style and method. retrieval: the target style and the prompt's content, always;
    postfix: the target style for even requests only, the content for requests below 5 only; the
    floors: null looks like hatching, other_style like the collection it was given (the next style)."""
    records, features = [], []
    methods = [RETRIEVAL, POSTFIX, *([POSTFIX_TEXT, NULL, OTHER_STYLE] if floors else [])]
    for n_style, style in enumerate(STYLES):
        other = STYLES[(n_style + 1) % len(STYLES)]
        for method in methods:
            for i in range(10 if method != NULL else 4):  # floors may have fewer samples
                prompt = list(PROMPTS)[i % 2]
                content = PROMPTS[prompt]
                shown = {
                    RETRIEVAL: (style, content),
                    POSTFIX: (style if i % 2 == 0 else other, content if i < 5 else CONTENTS[1 - i % 2]),
                    POSTFIX_TEXT: (other, content),
                    NULL: ("hatching", content),
                    OTHER_STYLE: (other, content),
                }[method]
                collection = {POSTFIX: "d_train", OTHER_STYLE: f"style-{other}"}.get(method, f"style-{style}")
                neighbors = (
                    [] if method in (NULL, POSTFIX_TEXT) else [{"id": "x", "score": 0.5, "style": style}]
                )
                records.append(
                    {"style": style, "method": method, "prompt": prompt, "seed": i, "collection": collection}
                    | {"file": f"images/{len(records):05d}.png", "neighbors": neighbors}
                )
                features.append(feature(*shown))
    return records, np.stack(features)


def evaluated(
    judges: tuple[FittedClassifier, FittedClassifier], floors: bool
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    fitted, content = judges
    records, features = synthetic(floors)
    prompt_vectors = {p: feature("neon", c) for p, c in PROMPTS.items()}
    samples = sample_scores(records, features, prompt_vectors, fitted, {"content": (content, PROMPTS)})
    references = {s: np.stack([feature(s, c) for c in CONTENTS * 3]) for s in STYLES}
    table = score_table(samples, features, references, {"ukiyo_e"}, resamples=200, seed=0)
    comparison = compare_methods(table, style_differences(samples, resamples=200, seed=0))
    return samples, table, comparison, summary(samples, table, fitted, resamples=200, seed=0)


def test_scores_give_accuracy_floors_and_content_per_style_and_method(
    judges: tuple[FittedClassifier, FittedClassifier],
) -> None:
    _, table, comparison, metrics = evaluated(judges, floors=True)
    rows = table.set_index(["style", "method"])
    assert rows.loc[("neon", RETRIEVAL), "accuracy"] == 1.0 and rows.loc[("neon", POSTFIX), "accuracy"] == 0.5
    assert rows.loc[("neon", POSTFIX_TEXT), "accuracy"] == 0.0
    assert rows.loc[("neon", POSTFIX), "accuracy_low"] < 0.5 < rows.loc[("neon", POSTFIX), "accuracy_high"]
    assert (
        rows.loc[("neon", RETRIEVAL), "content_hits"] == 1.0
        and rows.loc[("neon", POSTFIX), "content_hits"] == 0.5
    )
    # floors: null is "hatching" whatever the target; other_style follows the collection it was given
    assert rows.loc[("hatching", NULL), "accuracy"] == 1.0 and rows.loc[("neon", NULL), "accuracy"] == 0.0
    assert rows.loc[("neon", NULL), "samples"] == 4
    assert rows.loc[("neon", OTHER_STYLE), "accuracy"] == 0.0
    assert rows.loc[("neon", OTHER_STYLE), "collection_accuracy"] == 1.0
    assert np.isnan(rows.loc[("neon", RETRIEVAL), "collection_accuracy"])
    assert table["frechet"].notna().all()
    # retrieval - postfix over pairs: +50 points for every style, an interval that excludes 0
    wide = comparison.set_index("style")
    assert wide.loc["neon", "difference_postfix"] == pytest.approx(0.5)
    assert (
        0 < wide.loc["neon", "difference_postfix_low"] <= 0.5 <= wide.loc["neon", "difference_postfix_high"]
    )
    assert wide.loc["neon", "difference_postfix_text"] == pytest.approx(1.0)
    assert bool(wide.loc["ukiyo_e", "held_out"]) and not bool(wide.loc["neon", "held_out"])
    # the summary: seen and held-out means with intervals, floors over all styles
    seen = metrics["seen_styles"]
    assert seen["styles"] == 2 and seen[RETRIEVAL]["accuracy"] == 1.0 and seen[POSTFIX]["accuracy"] == 0.5
    assert (
        seen[f"{RETRIEVAL}_minus_{POSTFIX}"]["estimate"] == 0.5
        and seen[f"{RETRIEVAL}_minus_{POSTFIX}"]["low"] > 0
    )
    assert metrics["held_out_styles"]["styles"] == 1
    assert metrics["floors"][NULL]["accuracy"]["estimate"] == pytest.approx(1 / 3, abs=1e-4)
    assert metrics["floors"][OTHER_STYLE]["collection_accuracy"]["estimate"] == 1.0
    assert metrics["styles"]["neon"][f"{RETRIEVAL}_minus_{POSTFIX}"]["n"] == 10
    json.dumps(metrics, allow_nan=False)  # no NaN reaches the JSON report


def test_report_prints_floors_ceiling_and_sensitivity_in_110_columns(
    judges: tuple[FittedClassifier, FittedClassifier],
) -> None:
    _, _, comparison, metrics = evaluated(judges, floors=True)
    top, below = (
        {"estimate": 0.8, "low": 0.6, "high": 1.0, "n": 90},
        {"estimate": 0.9, "low": 0.8, "high": 1.0},
    )
    metrics["ceiling"] = {"images": 90, "reconstructions": top, "originals": below}
    metrics["sensitivity"] = {"pixels": {"ratio": 0.62}, "clip": {"ratio": 0.8}, "goal": 0.5}
    printed = format_table(comparison, metrics)
    assert all(len(line) <= 110 for line in printed.splitlines()), printed
    assert "+50% [" in printed  # retrieval - postfix with its interval
    assert "floor" in printed and "null context" in printed and "another collection" in printed
    assert "ceiling" in printed and "80% [60%,100%], originals 90% [80%,100%]" in printed
    assert "0.62" in printed and "goal >= 0.5" in printed
    assert "seen styles (2)" in printed and "held-out styles" in printed


def test_report_tolerates_old_records_without_baselines_or_floors(
    judges: tuple[FittedClassifier, FittedClassifier], tmp_path: Path
) -> None:
    _, table, comparison, metrics = evaluated(judges, floors=False)
    assert set(table["method"]) == {RETRIEVAL, POSTFIX} and "floors" not in metrics
    assert "difference_postfix_text" not in comparison
    comparison.to_csv(tmp_path / "style_accuracy.csv", index=False)  # as `rdm report` reads it back
    printed = format_table(pd.read_csv(tmp_path / "style_accuracy.csv"), metrics)
    assert "floor" not in printed and "no autoencoder reconstructions" in printed
    assert all(len(line) <= 110 for line in printed.splitlines())
    old_csv = comparison[["style", "accuracy_retrieval", "accuracy_postfix", "held_out"]]  # an older report
    assert "neon" in format_table(old_csv) and "seen styles" in format_table(old_csv)


def test_colour_labels_come_from_the_caption_and_hits_from_the_prompt() -> None:
    colours = ["yellow", "red", "blue"]
    assert colour_from_caption("a yellow circle in the style of neon", colours) == "yellow"
    assert colour_from_caption("A Red star.", colours) == "red"
    assert colour_from_caption("a red and blue star", colours) is None  # ambiguous: not a label
    assert colour_from_caption("a star", colours) is None and colour_from_caption(None, colours) is None
    assert np.array_equal(
        hits(["red", "blue", "red"], ["red", "red", None]), [1.0, 0.0, np.nan], equal_nan=True
    )


def test_ceiling_scores_reconstructions_beside_their_originals(
    judges: tuple[FittedClassifier, FittedClassifier],
) -> None:
    fitted, _ = judges
    styles = [s for s in STYLES for _ in range(4)]
    originals = np.stack([feature(s, "circle") for s in styles])
    blurred = originals.copy()
    blurred[:4, :16] = STYLE_CENTRES["neon"]  # the autoencoder lost hatching
    report = ceiling(fitted, blurred, styles, originals, resamples=200, seed=0)
    assert report["images"] == 12 and report["originals"]["estimate"] == 1.0
    assert report["reconstructions"]["estimate"] == pytest.approx(2 / 3)  # mean over styles of 0, 1, 1
    with pytest.raises(ValueError, match="cubism"):
        ceiling(fitted, blurred[:1], ["cubism"], None, resamples=200, seed=0)


class FakeChunks:
    """VectorChunks' `vectors_for` over a dict."""

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors = vectors
        self.asked: list[str] = []

    def vectors_for(self, ids: list[str]) -> np.ndarray:
        self.asked.extend(ids)
        return np.stack([self.vectors[i] for i in ids])


def test_the_style_classifier_trains_on_its_share_of_the_collections_only() -> None:
    ids = [f"{n:064x}" for n in range(150)]
    labels = [STYLES[n % 3] for n in range(150)]
    styles = pd.DataFrame({"id": ids, "style": labels})
    chunks = FakeChunks({i: feature(s, "circle") for i, s in zip(ids, labels, strict=True)})
    params = EvaluateParams(classifier=ClassifierParams(epochs=100), classifier_share=0.4)
    fitted, trained_on, borrowed, references = style_classifier(styles, chunks, params, "cpu")  # type: ignore[arg-type]
    mine = classifier_ids(ids, 0.4, 0)
    assert set(chunks.asked) == mine and trained_on < mine and not borrowed
    assert fitted.train_size == len(trained_on) and fitted.train_size + fitted.holdout_size == len(mine)
    assert sum(len(v) for v in references.values()) == len(mine)  # the Frechet reference: never retrieved
    assert fitted.holdout_accuracy == 1.0


def test_stage_readers_name_the_file_and_skip_a_missing_ceiling(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert read_reconstructions(tmp_path) is None and "no ceiling row" in capsys.readouterr().out
    Image.new("RGB", (4, 4), (10, 20, 30)).save(tmp_path / "a.png")
    (tmp_path / "reconstructions.jsonl").write_text(
        '{"file": "a.png", "style": "neon", "id": "x"}\n{"file": "b.png"}\n'
    )
    with pytest.raises(UserError, match=r"reconstructions.jsonl line 2: needs the fields file and style"):
        read_reconstructions(tmp_path)
    (tmp_path / "reconstructions.jsonl").write_text('{"file": "a.png", "style": "neon"}\n')
    assert read_reconstructions(tmp_path) == [{"file": "a.png", "style": "neon"}]
    pixels = read_pixels([tmp_path / "a.png", tmp_path / "a.png"])
    assert pixels.shape == (2, 4, 4, 3) and pixels.dtype == np.uint8 and pixels[0, 0, 0, 1] == 20


def test_params_yaml_evaluate_section_validates() -> None:
    section = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["evaluate"]
    params = EvaluateParams.model_validate(section)
    assert 0 < params.classifier_share < 1 and params.bootstrap_resamples >= 100
    with pytest.raises(ConfigError, match="classifier_share"):
        config_from_dict({"evaluate": {"classifier_share": 1.0}})


def test_context_hits_count_the_neighbours_the_judge_labels_as_the_prompt_asks(
    judges: tuple[FittedClassifier, FittedClassifier],
) -> None:
    _, content = judges
    vectors = {  # the content half is what the content judge reads
        "circle-1": feature("neon", "circle"),
        "circle-2": feature("hatching", "circle"),
        "star-1": feature("neon", "star"),
    }
    records = [
        {"prompt": "a circle", "neighbors": [{"id": "circle-1"}, {"id": "circle-2"}, {"id": "star-1"}]},
        {"prompt": "a star", "neighbors": [{"id": "circle-1"}, {"id": "star-1"}]},
        {"prompt": "a star", "neighbors": []},  # postfix_text: no neighbours
        {"prompt": "a star", "neighbors": [{"id": "unknown"}]},  # a vector that is not there
        {"prompt": "a moon", "neighbors": [{"id": "star-1"}]},  # a prompt that expects nothing
    ]
    shares = context_hits(records, vectors, {"content": (content, PROMPTS)})["context_content_hits"]
    np.testing.assert_allclose(shares[:2], [2 / 3, 1 / 2])
    assert np.isnan(shares[2:]).all()

"""The style evaluation's pieces: the Frechet distance, the classifier's held-out split, the plan of
requests, and the report's per-style comparison."""

import numpy as np
import pandas as pd
import pytest
from scipy import linalg

from rdm.config import ClassifierParams, ConfigError, config_from_dict
from rdm.evaluation.classifier import fit_classifier, holdout_split
from rdm.evaluation.metrics import frechet_distance
from rdm.evaluation.report import compare_methods, format_table
from rdm.sampling.batch import METHODS, POSTFIX, RETRIEVAL, Request, plan


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
    with pytest.raises(ValueError, match="at least two styles"):
        fit_classifier(features[:30], labels[:30], ClassifierParams(epochs=1))


def test_plan_gives_every_style_and_method_the_same_prompts_and_seeds() -> None:
    requests = plan(["a red star", "a blue moon"], ["neon", "mosaic"], METHODS, 3, seed=10)
    assert len(requests) == 2 * 2 * 3
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
    assert "ukiyo_e (held out)" in printed and "+50%" in printed


def test_postfix_must_say_where_the_style_goes() -> None:
    with pytest.raises(ConfigError, match=r"sample: .*must contain \{style\}"):
        config_from_dict({"sample": {"postfix": "artistic"}})
    sample = config_from_dict({"sample": {"style_words": {"ukiyo_e": "ukiyo-e"}}}).sample
    assert sample.style_text("ukiyo_e") == "ukiyo-e" and sample.style_text("pixel_art") == "pixel art"

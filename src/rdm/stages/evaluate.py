"""`evaluate` stage: the paper's style evaluation of the `sample` stage's images, made to stand review.

1. A style classifier (2-layer perceptron on CLIP image features) is trained on the classifier's part of
   every style collection (`rdm.evaluation.split`: by image id, `evaluate.classifier_share`), which
   retrieval is not meant to return, and its top-1 measured on a held-out part of those images.
2. It judges every sample: per style and method the top-1 accuracy and mean target logit with 95 %
   bootstrap intervals, retrieval minus each postfix baseline over pairs (same prompt and seed), the
   Frechet distance in CLIP space to the classifier's images of the style (never retrieved), and the
   CLIP similarity to the prompt.
3. Floors (the `null` and `other_style` methods) and a ceiling (the classifier on autoencoder
   reconstructions of collection images it never trained on, if `autoencoder.reconstructions` holds them).
4. Content and colour classifiers, trained on labelled training images, say whether each sample shows
   its prompt's content and colour (`prompts.parquet`).
5. Conditioning sensitivity: for retrieval, distance across collections / across seeds.

Styles absent from the training images are reported as held out (zero-shot). Outputs: `evaluate.metrics`
(JSON), CSV tables and PNG charts under `evaluate.plots`, all of it logged to the model's MLflow run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from rdm.artifacts.autoencoder import read_reconstructions
from rdm.artifacts.embeddings import VectorChunks
from rdm.artifacts.evaluation import write_evaluation
from rdm.artifacts.manifest import read_manifest, styles_side_lock
from rdm.artifacts.samples import RETRIEVAL, read_samples
from rdm.config import Config, EvaluateParams
from rdm.embedding import model as clip_model
from rdm.embedding.encode import encode_paths
from rdm.errors import UserError
from rdm.evaluation.charts import draw_charts
from rdm.evaluation.classifier import FittedClassifier, fit_classifier
from rdm.evaluation.labels import colour_from_caption
from rdm.evaluation.report import classifier_report, compare_methods, format_table, style_differences, summary
from rdm.evaluation.scores import ceiling, context_hits, sample_scores, score_table
from rdm.evaluation.sensitivity import conditioning_sensitivity
from rdm.evaluation.split import classifier_ids, classifier_images
from rdm.files import exclusive
from rdm.tracking.runs import flatten


def read_pixels(paths: list[Path]) -> np.ndarray:
    """PNGs -> (N, H, W, 3) uint8; all of one size, as one sampling run draws them."""
    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(np.asarray(image.convert("RGB")))
    sizes = {i.shape for i in images}
    if len(sizes) > 1:
        raise UserError(
            f"samples of different sizes {sorted(sizes)} (e.g. {paths[0]}); sample them in one run"
        )
    return np.stack(images) if images else np.zeros((0, 1, 1, 3), dtype=np.uint8)


def style_classifier(
    styles: pd.DataFrame, chunks: VectorChunks, params: EvaluateParams, device: str
) -> tuple[FittedClassifier, set[str], set[str], dict[str, np.ndarray]]:
    """The style classifier, trained on the classifier's ids of every collection and checked on its
    held-out ids; returns it, the ids it trained on, the ids it borrowed from retrieval (tiny
    collections only), and per style the (M, D) vectors of its images: the Frechet distance's reference,
    a sample of the style that retrieval never returns, so a sample cannot come close by copying."""
    ids, labels = [str(i) for i in styles["id"]], [str(s) for s in styles["style"]]
    share, fraction = params.classifier_share, params.classifier.holdout_fraction
    train, held, borrowed = classifier_images(ids, labels, share, fraction, params.split_seed)
    chosen = styles[styles["id"].isin(train | held)]
    vectors = chunks.vectors_for(list(chosen["id"]))  # (M, D)
    try:
        fitted = fit_classifier(
            vectors,
            [str(s) for s in chosen["style"]],
            params.classifier,
            device=device,
            held_out=chosen["id"].isin(held).to_numpy(),
        )
    except ValueError as exc:
        raise UserError(
            f"evaluate: the style collections are too small for a style classifier: {exc}"
        ) from None
    if borrowed:
        print(
            f"evaluate: {len(borrowed)} images of tiny collections are both retrievable and the classifier's "
            f"(a style had fewer than 2 of classifier_share {share})"
        )
    names = chosen["style"].astype(str).to_numpy()
    references = {s: vectors[names == s] for s in sorted(set(names))}
    return fitted, train, borrowed, references


def _neighbor_vectors(records: list[dict[str, Any]], chunks: list[VectorChunks]) -> dict[str, np.ndarray]:
    """The (D,) vector of every neighbour the samples were conditioned on, from the collections'
    embeddings (style images and D_train); ids found in none are left out."""
    wanted = {str(n["id"]) for r in records for n in r.get("neighbors", [])}
    found: dict[str, np.ndarray] = {}
    for source in chunks:
        ids, vectors = source.read_all()
        found |= {str(i): vectors[n] for n, i in enumerate(ids) if str(i) in wanted}
    return found


def label_judges(
    config: Config, chunks: VectorChunks, device: str
) -> tuple[dict[str, tuple[FittedClassifier, dict[str, str]]], dict[str, Any]]:
    """Content and colour classifiers on the training images' vectors (content: the manifest's column;
    colour: the caption's colour word), each with the label every prompt of `prompts.parquet` expects;
    nothing where the prompts or labels are missing (noted)."""
    prepared = Path(config.prepare.out)
    path = prepared / "prompts.parquet"
    if not path.is_file():
        print(f"evaluate: no {path}, so no content or colour check")
        return {}, {}
    prompts = pd.read_parquet(path)
    train = read_manifest(prepared / "train.parquet")
    colours = sorted(prompts["color"].dropna().astype(str).unique()) if "color" in prompts else []
    labelled = {
        "content": (list(train["content"]), "content"),
        "colour": ([colour_from_caption(c, colours) for c in train["caption"]], "color"),
    }
    judges: dict[str, tuple[FittedClassifier, dict[str, str]]] = {}
    reports: dict[str, Any] = {}
    for name, (labels, column) in labelled.items():
        known = [n for n, label in enumerate(labels) if label is not None and pd.notna(label)]
        if column not in prompts or len({labels[n] for n in known}) < 2:
            print(
                f"evaluate: no {name} check ({path} has no {column!r} column, "
                "or the training images no labels)"
            )
            continue
        fitted = fit_classifier(
            chunks.vectors_for([str(train["id"].iloc[n]) for n in known]),
            [str(labels[n]) for n in known],
            config.evaluate.classifier,
            device=device,
        )
        expected = dict(zip(prompts["prompt"].astype(str), prompts[column].astype(str), strict=True))
        judges[name] = (fitted, expected)
        reports[f"{name}_classifier"] = classifier_report(fitted)
    return judges, reports


@dataclass(frozen=True)
class Judges:
    """What judges the samples: the style classifier and what it was trained on, and the content and
    colour classifiers with the label each prompt expects."""

    style: FittedClassifier
    trained_on: set[str]
    borrowed: set[str]
    references: dict[str, np.ndarray]
    """Per style, the (M, D) vectors of its classifier images: the Frechet distance's reference."""
    labels: dict[str, tuple[FittedClassifier, dict[str, str]]]
    reports: dict[str, Any]
    style_ids: list[str]
    """Every prepared style image: the collections hold those outside the classifier's share."""


@dataclass(frozen=True)
class Drawn:
    """The samples to judge, through the evaluation's CLIP."""

    records: list[dict[str, Any]]
    features: np.ndarray
    """(N, D) CLIP image features, one row per record."""
    prompt_vectors: dict[str, np.ndarray]
    held_out: set[str]
    """Styles absent from the training images."""


def run(config: Config, progress: bool = True, run_name: str | None = None) -> dict[str, Any]:
    """Score the samples in `sample.out`; log to the model's training run, or with `run_name`, to a
    new run of that name tagged with the model (a batch of the sample-styles flow)."""
    params = config.evaluate
    started = time.perf_counter()
    clip = clip_model.load(Path(config.clip.out), params.device)
    style_chunks = VectorChunks(Path(config.embed.out) / "styles", clip.card)
    judges = train_judges(config, clip, style_chunks)
    drawn = encode_samples(config, clip, judges, progress)
    table, comparison, metrics = score(config, clip, style_chunks, judges, drawn)
    metrics |= ceiling_and_sensitivity(config, clip, style_chunks, judges, drawn, progress)
    written = write_report(params, table, comparison, metrics)
    print(
        f"evaluate: style classifier trained on {judges.style.train_size} collection images "
        f"(classifier_share {params.classifier_share}); {len(drawn.records)} samples in "
        f"{time.perf_counter() - started:.0f} s\n{format_table(comparison, metrics)}"
    )
    if config.tracking.enabled:
        log_evaluation(config, metrics, written, drawn.records[0]["model"], run_name)
    return metrics


def train_judges(config: Config, clip: clip_model.Clip, style_chunks: VectorChunks) -> Judges:
    """The style classifier on the classifier's part of the collections, and the label judges."""
    device = str(clip.device)
    # a refresh rewrites the styles manifest before it embeds the new images: wait for it to finish
    with exclusive(styles_side_lock(config.store.path), "the style collections", wait=True):
        styles = read_manifest(Path(config.prepare.out) / "styles.parquet")
        fitted, trained_on, borrowed, references = style_classifier(
            styles, style_chunks, config.evaluate, device
        )
    train_chunks = VectorChunks(Path(config.embed.out) / "train", clip.card)
    labels, reports = label_judges(config, train_chunks, device)
    return Judges(fitted, trained_on, borrowed, references, labels, reports, [str(i) for i in styles["id"]])


def encode_samples(config: Config, clip: clip_model.Clip, judges: Judges, progress: bool) -> Drawn:
    """Every sample with a target style (not unconditional draws) and its prompt, through CLIP."""
    out = Path(config.sample.out)
    records = [r for r in read_samples(out) if r.get("style")]
    features = _encode(clip, [out / r["file"] for r in records], "evaluate", progress)  # (N, D)
    prompts = sorted({r["prompt"] for r in records})
    prompt_vectors = dict(zip(prompts, clip.encode_text(prompts).cpu().numpy(), strict=True))
    trained_styles = set(
        read_manifest(Path(config.prepare.out) / "train.parquet")["style"].dropna().astype(str)
    )
    held_out = {s for s in judges.references if s not in trained_styles} if trained_styles else set()
    if not trained_styles:
        print("evaluate: the training images carry no style labels, so no style is reported as held out")
    return Drawn(records, features, prompt_vectors, held_out)


def score(
    config: Config, clip: clip_model.Clip, style_chunks: VectorChunks, judges: Judges, drawn: Drawn
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """The scores per sample, per style and method, and the summary: (table, comparison, metrics)."""
    params = config.evaluate
    boot = {"resamples": params.bootstrap_resamples, "seed": params.bootstrap_seed}
    records = drawn.records
    samples = sample_scores(records, drawn.features, drawn.prompt_vectors, judges.style, judges.labels)
    d_train_chunks = VectorChunks(Path(config.embed.out) / "d_train", clip.card)
    neighbor_vectors = _neighbor_vectors(records, [style_chunks, d_train_chunks])
    for column, shares in context_hits(records, neighbor_vectors, judges.labels).items():
        samples[column] = shares
    table = score_table(samples, drawn.features, judges.references, drawn.held_out, **boot)
    comparison = compare_methods(table, style_differences(samples, **boot))
    metrics = summary(samples, table, judges.style, **boot)
    kept_back = classifier_ids(judges.style_ids, params.classifier_share, params.split_seed)
    neighbors = [str(n["id"]) for r in records for n in r.get("neighbors", [])]
    metrics["classifier"] |= {
        "classifier_share": params.classifier_share,
        "retrievable_images": len(judges.style_ids) - len(kept_back),
        "borrowed_images": len(judges.borrowed),
        # 0 when the collections leave out `classifier_ids` (as `rdm embed` does): a check that they do
        "neighbors_in_classifier_share": round(sum(n in kept_back for n in neighbors) / len(neighbors), 4)
        if neighbors
        else None,
    }
    return table, comparison, metrics | judges.reports


def ceiling_and_sensitivity(
    config: Config,
    clip: clip_model.Clip,
    style_chunks: VectorChunks,
    judges: Judges,
    drawn: Drawn,
    progress: bool,
) -> dict[str, Any]:
    """The ceiling (the style classifier on autoencoder reconstructions it never trained on) and the
    conditioning sensitivity of the retrieval samples."""
    boot = {"resamples": config.evaluate.bootstrap_resamples, "seed": config.evaluate.bootstrap_seed}
    metrics: dict[str, Any] = {}
    folder = Path(config.autoencoder.reconstructions)
    rebuilt = read_reconstructions(folder)
    if rebuilt is not None:
        unseen = [r for r in rebuilt if str(r.get("id")) not in judges.trained_on]
        if len(unseen) < len(rebuilt):
            print(
                f"evaluate: left out {len(rebuilt) - len(unseen)} reconstructions of images the style "
                "classifier trained on"
            )
        if unseen:
            known = style_chunks.known_ids()
            ids = [str(r.get("id")) for r in unseen]
            originals = style_chunks.vectors_for(ids) if all(i in known for i in ids) else None
            rebuilt_features = _encode(clip, [folder / r["file"] for r in unseen], "ceiling", progress)
            metrics["ceiling"] = ceiling(
                judges.style, rebuilt_features, [str(r["style"]) for r in unseen], originals, **boot
            )
    records, out = drawn.records, Path(config.sample.out)
    retrieval = [n for n, r in enumerate(records) if r["method"] == RETRIEVAL]
    metrics["sensitivity"] = conditioning_sensitivity(
        [records[n]["prompt"] for n in retrieval],
        [records[n]["style"] for n in retrieval],
        [records[n]["seed"] for n in retrieval],
        read_pixels([out / records[n]["file"] for n in retrieval]),
        drawn.features[retrieval],
    )
    return metrics


def write_report(
    params: EvaluateParams, table: pd.DataFrame, comparison: pd.DataFrame, metrics: dict[str, Any]
) -> list[Path]:
    """`evaluate.metrics`, the CSV tables and the charts under `evaluate.plots`; returns every file."""
    written = write_evaluation(Path(params.plots), Path(params.metrics), table, comparison, metrics)
    return [*written, *draw_charts(comparison, Path(params.plots))]


def log_evaluation(
    config: Config, metrics: dict[str, Any], files: list[Path], model: dict[str, Any], run_name: str | None
) -> None:
    """Into the model's training run, or with `run_name` into a new run tagged with the model."""
    from rdm.tracking.runs import log_results

    out = Path(config.sample.out)
    run_id = log_results(
        config.tracking,
        None if run_name else model.get("run_id"),
        {
            f"eval/{key}": float(value)
            for key, value in flatten(metrics).items()
            if isinstance(value, int | float) and not pd.isna(value)
        },
        {
            "evaluation": files,
            "evaluation/grids": sorted(out.glob("grid-*.png")),
        },
        run_name=run_name or "evaluate",
        tags={f"model.{key}": str(value) for key, value in model.items()} if run_name else None,
    )
    print(f"evaluate: logged to MLflow run {run_id}")


def _encode(clip: clip_model.Clip, paths: list[Path], desc: str, progress: bool) -> np.ndarray:
    """(N, D) CLIP image features of the files, in order."""
    if not paths:
        return np.zeros((0, clip.card.embed_dim), dtype=np.float32)
    return np.concatenate(list(encode_paths(clip, paths, 256, "auto", desc, progress)))

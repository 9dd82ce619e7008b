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

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from rdm.config import Config, EvaluateParams
from rdm.data.manifest import read_manifest
from rdm.embedding import model as clip_model
from rdm.embedding.encode import encode_paths
from rdm.embedding.vectors import VectorChunks
from rdm.errors import UserError
from rdm.evaluation.charts import draw_charts
from rdm.evaluation.classifier import FittedClassifier, fit_classifier
from rdm.evaluation.labels import colour_from_caption
from rdm.evaluation.report import classifier_report, compare_methods, format_table, style_differences, summary
from rdm.evaluation.scores import ceiling, context_hits, sample_scores, score_table
from rdm.evaluation.sensitivity import conditioning_sensitivity
from rdm.evaluation.split import classifier_ids, classifier_images
from rdm.files import write_json
from rdm.sampling.batch import RECORDS, RETRIEVAL
from rdm.tracking.runs import flatten

RECONSTRUCTIONS = "reconstructions.jsonl"
"""In `autoencoder.reconstructions`: one JSON per line, {file (relative to the folder), style, id?}."""


def read_samples(folder: Path) -> list[dict[str, Any]]:
    path = folder / RECORDS
    if not path.is_file():
        raise UserError(f"{path}: no samples to evaluate; run `dvc repro sample` (or `rdm sample-styles`)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_reconstructions(folder: Path) -> list[dict[str, Any]] | None:
    """The autoencoder's reconstructions manifest, or None (with a note) where there is none."""
    path = folder / RECONSTRUCTIONS
    if not path.is_file():
        print(f"evaluate: no {path}, so no ceiling row (the autoencoder stage writes it)")
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for n, row in enumerate(rows):
        if "file" not in row or "style" not in row:
            raise UserError(f"{path} line {n + 1}: needs the fields file and style (and optionally id)")
        if not (folder / row["file"]).is_file():
            raise UserError(f"{path} line {n + 1}: {folder / row['file']} does not exist")
    return rows


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


def run(config: Config, progress: bool = True, run_name: str | None = None) -> dict[str, Any]:
    """Score the samples in `sample.out`; log to the model's training run, or with `run_name`, to a
    new run of that name tagged with the model (a batch of the sample-styles flow)."""
    params = config.evaluate
    started = time.perf_counter()
    clip = clip_model.load(Path(config.clip.out), params.device)
    device = str(clip.device)
    prepared = Path(config.prepare.out)
    embeddings = Path(config.embed.out)
    boot = {"resamples": params.bootstrap_resamples, "seed": params.bootstrap_seed}

    # 1. the style classifier, on the classifier's part of the collections
    styles = read_manifest(prepared / "styles.parquet")
    style_chunks = VectorChunks(embeddings / "styles", clip.card)
    fitted, trained_on, borrowed, references = style_classifier(styles, style_chunks, params, device)
    judges, judge_reports = label_judges(config, VectorChunks(embeddings / "train", clip.card), device)

    # 2. every sample through the same CLIP
    out = Path(config.sample.out)
    records = [r for r in read_samples(out) if r.get("style")]  # not unconditional draws: no target style
    features = _encode(clip, [out / r["file"] for r in records], "evaluate", progress)  # (N, D)
    prompts = sorted({r["prompt"] for r in records})
    prompt_vectors = dict(zip(prompts, clip.encode_text(prompts).cpu().numpy(), strict=True))
    trained_styles = set(read_manifest(prepared / "train.parquet")["style"].dropna().astype(str))
    held_out = {s for s in references if s not in trained_styles} if trained_styles else set()
    if not trained_styles:
        print("evaluate: the training images carry no style labels, so no style is reported as held out")

    # 3. the scores, per sample, per style and method, and the summary
    samples = sample_scores(records, features, prompt_vectors, fitted, judges)
    neighbor_vectors = _neighbor_vectors(
        records, [style_chunks, VectorChunks(embeddings / "d_train", clip.card)]
    )
    for column, shares in context_hits(records, neighbor_vectors, judges).items():
        samples[column] = shares
    table = score_table(samples, features, references, held_out, **boot)
    comparison = compare_methods(table, style_differences(samples, **boot))
    metrics = summary(samples, table, fitted, **boot)
    kept_back = classifier_ids(styles["id"], params.classifier_share, params.split_seed)
    neighbors = [str(n["id"]) for r in records for n in r.get("neighbors", [])]
    metrics["classifier"] |= {
        "classifier_share": params.classifier_share,
        "retrievable_images": len(styles) - len(kept_back),
        "borrowed_images": len(borrowed),
        # 0 when the collections leave out `classifier_ids` (as `rdm embed` does): a check that they do
        "neighbors_in_classifier_share": round(sum(n in kept_back for n in neighbors) / len(neighbors), 4)
        if neighbors
        else None,
    }
    metrics |= judge_reports

    # 4. the ceiling, and the conditioning sensitivity
    folder = Path(config.autoencoder.reconstructions)
    rebuilt = read_reconstructions(folder)
    if rebuilt is not None:
        unseen = [r for r in rebuilt if str(r.get("id")) not in trained_on]
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
                fitted, rebuilt_features, [str(r["style"]) for r in unseen], originals, **boot
            )
    retrieval = [n for n, r in enumerate(records) if r["method"] == RETRIEVAL]
    metrics["sensitivity"] = conditioning_sensitivity(
        [records[n]["prompt"] for n in retrieval],
        [records[n]["style"] for n in retrieval],
        [records[n]["seed"] for n in retrieval],
        read_pixels([out / records[n]["file"] for n in retrieval]),
        features[retrieval],
    )

    # 5. the report
    plots = Path(params.plots)
    plots.mkdir(parents=True, exist_ok=True)
    table.to_csv(plots / "styles.csv", index=False, float_format="%.4f")
    comparison.to_csv(plots / "style_accuracy.csv", index=False, float_format="%.4f")
    charts = draw_charts(comparison, plots)
    write_json(Path(params.metrics), metrics)

    print(
        f"evaluate: style classifier trained on {fitted.train_size} collection images (classifier_share "
        f"{params.classifier_share}); {len(records)} samples in {time.perf_counter() - started:.0f} s\n"
        f"{format_table(comparison, metrics)}"
    )
    if config.tracking.enabled:
        from rdm.tracking.runs import log_results

        model = records[0]["model"]
        run_id = log_results(
            config.tracking,
            None if run_name else model.get("run_id"),
            {
                f"eval/{key}": float(value)
                for key, value in flatten(metrics).items()
                if isinstance(value, int | float) and not pd.isna(value)
            },
            {
                "evaluation": [
                    Path(params.metrics),
                    plots / "styles.csv",
                    plots / "style_accuracy.csv",
                    *charts,
                ],
                "evaluation/grids": sorted(out.glob("grid-*.png")),
            },
            run_name=run_name or "evaluate",
            tags={f"model.{key}": str(value) for key, value in model.items()} if run_name else None,
        )
        print(f"evaluate: logged to MLflow run {run_id}")
    return metrics


def _encode(clip: clip_model.Clip, paths: list[Path], desc: str, progress: bool) -> np.ndarray:
    """(N, D) CLIP image features of the files, in order."""
    if not paths:
        return np.zeros((0, clip.card.embed_dim), dtype=np.float32)
    return np.concatenate(list(encode_paths(clip, paths, 256, "auto", desc, progress)))

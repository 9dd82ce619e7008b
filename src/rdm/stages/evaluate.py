"""`evaluate` stage: the paper's style evaluation of the `sample` stage's images.

A style classifier (2-layer perceptron on CLIP image features) is trained on the style collections
and checked on a held-out share of them; it then judges every sample. Per style and method: top-1
accuracy, mean logit of the target style, Frechet distance to the style's collection in CLIP space,
and CLIP similarity to the prompt. Styles absent from the training images are reported as held out
(zero-shot). Outputs: `evaluate.metrics` (JSON), CSV tables and PNG charts under `evaluate.plots`,
all of it logged to the model's MLflow training run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from rdm.config import Config
from rdm.data.manifest import read_manifest
from rdm.embedding import model as clip_model
from rdm.embedding.encode import encode_paths
from rdm.embedding.vectors import VectorChunks
from rdm.errors import UserError
from rdm.evaluation.classifier import fit_classifier
from rdm.evaluation.report import compare_methods, draw_charts, format_table, score_samples, summary
from rdm.files import write_json
from rdm.sampling.batch import RECORDS
from rdm.tracking.runs import flatten


def read_samples(folder: Path) -> list[dict[str, Any]]:
    path = folder / RECORDS
    if not path.is_file():
        raise UserError(f"{path}: no samples to evaluate; run `dvc repro sample` (or `rdm sample-styles`)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run(config: Config, progress: bool = True, run_name: str | None = None) -> dict[str, Any]:
    """Score the samples in `sample.out`; log to the model's training run, or with `run_name`, to a
    new run of that name tagged with the model (a batch of the sample-styles flow)."""
    params = config.evaluate
    started = time.perf_counter()
    clip = clip_model.load(Path(config.clip.out), params.device)
    prepared = Path(config.prepare.out)

    # 1. the style classifier, on the collections' CLIP vectors
    styles = read_manifest(prepared / "styles.parquet")
    vectors = VectorChunks(Path(config.embed.out) / "styles", clip.card).vectors_for(list(styles["id"]))
    labels = [str(s) for s in styles["style"]]
    fitted = fit_classifier(vectors, labels, params.classifier, device=str(clip.device))
    collections = {s: vectors[np.asarray(labels) == s] for s in set(labels)}

    # 2. every sample through the same CLIP
    out = Path(config.sample.out)
    records = read_samples(out)
    features = np.concatenate(
        list(encode_paths(clip, [out / r["file"] for r in records], 256, "auto", "evaluate", progress))
    )
    prompts = sorted({r["prompt"] for r in records})
    prompt_vectors = dict(zip(prompts, clip.encode_text(prompts).cpu().numpy(), strict=True))
    trained_styles = set(read_manifest(prepared / "train.parquet")["style"].dropna().astype(str))
    held_out = {s for s in collections if s not in trained_styles} if trained_styles else set()
    if not trained_styles:
        print("evaluate: the training images carry no style labels, so no style is reported as held out")

    # 3. the report
    table = score_samples(records, features, prompt_vectors, fitted, collections, held_out)
    comparison = compare_methods(table)
    metrics = summary(table, fitted)
    plots = Path(params.plots)
    plots.mkdir(parents=True, exist_ok=True)
    table.to_csv(plots / "styles.csv", index=False, float_format="%.4f")
    comparison.to_csv(plots / "style_accuracy.csv", index=False, float_format="%.4f")
    charts = draw_charts(comparison, plots)
    write_json(Path(params.metrics), metrics)

    print(
        f"evaluate: classifier top-1 {fitted.holdout_accuracy:.1%} on {fitted.holdout_size} held-out "
        f"collection images (chance {1 / len(fitted.classifier.styles):.1%}); {len(records)} samples "
        f"in {time.perf_counter() - started:.0f} s\n{format_table(comparison)}"
    )
    if config.tracking.enabled:
        from rdm.tracking.runs import log_results

        model = records[0]["model"]
        run_id = log_results(
            config.tracking,
            None if run_name else model.get("run_id"),
            {f"eval/{key}": value for key, value in flatten(metrics).items() if value is not None},
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

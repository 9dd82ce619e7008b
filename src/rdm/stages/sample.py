"""`sample` stage: for every style collection, `sample.per_style` images by retrieval from it and as
many by the postfix baseline, from the trained model `train.out`, for the `evaluate` stage to score.

Output (`sample.out`): images/*.png, samples.jsonl (one line per image: prompt, style, method, seed,
neighbours, model) and grid-<method>.png (styles as columns, prompts and seeds as rows).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rdm.config import Config, PrepareParams
from rdm.data.manifest import read_manifest
from rdm.errors import UserError
from rdm.models.package import ModelError, RetrievalDiffusionModel, load_model
from rdm.sampling.batch import METHODS, StylizedSampler, plan
from rdm.sampling.grid import style_grid


def evaluation_prompts(params: PrepareParams) -> list[str]:
    path = Path(params.out) / "prompts.parquet"
    if params.sources.prompts is None or not path.is_file():
        raise UserError(
            f"{path}: no evaluation prompts; set prepare.sources.prompts to a CSV or JSONL file with a "
            "`prompt` column and run `dvc repro prepare`"
        )
    import pandas as pd

    return [str(p) for p in pd.read_parquet(path, columns=["prompt"])["prompt"]]


def style_names(params: PrepareParams) -> list[str]:
    """The styles with a collection, in sorted order."""
    path = Path(params.out) / "styles.parquet"
    if not path.is_file():
        raise UserError(f"{path}: no style manifest; run `dvc repro prepare`")
    return sorted(str(s) for s in read_manifest(path)["style"].dropna().unique())


@contextmanager
def open_sampler(
    config: Config, model: RetrievalDiffusionModel, model_info: dict[str, Any], k: int
) -> Iterator[StylizedSampler]:
    """A sampler over the pipeline's CLIP and store; refuses a CLIP other than the model's."""
    from rdm.embedding.model import load as load_clip
    from rdm.retrieval.search import Retriever
    from rdm.retrieval.store import open_store
    from rdm.sampling.context import ContextBuilder

    clip = load_clip(Path(config.clip.out), config.sample.device)
    if clip.card.fingerprint != model.card.clip_fingerprint:
        raise ModelError(
            f"the model was trained with CLIP {model.card.clip_model} [{model.card.clip_fingerprint}] but "
            f"{config.clip.out} holds {clip.card.model} [{clip.card.fingerprint}]; sample with the CLIP "
            "the model was trained with, or retrain it (`dvc repro train`)"
        )
    with open_store(config.store) as store:
        yield StylizedSampler(model, ContextBuilder(Retriever(store, clip), k), config.sample, model_info)


def write_grids(records: Sequence[dict[str, Any]], out: Path, max_rows: int) -> list[Path]:
    """One grid per method in `records`: `out/grid-<method>.png`."""
    paths = []
    for method in dict.fromkeys(r["method"] for r in records):
        path = out / f"grid-{method}.png"
        style_grid([r for r in records if r["method"] == method], out, max_rows).save(path)
        paths.append(path)
    return paths


def run(config: Config, progress: bool = True) -> dict[str, Any]:
    params = config.sample
    started = time.perf_counter()
    model = load_model(Path(config.train.out), params.device)
    if params.compile:
        model.compile()
    info = {"uri": config.train.out, "version": None, "run_id": model.card.run_id, "steps": model.card.steps}
    requests = plan(
        evaluation_prompts(config.prepare),
        style_names(config.prepare),
        METHODS,
        params.per_style,
        params.seed,
    )
    out = Path(params.out)
    if out.exists():
        shutil.rmtree(out)
    with open_sampler(config, model, info, params.k) as sampler:
        drawing = time.perf_counter()
        records = sampler.draw(requests, out, progress)
        drawn = time.perf_counter() - drawing
    write_grids(records, out, params.grid_rows)
    print(
        f"sample: {len(records)} images ({params.per_style} per style and method, {params.sampler} "
        f"{params.steps} steps, scale {params.guidance_scale}, k {params.k}) in "
        f"{time.perf_counter() - started:.0f} s ({len(records) / drawn:.1f} img/s) -> {out}"
    )
    return {"images": len(records), "seconds": round(time.perf_counter() - started, 1)}

"""`sample` stage: for every style collection, `sample.per_style` images by each of `sample.methods`
(retrieval from it, the postfix baseline on D_train, the postfix text alone) and `sample.floor_per_style`
of each floor (the null context; retrieval from another style's collection), from the trained model
`train.out`, for the `evaluate` stage to score.

Output (`sample.out`): images/*.png, samples.jsonl (one line per image: prompt, style, method, seed,
collection, context, neighbours, model) and grid-<method>.png (styles as columns, prompts and seeds
as rows).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from rdm.artifacts.manifest import read_manifest
from rdm.artifacts.samples import FLOORS
from rdm.config import Config, PrepareParams
from rdm.errors import UserError
from rdm.sampling.batch import Request, open_sampler, plan
from rdm.sampling.grid import write_grids
from rdm.sampling.source import open_model


def evaluation_prompts(params: PrepareParams) -> list[str]:
    path = Path(params.out) / "prompts.parquet"
    if params.sources.prompts is None or not path.is_file():
        raise UserError(
            f"{path}: no evaluation prompts; set prepare.sources.prompts to a CSV or JSONL file with a "
            "`prompt` column and run `dvc repro prepare-styles`"
        )
    import pandas as pd

    prompts = [str(p) for p in pd.read_parquet(path, columns=["prompt"])["prompt"] if str(p).strip()]
    if not prompts:
        raise UserError(f"{path}: the evaluation prompts are empty; add prompts to {params.sources.prompts}")
    return prompts


def style_names(params: PrepareParams) -> list[str]:
    """The styles with a collection, in sorted order."""
    path = Path(params.out) / "styles.parquet"
    if not path.is_file():
        raise UserError(f"{path}: no style manifest; run `dvc repro prepare-styles`")
    return sorted(str(s) for s in read_manifest(path)["style"].dropna().unique())


def run(
    config: Config,
    progress: bool = True,
    model: str | None = None,
    prompts: list[str] | None = None,
    styles: list[str] | None = None,
) -> dict[str, Any]:
    """Sample every style by every method and floor. The stage uses the model just trained
    (`train.out`), the evaluation prompts and every style; a batch (the sample-styles flow) may name a
    registered `model`, its own `prompts` and a subset of `styles`."""
    params = config.sample
    started = time.perf_counter()
    rdm_model, info = open_model(model or config.train.out, config, params.device)
    if params.compile:
        rdm_model.compile()
    requests = requests_for(config, prompts, styles)
    out = Path(params.out)
    if out.exists():
        shutil.rmtree(out)
    with open_sampler(config, rdm_model, info, params.k) as sampler:
        drawing = time.perf_counter()
        records = sampler.draw(requests, out, progress)
        drawn = time.perf_counter() - drawing
    write_grids(records, out, params.grid_rows)
    drawn_floors = [f for f in FLOORS if any(r.method == f for r in requests)]
    print(
        f"sample: {len(records)} images ({params.per_style} per style of {', '.join(params.methods)}; "
        f"{params.floor_per_style} of {', '.join(drawn_floors) or 'no floors'}; {params.sampler} "
        f"{params.steps} steps, scale {params.guidance_scale}, k {params.k}) in "
        f"{time.perf_counter() - started:.0f} s ({len(records) / drawn:.1f} img/s) -> {out}"
    )
    return {"images": len(records), "seconds": round(time.perf_counter() - started, 1)}


def requests_for(config: Config, prompts: list[str] | None, styles: list[str] | None) -> list[Request]:
    """The plan of `sample`: the prompts (default the evaluation's) x the styles (default every one
    with a collection) x the methods, then the floors; a style without a collection is refused."""
    params = config.sample
    known = style_names(config.prepare)
    unknown = sorted(set(styles or []) - set(known))
    if unknown:
        raise UserError(f"no style collection for {unknown}; the styles are {known}")
    return plan(
        prompts or evaluation_prompts(config.prepare),
        styles or known,
        params.methods,
        params.per_style,
        params.seed,
        params.floor_per_style,
        known,
    )

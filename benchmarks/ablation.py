"""Ablations as MLflow runs: one stage run with dotted params changes, its outputs kept apart from the
pipeline's, its params and the stage's report logged to the MLflow experiment `ablations`.

    python benchmarks/ablation.py autoencoder --name ae-grad --set autoencoder.gradient_weight=1
    python benchmarks/ablation.py train --name snr5 --set train.min_snr_gamma=5
    python benchmarks/ablation.py sample --name s3 --model ablations/snr5/rdm --set sample.guidance_scale=3

`train` ablations sample and evaluate too (with `--per-style`), so the run holds the style table's
means; `sample` ablations sample and evaluate a trained model folder with other sampling settings.
Outputs go under `ablations/<name>/`; the last line printed is the run's metrics as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import yaml

from rdm.config import Config, config_from_dict
from rdm.tracking.runs import flatten


def parse_value(text: str) -> Any:
    return yaml.safe_load(text)


def with_changes(base: dict[str, Any], changes: list[str]) -> dict[str, Any]:
    for change in changes:
        key, _, value = change.partition("=")
        node = base
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = parse_value(value)
    return base


def isolate(data: dict[str, Any], folder: Path, stage: str) -> None:
    """Point the stage's outputs into `folder`, leaving the pipeline's own outputs alone."""
    ae, train, sample, evaluate = data["autoencoder"], data["train"], data["sample"], data["evaluate"]
    if stage == "autoencoder":
        ae["out"], ae["metrics"] = str(folder / "autoencoder"), str(folder / "autoencoder.json")
        ae["reconstructions"], ae["latents"] = str(folder / "reconstructions"), str(folder / "latents.npz")
    train["out"], train["checkpoints"] = str(folder / "rdm"), str(folder / "checkpoints")
    train["metrics"] = str(folder / "train.json")
    sample["out"] = str(folder / "samples")
    evaluate["metrics"], evaluate["plots"] = str(folder / "evaluate.json"), str(folder / "evaluate")
    data["tracking"]["experiment"] = "ablations"


def numbers(report: dict[str, Any], prefix: str = "") -> dict[str, float]:
    found: dict[str, float] = {}
    for key, value in report.items():
        if isinstance(value, dict):
            found |= numbers(value, f"{prefix}{key}.")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            found[f"{prefix}{key}"] = float(value)
    return found


def run_stage(config: Config, stage: str, model: str | None) -> dict[str, Any]:
    if stage == "autoencoder":
        from rdm.stages import autoencoder, reconstruct

        report = autoencoder.run(config.autoencoder, Path(config.prepare.out))
        return report | {"styles": reconstruct.run(config.autoencoder, Path(config.prepare.out))}
    from rdm.stages import evaluate, sample, train

    report = train.run(config) if stage == "train" else {}
    report |= {"sample": sample.run(config, model=model or config.train.out)}
    evaluated = evaluate.run(config, run_name="ablation-evaluate")
    return report | {"evaluate": evaluated}


def main() -> None:
    args = parse_args()
    folder = Path("ablations") / args.name
    data = yaml.safe_load(Path("params.yaml").read_text())
    data = with_changes(data, [*args.set, f"sample.per_style={args.per_style}"])
    isolate(data, folder, args.stage)
    config = config_from_dict(data, f"params.yaml + {args.set}")
    started = time.perf_counter()
    report = run_stage(config, args.stage, args.model)
    metrics = numbers(report) | {"seconds": time.perf_counter() - started}
    log_run(config, args.stage, args.name, args.set, metrics)
    print(json.dumps(metrics))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("stage", choices=["autoencoder", "train", "sample"])
    parser.add_argument("--model", help="sample: the model folder to sample (default: this run's train.out)")
    parser.add_argument("--name", required=True)
    parser.add_argument(
        "--set", nargs="+", action="extend", default=[], help="dotted params changes: train.k=8 (repeatable)"
    )
    parser.add_argument("--per-style", type=int, default=20, help="samples per style and method (train)")
    return parser.parse_args()


def log_run(config: Config, stage: str, name: str, changes: list[str], metrics: dict[str, float]) -> None:
    """One run in the MLflow experiment `ablations`: the changes, the stage's params and its metrics."""
    import mlflow

    mlflow.set_tracking_uri(config.tracking.tracking_uri)
    mlflow.set_experiment("ablations")
    with mlflow.start_run(run_name=f"{stage}:{name}"):
        mlflow.log_params({"stage": stage, "changes": " ".join(changes)})
        mlflow.log_params(
            {k: v for k, v in flatten(config.model_dump(mode="json")).items() if k.startswith(stage)}
        )
        mlflow.log_metrics({k.replace("/", "_"): v for k, v in metrics.items()})


if __name__ == "__main__":
    main()

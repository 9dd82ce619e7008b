"""Stylized sampling and the style evaluation on a tiny trained pipeline: the database swap, seeds,
the baselines and floors, unconditional pseudo-queries, `rdm sample` from the registered model, and
the evaluation report."""

import contextlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from rdm.artifacts.model import ModelError
from rdm.artifacts.samples import FLOORS, METHODS, NULL, OTHER_STYLE, POSTFIX, POSTFIX_TEXT, RETRIEVAL
from rdm.config import Config, load_config
from rdm.evaluation.classifier import fit_classifier
from rdm.models.pipeline import load_pipeline
from rdm.sampling.batch import Request, open_sampler, plan
from rdm.stages import evaluate, sample
from tests.support import rdm_env, run_pipeline, tracking_client, work_in, write_params

pytestmark = pytest.mark.slow

STYLES = ["hatching", "mosaic", "neon", "pixel_art", "pointillism", "ukiyo_e", "watercolor"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Config]:
    """The tiny pipeline through `train`, with 24 images per style collection, tracked in ./mlflow.db."""
    root = tmp_path_factory.mktemp("sampling")
    changes = {
        "generate": {"style_images": 24},
        "clip": {"epochs": 10},
    }
    with contextlib.chdir(root):
        config = load_config(write_params(root, **changes))
        run_pipeline(config, train_model=True)
    return root, config


@pytest.fixture
def in_trained(trained: tuple[Path, Config], monkeypatch: pytest.MonkeyPatch) -> Config:
    work_in(trained[0], monkeypatch)
    return trained[1]


def test_swapping_the_collection_changes_the_neighbours_to_that_style_and_nothing_else(
    in_trained: Config,
) -> None:
    model = load_pipeline(Path(in_trained.train.out), "cpu")
    with open_sampler(in_trained, model, {"uri": "test"}, k=5) as sampler:
        neon = sampler.contexts.for_texts(["a red circle"], "style-neon")
        mosaic = sampler.contexts.for_texts(["a red circle"], "style-mosaic")
        records = sampler.draw(
            [Request("a red circle", "neon", RETRIEVAL, 7), Request("a red circle", "mosaic", RETRIEVAL, 7)],
            Path("swap"),
            progress=False,
        )
    assert neon.context.shape == mosaic.context.shape == (1, 6, model.card.context_dim)
    assert {hit.payload["style"] for hit in neon.hits[0]} == {"neon"}
    assert {hit.payload["style"] for hit in mosaic.hits[0]} == {"mosaic"}
    assert np.array_equal(neon.context[0, 0], mosaic.context[0, 0])  # the same text token
    assert not np.allclose(neon.context[0, 1:], mosaic.context[0, 1:])

    changed = {key for key in records[0] if records[0][key] != records[1][key]}
    assert changed == {"style", "collection", "neighbors", "file"}
    assert {n["style"] for n in records[1]["neighbors"]} == {"mosaic"}


def test_the_same_seed_gives_the_same_image(in_trained: Config) -> None:
    model = load_pipeline(Path(in_trained.train.out), "cpu")
    requests = [Request("a blue heart", "neon", RETRIEVAL, 3), Request("a blue heart", "neon", RETRIEVAL, 4)]
    with open_sampler(in_trained, model, {"uri": "test"}, k=5) as sampler:
        first = sampler.draw(requests, Path("seed-a"), progress=False)
        again = sampler.draw(requests[:1], Path("seed-b"), progress=False)  # alone, not in a batch of two
    pixels = [
        np.asarray(Image.open(folder / r["file"]))
        for folder, r in [(Path("seed-a"), first[0]), (Path("seed-b"), again[0]), (Path("seed-a"), first[1])]
    ]
    assert np.array_equal(pixels[0], pixels[1])
    assert not np.array_equal(pixels[0], pixels[2])


def test_rdm_sample_draws_from_the_registered_model(trained: tuple[Path, Config]) -> None:
    root, _ = trained

    def rdm(*args: str) -> str:
        done = subprocess.run(["rdm", *args], cwd=root, env=rdm_env(), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    out = rdm(
        "sample",
        "--prompt",
        "a red star",
        "--style",
        "neon",
        "--style",
        "watercolor",
        "-n",
        "2",
        "-k",
        "5",
        "--steps",
        "3",
        "--out",
        "cli-samples",
    )
    assert "from models:/rdm@latest (version 1" in out
    records = [json.loads(line) for line in (root / "cli-samples" / "samples.jsonl").read_text().splitlines()]
    assert [(r["style"], r["seed"]) for r in records] == [
        ("neon", 0),
        ("neon", 1),
        ("watercolor", 0),
        ("watercolor", 1),
    ]
    assert all(r["model"]["version"] == "1" and r["model"]["run_id"] for r in records)
    assert all(len(r["neighbors"]) == 5 and r["k"] == 5 and r["steps"] == 3 for r in records)
    assert all((root / "cli-samples" / r["file"]).is_file() for r in records)
    with Image.open(root / "cli-samples" / "grid-retrieval.png") as grid:
        assert grid.width > 2 * 32 and grid.height > 2 * 32  # two styles across, two seeds down

    rdm(
        "sample",
        "--prompt",
        "a red star",
        "--style",
        "neon",
        "--postfix",
        "-n",
        "1",
        "-k",
        "5",
        "--steps",
        "3",
        "--sampler",
        "dpm",
        "--model",
        "models/rdm",
        "--out",
        "cli-postfix",
    )
    (postfix,) = [
        json.loads(line) for line in (root / "cli-postfix" / "samples.jsonl").read_text().splitlines()
    ]
    assert postfix["collection"] == "d_train" and postfix["query"] == "a red star in the style of neon"
    assert postfix["sampler"] == "dpm" and postfix["model"]["uri"] == "models/rdm"

    image = sorted((root / "data" / "prepared" / "images").rglob("*.png"))[0]
    rdm("sample", "--image", str(image), "--style", "mosaic", "-n", "1", "-k", "5", "--steps", "3",
        "--out", "cli-image")  # fmt: skip
    (by_image,) = [
        json.loads(line) for line in (root / "cli-image" / "samples.jsonl").read_text().splitlines()
    ]
    assert by_image["image"] == by_image["query"] == str(image)
    assert {n["style"] for n in by_image["neighbors"]} == {"mosaic"}


def test_baselines_and_floors_draw_with_the_trained_model(in_trained: Config) -> None:
    """postfix_text is one token, null is the same image for every style, other_style follows the
    next style's collection; contexts of 6 and 1 tokens are drawn in batches of their own."""
    model = load_pipeline(Path(in_trained.train.out), "cpu")
    requests = plan(["a red star"], ["neon", "mosaic"], METHODS, 2, 0, floor_per_style=1, known=STYLES)
    with open_sampler(in_trained, model, {"uri": "test"}, k=5) as sampler:
        records = sampler.draw(requests, Path("floors"), progress=False)
    assert {(r["style"], r["method"]) for r in records} == {
        (s, m) for s in ["neon", "mosaic"] for m in (*METHODS, *FLOORS)
    }

    def one(style: str, method: str) -> dict:
        return next(r for r in records if (r["style"], r["method"], r["seed"]) == (style, method, 0))

    text = one("neon", POSTFIX_TEXT)
    assert text["neighbors"] == [] and text["collection"] is None and text["context"] == "query_only"
    assert {n["style"] for n in one("neon", OTHER_STYLE)["neighbors"]} == {"pixel_art"}  # after neon
    assert one("mosaic", OTHER_STYLE)["collection"] == "style-neon"
    null = [np.asarray(Image.open(Path("floors") / one(s, NULL)["file"])) for s in ["neon", "mosaic"]]
    retrieval = np.asarray(Image.open(Path("floors") / one("neon", RETRIEVAL)["file"]))
    assert np.array_equal(null[0], null[1]) and not np.array_equal(null[0], retrieval)
    assert Path("floors/images").is_dir() and len(list(Path("floors/images").iterdir())) == len(records)


def test_rdm_sample_unconditional_draws_pseudo_queries_from_the_most_retrieved(
    in_trained: Config, capsys: pytest.CaptureFixture
) -> None:
    from rdm.cli import main
    from rdm.sampling.unconditional import most_retrieved, retrieval_counts

    args = ["sample", "--unconditional", "--top-m", "0.25", "-n", "3", "-k", "5", "--steps", "2"]
    assert main([*args, "--model", "models/rdm", "--style", "neon", "--out", "uncond"]) == 0
    assert "pseudo-queries from the" in capsys.readouterr().out
    records = [json.loads(line) for line in Path("uncond/samples.jsonl").read_text().splitlines()]
    top = most_retrieved(retrieval_counts(Path(in_trained.neighbors.out)), 0.25)
    assert [r["method"] for r in records] == ["unconditional"] * 3
    assert all(r["query"] == r["query_id"] == r["prompt"] and r["query"] in top for r in records)
    assert all(r["collection"] == "style-neon" and len(r["neighbors"]) == 5 for r in records)
    assert {n["style"] for r in records for n in r["neighbors"]} == {"neon"}
    assert Path("uncond/grid-unconditional.png").is_file()

    assert main([*args, "--model", "models/rdm", "--out", "uncond-d-train"]) == 0  # D_train by default
    lines = Path("uncond-d-train/samples.jsonl").read_text().splitlines()
    again = [json.loads(line) for line in lines]
    assert [r["query"] for r in again] == [r["query"] for r in records]  # the same seed, the same queries
    assert {r["collection"] for r in again} == {"d_train"} and {r["style"] for r in again} == {None}


def test_a_training_checkpoint_samples_with_its_ema_weights(in_trained: Config) -> None:
    from rdm.sampling.source import open_model

    folder, folder_info = open_model(in_trained.train.out, in_trained, "cpu")
    checkpoint, info = open_model(str(Path(in_trained.train.checkpoints) / "last.ckpt"), in_trained, "cpu")
    assert info["steps"] == folder_info["steps"] == in_trained.train.max_steps
    for name, weight in folder.unet.state_dict().items():  # the last checkpoint holds the saved EMA model
        assert torch.equal(weight, checkpoint.unet.state_dict()[name]), name
    with pytest.raises(ModelError, match="no such checkpoint"):
        open_model("models/checkpoints/missing.ckpt", in_trained, "cpu")
    with pytest.raises(ModelError, match="not found in the MLflow registry"):
        open_model("models:/no-such-model@latest", in_trained, "cpu")


def test_the_classifier_beats_chance_on_held_out_style_images(in_trained: Config) -> None:
    from rdm.artifacts.clip import read_card
    from rdm.artifacts.embeddings import VectorChunks
    from rdm.artifacts.manifest import read_manifest

    styles = read_manifest(Path(in_trained.prepare.out) / "styles.parquet")
    vectors = VectorChunks(Path(in_trained.embed.out) / "styles", read_card(Path(in_trained.clip.out)))
    fitted = fit_classifier(
        vectors.vectors_for(list(styles["id"])), list(styles["style"]), in_trained.evaluate.classifier
    )
    assert fitted.classifier.styles == STYLES
    assert fitted.holdout_size == 35  # 5 of each style's 24 images held out
    assert fitted.holdout_accuracy >= 3 / len(STYLES), fitted.per_style_accuracy  # chance is 1/7


def test_evaluation_reports_every_style_and_method(in_trained: Config) -> None:
    in_trained = in_trained.model_copy(
        update={"sample": in_trained.sample.model_copy(update={"floor_per_style": 2})}
    )
    sample.run(in_trained, progress=False)
    records = [json.loads(line) for line in Path("data/samples/samples.jsonl").read_text().splitlines()]
    assert len(records) == len(STYLES) * (len(METHODS) * 3 + len(FLOORS) * 2)
    assert {r["collection"] for r in records if r["method"] == POSTFIX} == {"d_train"}
    assert all(Path(f"data/samples/grid-{m}.png").is_file() for m in (*METHODS, *FLOORS))

    metrics = evaluate.run(in_trained, progress=False)
    # the method `null` is a name here, not a missing value; only empty cells are
    table = pd.read_csv("reports/evaluate/styles.csv", keep_default_na=False, na_values=[""])
    pairs = sorted(zip(table["style"], table["method"], strict=True))
    assert pairs == sorted((s, m) for s in STYLES for m in (*METHODS, *FLOORS))
    held_out = table.loc[table["held_out"], "style"].unique().tolist()
    assert held_out == sorted(in_trained.generate.held_out_styles)
    assert table["accuracy"].between(0, 1).all() and (table["frechet"] > 0).all()
    assert set(metrics["styles"]) == set(STYLES)
    assert {"retrieval", "postfix", "relative_improvement"} <= set(metrics["held_out_styles"])
    assert json.loads(Path("reports/evaluate.json").read_text()) == metrics
    comparison = pd.read_csv("reports/evaluate/style_accuracy.csv")
    assert list(comparison["style"]) == STYLES and "relative_improvement" in comparison
    assert Path("reports/evaluate/style_accuracy.png").stat().st_size > 10_000

    run_id = records[0]["model"]["run_id"]  # logged into the model's training run
    client = tracking_client(Path.cwd())
    run = client.get_run(run_id)
    assert run.data.metrics["eval/classifier.holdout_top1"] == metrics["classifier"]["holdout_top1"]
    assert "eval/seen_styles.retrieval.accuracy" in run.data.metrics
    logged = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert {"evaluation/style_accuracy.png", "evaluation/target_logits.png", "evaluation/grids"} <= logged


def test_sampling_refuses_a_model_of_another_clip(in_trained: Config, tmp_path: Path) -> None:
    shutil.copytree(in_trained.train.out, tmp_path / "model")
    card = json.loads((tmp_path / "model" / "rdm.json").read_text()) | {
        "clip_fingerprint": "0123456789abcdef"
    }
    (tmp_path / "model" / "rdm.json").write_text(json.dumps(card))
    model = load_pipeline(tmp_path / "model", "cpu")
    refused = pytest.raises(ModelError, match=r"trained with CLIP .*0123456789abcdef.*dvc repro train")
    with refused, open_sampler(in_trained, model, {}, k=5):
        pass


def test_rdm_sample_refuses_bad_options_and_unknown_styles(
    in_trained: Config, capsys: pytest.CaptureFixture
) -> None:
    from rdm.cli import main

    base = ["sample", "--prompt", "a red star", "--model", "models/rdm", "--out", "refused"]
    assert main([*base, "--style", "neon", "--steps", "0"]) == 2
    assert "--steps: Input should be greater than or equal to 1" in capsys.readouterr().err
    assert main([*base, "--style", "neon", "-k", "-1"]) == 2
    assert "-k: Input should be greater than or equal to 0" in capsys.readouterr().err
    assert main([*base, "--style", "cubism"]) == 2
    assert "no collection for style(s) ['cubism']; the styles are ['hatching'," in capsys.readouterr().err
    assert not Path("refused").exists()

"""`rdm <verb>`: one subcommand per user action and per DVC stage.

Heavy imports happen inside each command, so `rdm --help` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rdm.artifacts.clip import RESIZE_MODES
from rdm.config import DEFAULT_PARAMS, Config, load_config
from rdm.errors import UserError

if TYPE_CHECKING:
    from rdm.sampling.batch import Request


def _generate(config: Config, args: argparse.Namespace) -> None:
    from rdm.stages import generate

    if args.out is not None:
        config = config.model_copy(update={"generate": config.generate.model_copy(update={"out": args.out})})
    generate.run(config)


def _prepare(config: Config, args: argparse.Namespace) -> None:
    from rdm.artifacts.manifest import SIDES
    from rdm.stages import prepare

    for side in [args.side] if args.side else SIDES:
        prepare.run_side(config.prepare, config.s3, side)


def _clip(config: Config, args: argparse.Namespace) -> None:
    from rdm.stages import clip

    clip.run(config.clip, Path(config.prepare.out), config.sample.style_text)


def _embed(config: Config, args: argparse.Namespace) -> None:
    from rdm.artifacts.manifest import SIDES
    from rdm.evaluation.split import classifier_share
    from rdm.stages import embed

    sides = [args.side] if args.side else list(SIDES)
    keep_out = classifier_share(config) if "styles" in sides else set()
    clip_dir, prepared = Path(config.clip.out), Path(config.prepare.out)
    embed.run(config.embed, config.store, clip_dir, prepared, keep_out=keep_out, sides=sides)


def _neighbors(config: Config, args: argparse.Namespace) -> None:
    from rdm.stages import neighbors

    neighbors.run(config.neighbors, config.embed, Path(config.clip.out), Path(config.prepare.out))


def _autoencoder(config: Config, args: argparse.Namespace) -> None:
    from rdm.stages import autoencoder

    autoencoder.run(config.autoencoder, Path(config.prepare.out))


def _reconstruct(config: Config, args: argparse.Namespace) -> None:
    from rdm.stages import reconstruct

    reconstruct.run(config.autoencoder, Path(config.prepare.out))


def _train(config: Config, args: argparse.Namespace) -> None:
    from rdm.stages import train

    train.run(config)


def _sample_stage(config: Config, args: argparse.Namespace) -> None:
    from rdm.stages import sample

    sample.run(config)


def _evaluate(config: Config, args: argparse.Namespace) -> None:
    from rdm.stages import evaluate

    evaluate.run(config)


def _refresh(config: Config, args: argparse.Namespace) -> None:
    from rdm import refresh

    refresh.run(config)


def _services(config: Config, args: argparse.Namespace) -> None:
    from rdm import services

    if args.stack:
        config = config.model_copy(
            update={"services": config.services.model_copy(update={"stack": args.stack})}
        )
    if args.action == "start":
        services.start(config.services, Path.cwd())
    elif args.action == "stop":
        services.stop(config.services, Path.cwd())
    else:
        services.status(config.services, Path.cwd())


def _report(config: Config, args: argparse.Namespace) -> None:
    """Print the last evaluation's style table (what `make demo` ends with)."""
    from rdm.artifacts.evaluation import read_evaluation
    from rdm.evaluation.report import format_table

    comparison, report = read_evaluation(Path(config.evaluate.plots), Path(config.evaluate.metrics))
    classifier = report.get("classifier", {})
    if "holdout_top1" in classifier:
        print(
            f"style classifier: top-1 {classifier['holdout_top1']:.1%} on {classifier['holdout_images']} "
            f"held-out images of its share of the collections (chance {classifier['chance']:.1%})"
        )
    print(format_table(comparison, report))


def _sample(config: Config, args: argparse.Namespace) -> None:
    """Draw prompts x styles x seeds with a trained model, by retrieval from each style's collection
    (or, with --postfix, by the prompt plus "in the style of <style>" retrieved from D_train); with
    --unconditional, from pseudo-queries (the RDM repo's top-m) and their neighbours in D_train or in
    each --style's collection."""
    _check_sample_options(args)
    config = _with_sample_options(config, args)
    styles: list[str] = args.style or []
    note: str | None = None
    if args.unconditional:
        requests, rows, note = _pseudo_query_requests(config, styles, args.n, args.seed)
    else:
        requests, rows = _query_requests(args, styles)
    out = Path(args.out)
    records, info, grids = _draw(config, args, requests, styles, out, rows)
    _print_sample_summary(records, info, grids, styles, out, note)


def _check_sample_options(args: argparse.Namespace) -> None:
    """Refuse options that do not go together, before anything is loaded (argparse cannot say these)."""
    if args.postfix and not args.prompt:
        raise UserError("--postfix writes the style into a text prompt; use it with --prompt")
    if args.top_m is not None and not args.unconditional:
        raise UserError("--top-m chooses pseudo-queries; use it with --unconditional")
    if not args.style and not args.unconditional:
        raise UserError("--style: name a style collection (repeat for several; see `rdm collections`)")


def _with_sample_options(config: Config, args: argparse.Namespace) -> Config:
    """`config` with the options that were given over params.yaml's sample section; they pass the same
    checks as that section, and a failure names the option, not the params.yaml key."""
    from pydantic import ValidationError

    from rdm.config import ConfigError, SampleParams

    chosen = {
        "k": args.k,
        "steps": args.steps,
        "guidance_scale": args.scale,
        "sampler": args.sampler,
        "top_m": args.top_m,
    }
    try:
        params = SampleParams.model_validate(
            config.sample.model_dump() | {k: v for k, v in chosen.items() if v is not None}
        )
    except ValidationError as exc:
        flags = {"guidance_scale": "--scale", "k": "-k", "steps": "--steps", "sampler": "--sampler"}
        flags |= {"top_m": "--top-m"}
        problems = [f"{flags.get(str(e['loc'][0]), e['loc'][0])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError("rdm sample: " + "; ".join(problems)) from None
    return config.model_copy(update={"sample": params})


def _query_requests(args: argparse.Namespace, styles: list[str]) -> tuple[list[Request], int]:
    """A request per query (each --prompt, or the --image), style and seed; and the grid's rows (one
    per query and seed)."""
    from rdm.artifacts.samples import POSTFIX, RETRIEVAL
    from rdm.sampling.batch import Request

    method = POSTFIX if args.postfix else RETRIEVAL
    queries = [str(args.image)] if args.image else args.prompt
    requests = [
        Request(query, style, method, args.seed + i, image=str(args.image) if args.image else None)
        for query in queries
        for style in styles
        for i in range(args.n)
    ]
    return requests, len(queries) * args.n


def _pseudo_query_requests(
    config: Config, styles: list[str], n: int, seed: int
) -> tuple[list[Request], int, str]:
    """`n` pseudo-queries drawn by `seed` from the most retrieved D_train images, each a request per
    collection (D_train with no `styles`); the grid's rows (`n`); and the summary's line on where the
    pseudo-queries came from."""
    from rdm.sampling.unconditional import (
        most_retrieved,
        pseudo_queries,
        retrieval_counts,
        unconditional_requests,
    )

    top_m = config.sample.top_m
    counts = retrieval_counts(Path(config.neighbors.out))
    query_ids = pseudo_queries(counts, top_m, n, seed)
    note = (
        f"  {len(set(query_ids))} pseudo-queries from the {len(most_retrieved(counts, top_m))} "
        f"most retrieved of {len(counts)} D_train images (top {top_m:.1%})"
    )
    return unconditional_requests(query_ids, styles, seed), n, note


def _draw(
    config: Config, args: argparse.Namespace, requests: list[Request], styles: list[str], out: Path, rows: int
) -> tuple[list[dict[str, Any]], dict[str, Any], list[Path]]:
    """Load the model (--model, else sample.model), check every style has a collection, and draw the
    requests into `out` with a grid per method of at most `rows` rows; returns the records, the
    model's description and the grids."""
    from rdm.sampling.batch import open_sampler
    from rdm.sampling.grid import write_grids
    from rdm.sampling.source import open_model

    params = config.sample
    model, info = open_model(args.model or params.model, config, params.device)
    if args.compile or params.compile:
        model.compile()
    with open_sampler(config, model, info, params.k) as sampler:
        sampler.check_styles(styles)
        records = sampler.draw(requests, out)
    return records, info, write_grids(records, out, max_rows=rows)


def _print_sample_summary(
    records: list[dict[str, Any]],
    info: dict[str, Any],
    grids: list[Path],
    styles: list[str],
    out: Path,
    note: str | None,
) -> None:
    """What was drawn from which model; per style, the share of its neighbours that are of that style
    (the database swap at work); and where the files are."""
    from rdm.artifacts.samples import on_style_share

    print(f"{len(records)} images from {info['uri']} (version {info['version']}, {info['steps']} steps)")
    if note is not None:
        print(note)
    for style in styles:
        mine = [r for r in records if r["style"] == style]
        neighbors = [n for r in mine for n in r["neighbors"]]
        share = on_style_share(neighbors, style)
        collection = mine[0]["collection"]
        print(f"  {style:14s} from {collection:18s} {share:4.0%} of {len(neighbors)} neighbours are {style}")
    print(f"  images: {out / 'images'}  records: {out / 'samples.jsonl'}  grid: {', '.join(map(str, grids))}")


def _collections(config: Config, args: argparse.Namespace) -> None:
    from rdm.retrieval.backends import open_store

    if args.action == "import":
        _import_collections(config, args)
        return
    with open_store(config.store) as store:
        if args.action == "drop":
            store.require(args.name)
            store.drop(args.name)
            print(f"dropped {args.name} from the {store.backend} store")
            return
        rows = [store.info(name) for name in store.list_collections()]
    print(f"{'name':24s} {'backend':8s} {'points':>8s} {'dim':>5s}  clip")
    for info in rows:
        print(
            f"{info.name:24s} {info.backend:8s} {info.points:8d} {info.dim:5d}  "
            f"{info.clip_model} [{info.clip_fingerprint}]"
        )
    if not rows:
        print(f"(no collections in {config.store.backend} store {config.store.path}; run `rdm embed`)")


def _import_collections(config: Config, args: argparse.Namespace) -> None:
    """`.npz` retrieval databases (a folder or a .zip) into collections, one per file."""
    from rdm.artifacts.clip import read_card
    from rdm.retrieval.backends import open_store
    from rdm.retrieval.databases import import_databases

    if not args.name:
        raise UserError("rdm collections import: give the folder or .zip of .npz databases")
    card = read_card(Path(args.clip or config.clip.out))
    with open_store(config.store) as store:
        counts = import_databases(store, Path(args.name), card, args.name_prefix)
    for name, points in counts.items():
        print(f"imported {name}: {points} points of CLIP {card.model} [{card.fingerprint}]")
    if not counts:
        print(f"{args.name}: no .npz databases found")


def _import(config: Config, args: argparse.Namespace) -> None:
    """A CompVis latent-diffusion RDM checkpoint into a model folder (and the registry, with --register)."""
    from rdm.artifacts.clip import read_card
    from rdm.models.ldm_import import import_ldm

    clip = read_card(Path(args.clip or config.clip.out))
    run_id = None
    if args.register:
        from rdm.tracking.runs import log_import

        logged = {"checkpoint": str(args.checkpoint), "config": str(args.config), "clip": clip.fingerprint}
        run_id = log_import(config.tracking, f"import {args.checkpoint.name}", logged)
    imported = import_ldm(args.checkpoint, args.config, args.out, clip, run_id=run_id)
    card = imported.card
    weights = "EMA" if imported.ema else "raw (the checkpoint has no EMA)"
    print(
        f"imported {card.source} into {args.out}/: UNet {imported.unet_parameters / 1e6:.1f}M parameters "
        f"({weights} weights), {imported.first_stage.upper()} first stage, latents {card.latent_shape}, "
        f"{card.image_size}x{card.image_size} images, {card.context_dim}-d {card.context_vectors} contexts "
        f"of CLIP {card.clip_model} [{card.clip_fingerprint}]"
    )
    if args.register:
        from rdm.tracking.registry import register_model

        tracking = config.tracking.model_copy(update={"registered_model": args.register})
        entry = register_model(tracking, str(run_id), args.out, card)
        print(
            f"registered {entry['model_uri']} (run {entry['run_id']}); "
            f"sample: rdm sample --model {entry['model_uri']}"
        )
    else:
        print(f"sample: rdm sample --model {args.out} --prompt ... --style ...")


def _import_clip(config: Config, args: argparse.Namespace) -> None:
    """A local open_clip weights file into a CLIP folder, as the `clip` stage writes it, unmeasured."""
    from rdm.embedding import model as clip_model

    name, resize = args.model or config.clip.model, args.resize or config.clip.resize
    out = Path(args.out or config.clip.out)
    model, _ = clip_model.create(name, pretrained=str(args.weights))
    card = clip_model.save(model, name, str(args.weights), out, resize)
    print(
        f"imported {args.weights} into {out}/: CLIP {card.model}, {card.embed_dim}-d vectors, images "
        f"resized by {card.resize} [{card.fingerprint}]"
    )


def _search(config: Config, args: argparse.Namespace) -> None:
    from rdm.embedding.model import load
    from rdm.retrieval.backends import open_store
    from rdm.retrieval.search import Retriever

    clip = load(Path(config.clip.out), config.embed.device)
    with open_store(config.store) as store:
        retriever = Retriever(store, clip)
        if args.text is not None:
            (hits,) = retriever.by_text([args.text], args.collection, args.k)
        else:
            (hits,) = retriever.by_images([Path(args.image)], args.collection, args.k)
    print(f"{'rank':>4s} {'score':>6s}  {'style':12s} {'caption':40s} id / path")
    for rank, hit in enumerate(hits, 1):
        p = hit.payload
        print(
            f"{rank:4d} {hit.score:6.3f}  {p.get('style')!s:12s} {str(p.get('caption'))[:40]:40s} "
            f"{hit.id[:12]}  {p.get('path')}"
        )


def _ingest(config: Config, args: argparse.Namespace) -> None:
    """Ingest one source by hand, to check a folder (or manifest, or S3 prefix) before adding it."""
    from rdm.artifacts.manifest import write_manifest, write_rejections
    from rdm.data.ingest import ingest
    from rdm.data.sources import open_source
    from rdm.stages.prepare import limits_of

    out = Path(args.out)
    source = open_source(args.source, config.s3)
    result = ingest(
        source,
        args.split,
        out,
        limits_of(config.prepare),
        require_style=args.require_style,
        workers=config.prepare.workers,
        executor=config.prepare.executor,
    )
    write_manifest(result.records, out / "manifest.parquet")
    write_rejections(out / "rejected.jsonl", (r.as_dict() for r in result.rejections))
    print(
        f"{args.source}: {result.seen} files seen, {len(result.records)} accepted, "
        f"{len(result.rejections)} rejected"
    )
    for reason, count in result.reasons().items():
        print(f"  {reason:14s} {count}")
    print(f"manifest: {out / 'manifest.parquet'}  rejections: {out / 'rejected.jsonl'}")


def _show_config(config: Config, args: argparse.Namespace) -> None:
    import yaml

    print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), end="")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rdm", description="Retrieval-augmented diffusion pipeline.")
    parser.add_argument("--params", default=str(DEFAULT_PARAMS), help="params file (default: params.yaml)")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    _add_generate_parser(verbs)
    _add_stage_parsers(verbs)
    _add_refresh_parser(verbs)
    _add_services_parser(verbs)
    _add_sample_parser(verbs)
    _add_report_parser(verbs)
    _add_collections_parser(verbs)
    _add_search_parser(verbs)
    _add_import_parser(verbs)
    _add_ingest_parser(verbs)
    _add_config_parser(verbs)
    return parser


def _add_generate_parser(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    gen = verbs.add_parser("generate", help="write the built-in demo dataset (DVC stage)")
    gen.add_argument("--out", help="output folder (default: generate.out)")
    gen.set_defaults(func=_generate)


def _add_stage_parsers(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The DVC stages after generate: everything comes from the params file; `prepare` and `embed` take
    the side they work on (both, training first, when none is given)."""
    for verb, description, func in (
        ("prepare", "ingest the configured sources into manifests", _prepare),
        ("embed", "embed the prepared images and fill the collections", _embed),
    ):
        stage = verbs.add_parser(verb, help=f"{description} (DVC stages {verb}-training, {verb}-styles)")
        stage.add_argument(
            "side", nargs="?", choices=("training", "styles"), help="training (train, D_train) or styles"
        )
        stage.set_defaults(func=func)
    stages = {
        "clip": ("load or train the CLIP model and measure its retrieval", _clip),
        "neighbors": ("k nearest D_train neighbours of each training image", _neighbors),
        "autoencoder": ("load or train the KL autoencoder, cache latents", _autoencoder),
        "reconstruct": ("style images through the autoencoder: the evaluation's ceiling", _reconstruct),
        "train": ("train the retrieval-conditioned diffusion model", _train),
        "sample-styles": ("sample every style by each method and floor, for evaluate", _sample_stage),
        "evaluate": ("score the samples: style classifier, Frechet distance, CLIP score", _evaluate),
    }
    for verb, (description, func) in stages.items():
        verbs.add_parser(verb, help=f"{description} (DVC stage)").set_defaults(func=func)


def _add_refresh_parser(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    verbs.add_parser(
        "refresh", help="bring the style collections up to date with their source (prepare + embed)"
    ).set_defaults(func=_refresh)


def _add_services_parser(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    svc = verbs.add_parser("services", help="the local Prefect and MLflow servers and the deployments")
    svc.add_argument("action", choices=("start", "stop", "status"))
    svc.add_argument(
        "--stack",
        choices=("sqlite", "postgres"),
        help="start: SQLite (default services.stack) or Postgres + worker",
    )
    svc.set_defaults(func=_services)


def _add_sample_parser(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    smp = verbs.add_parser("sample", help="stylized images from a trained model, by database swap")
    _add_sample_queries(smp)
    _add_sample_settings(smp)
    smp.set_defaults(func=_sample)


def _add_sample_queries(smp: argparse.ArgumentParser) -> None:
    """What `rdm sample` draws: the queries, the styles, how many of each."""
    query = smp.add_mutually_exclusive_group(required=True)
    query.add_argument("--prompt", action="append", help="a text prompt (repeat for several)")
    query.add_argument("--image", type=Path, help="an image file as the query instead of a prompt")
    query.add_argument(
        "--unconditional",
        action="store_true",
        help="no prompt: pseudo-queries, D_train images drawn from the most retrieved (--top-m)",
    )
    smp.add_argument(
        "--style",
        action="append",
        help="a style collection (repeat for several; with --unconditional optional, default D_train)",
    )
    smp.add_argument(
        "--postfix", action="store_true", help='baseline: prompt + "in the style of <style>" on D_train'
    )
    smp.add_argument(
        "-n",
        type=_positive,
        default=4,
        help="images per prompt (or, --unconditional, pseudo-queries) and style (seeds seed..+n-1)",
    )
    smp.add_argument(
        "--top-m",
        type=float,
        help="--unconditional: the most retrieved share of D_train to draw from (default sample.top_m: 0.01)",
    )


def _add_sample_settings(smp: argparse.ArgumentParser) -> None:
    """How `rdm sample` draws (unset: params.yaml's sample section), with which model, and where to."""
    smp.add_argument("-k", type=int, help="neighbours retrieved (default sample.k: 19)")
    smp.add_argument("--steps", type=int, help="sampler steps (default sample.steps: 16)")
    smp.add_argument(
        "--scale", type=float, help="classifier-free guidance scale (default sample.guidance_scale: 5)"
    )
    smp.add_argument("--sampler", choices=["ddim", "dpm"], help="default sample.sampler: dpm")
    smp.add_argument("--seed", type=int, default=0)
    smp.add_argument("--compile", action="store_true", help="torch.compile the UNet (worth it on a GPU)")
    smp.add_argument("--model", help="models:/rdm@latest (default sample.model), a model folder, or a .ckpt")
    smp.add_argument("--out", required=True, help="folder for images/, samples.jsonl and the grid")


def _add_report_parser(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rep = verbs.add_parser("report", help="print the last evaluation's style table")
    rep.set_defaults(func=_report)


def _add_collections_parser(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    col = verbs.add_parser("collections", help="list, drop or import the vector collections")
    col.add_argument("action", nargs="?", choices=["list", "drop", "import"], default="list")
    col.add_argument(
        "name", nargs="?", help="drop: the collection; import: a folder or .zip of .npz databases"
    )
    col.add_argument(
        "--name-prefix", default="style-", help="import: collection = prefix + file stem (default style-)"
    )
    col.add_argument("--clip", help="import: the CLIP folder the vectors came from (default clip.out)")
    col.set_defaults(func=_collections)


def _add_search_parser(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sea = verbs.add_parser("search", help="nearest images of a text or an image in a collection")
    query = sea.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help="a text query, embedded with the CLIP text encoder")
    query.add_argument("--image", help="an image file as the query")
    sea.add_argument("--collection", required=True, help="e.g. d_train or style-neon (see `rdm collections`)")
    sea.add_argument("-k", type=int, default=19, help="how many neighbours (default 19, as in the paper)")
    sea.set_defaults(func=_search)


def _add_import_parser(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    imp = verbs.add_parser("import", help="bring a model made elsewhere into the pipeline")
    kinds = imp.add_subparsers(dest="kind", required=True, metavar="KIND")
    ldm = kinds.add_parser(
        "ldm", help="a CompVis latent-diffusion RDM checkpoint (knn2img's, the RDM repo's)"
    )
    ldm.add_argument("checkpoint", type=Path, help="the .ckpt (e.g. models/rdm/rdm768x768/model.ckpt)")
    ldm.add_argument("--config", type=Path, required=True, help="its LDM config (e.g. 768x768.yaml)")
    ldm.add_argument("--out", type=Path, required=True, help="the model folder to write")
    ldm.add_argument("--clip", help="the CLIP folder its contexts come from (default clip.out)")
    ldm.add_argument("--register", metavar="NAME", help="also register it in MLflow as NAME")
    ldm.set_defaults(func=_import)
    clip = kinds.add_parser("clip", help="open_clip weights from a local file, as the CLIP folder")
    clip.add_argument("weights", type=Path, help="e.g. open_clip_model.safetensors of ViT-L/14 (OpenAI)")
    clip.add_argument(
        "--model", help="its open_clip architecture (default clip.model), e.g. ViT-L-14-quickgelu"
    )
    clip.add_argument("--resize", choices=RESIZE_MODES, help="crop or squash (default clip.resize)")
    clip.add_argument("--out", help="the CLIP folder to write (default clip.out)")
    clip.set_defaults(func=_import_clip)


def _add_ingest_parser(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ing = verbs.add_parser("ingest", help="check and ingest one folder, manifest or s3:// prefix by hand")
    ing.add_argument("source", help="a folder, a .csv/.jsonl/.parquet manifest, or s3://bucket/prefix")
    ing.add_argument("--out", required=True, help="folder for images/, manifest.parquet, rejected.jsonl")
    ing.add_argument("--split", default="ingest", help="split name recorded in the manifest")
    ing.add_argument("--require-style", action="store_true", help="reject files with no style folder")
    ing.set_defaults(func=_ingest)


def _add_config_parser(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cfg = verbs.add_parser("config", help="print the validated configuration")
    cfg.set_defaults(func=_show_config)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.params)
        args.func(config, args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

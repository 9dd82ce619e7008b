"""`rdm <verb>`: one subcommand per user action and per DVC stage.

Heavy imports happen inside each command, so `rdm --help` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rdm.config import DEFAULT_PARAMS, Config, load_config
from rdm.errors import UserError


def _generate(config: Config, args: argparse.Namespace) -> None:
    from rdm.stages import generate

    params = config.generate if args.out is None else config.generate.model_copy(update={"out": args.out})
    generate.run(params)


def _prepare(config: Config, args: argparse.Namespace) -> None:
    from rdm.stages import prepare

    prepare.run(config.prepare, config.s3)


def _ingest(config: Config, args: argparse.Namespace) -> None:
    """Ingest one source by hand, to check a folder (or manifest, or S3 prefix) before adding it."""
    from rdm.data.ingest import ingest
    from rdm.data.manifest import write_manifest
    from rdm.data.sources import open_source
    from rdm.files import write_jsonl
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
    )
    write_manifest(result.records, out / "manifest.parquet")
    write_jsonl(out / "rejected.jsonl", (r.as_dict() for r in result.rejections))
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rdm", description="Retrieval-augmented diffusion pipeline.")
    parser.add_argument("--params", default=str(DEFAULT_PARAMS), help="params file (default: params.yaml)")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    gen = verbs.add_parser("generate", help="write the built-in demo dataset (DVC stage)")
    gen.add_argument("--out", help="output folder (default: generate.out)")
    gen.set_defaults(func=_generate)

    prep = verbs.add_parser("prepare", help="ingest the configured sources into manifests (DVC stage)")
    prep.set_defaults(func=_prepare)

    ing = verbs.add_parser("ingest", help="check and ingest one folder, manifest or s3:// prefix by hand")
    ing.add_argument("source", help="a folder, a .csv/.jsonl/.parquet manifest, or s3://bucket/prefix")
    ing.add_argument("--out", required=True, help="folder for images/, manifest.parquet, rejected.jsonl")
    ing.add_argument("--split", default="ingest", help="split name recorded in the manifest")
    ing.add_argument("--require-style", action="store_true", help="reject files with no style folder")
    ing.set_defaults(func=_ingest)

    cfg = verbs.add_parser("config", help="print the validated configuration")
    cfg.set_defaults(func=_show_config)
    return parser


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

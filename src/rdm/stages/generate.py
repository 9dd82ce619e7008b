"""`generate` stage: write the built-in demo dataset (see `rdm.data.demo.generate`)."""

from __future__ import annotations

from rdm.config import GenerateParams
from rdm.data.demo.generate import DemoSummary, generate_demo


def run(params: GenerateParams, progress: bool = True) -> DemoSummary:
    summary = generate_demo(params, progress=progress)
    counts = ", ".join(f"{n} {split}" for split, n in summary.counts.items())
    print(f"generate: wrote {counts} to {summary.out}/")
    return summary


def main() -> int:
    from rdm.cli import main as cli_main

    return cli_main(["generate"])


if __name__ == "__main__":
    raise SystemExit(main())

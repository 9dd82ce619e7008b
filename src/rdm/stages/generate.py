"""`generate` stage: write the built-in demo dataset (see `rdm.data.demo.generate`)."""

from __future__ import annotations

from rdm.config import Config
from rdm.data.demo.generate import DemoSummary, generate_demo


def run(config: Config, progress: bool = True) -> DemoSummary:
    summary = generate_demo(config.generate, config.sample.style_text, progress=progress)
    counts = ", ".join(f"{n} {split}" for split, n in summary.counts.items())
    print(f"generate: wrote {counts} to {summary.out}/")
    return summary

"""docs/architecture.md describes the package as the import contracts enforce it."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "architecture.md").read_text()


def contracts() -> list[dict]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_every_layer_of_the_contract_is_described_in_order() -> None:
    (layers,) = [c["layers"] for c in contracts() if c["type"] == "layers"]
    rows = [line for line in DOC.splitlines() if line.startswith("| `")]
    described = [re.findall(r"`([a-z_]+)`", re.split(r"(?<!\\)\|", row)[1]) for row in rows]
    for layer in layers:
        names = [n.strip() for n in layer.split("|")]
        assert names in described, f"layer {layer!r} of pyproject.toml is not a row of docs/architecture.md"
    order = [described.index([n.strip() for n in layer.split("|")]) for layer in layers]
    assert order == sorted(order), "docs/architecture.md lists the layers in another order than the contract"


def test_every_package_and_top_module_belongs_to_a_layer() -> None:
    (layers,) = [c["layers"] for c in contracts() if c["type"] == "layers"]
    named = {n.strip() for layer in layers for n in layer.split("|")}
    src = REPO / "src" / "rdm"
    present = {p.stem for p in src.glob("*.py") if p.stem != "__init__"}
    present |= {p.name for p in src.iterdir() if (p / "__init__.py").is_file()}
    assert present == named


def test_every_artifact_module_is_in_the_artifact_table() -> None:
    modules = {p.stem for p in (REPO / "src" / "rdm" / "artifacts").glob("*.py") if p.stem != "__init__"}
    for module in modules:
        assert f"`rdm.artifacts.{module}`" in DOC, f"rdm.artifacts.{module} is missing from the table"


def test_the_import_contracts_are_kept() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "4 kept, 0 broken" in result.stdout

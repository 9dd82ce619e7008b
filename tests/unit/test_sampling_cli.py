"""`rdm sample` refuses options that do not go together before it loads anything."""

from pathlib import Path

import pytest

from rdm.cli import main
from tests.support import REPO_ROOT


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--unconditional", "--postfix"], "--postfix writes the style into a text prompt"),
        (["--prompt", "a red star", "--style", "neon", "--top-m", "0.1"], "use it with --unconditional"),
        (["--prompt", "a red star"], "--style: name a style collection"),
        (["--unconditional", "--top-m", "0"], "--top-m: Input should be greater than 0"),
        (["--unconditional", "--top-m", "1.5"], "--top-m: Input should be less than or equal to 1"),
        (["--unconditional"], "data/neighbors/train.parquet: no training neighbours (neighbors.out)"),
    ],
)
def test_rdm_sample_refuses(
    options: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)  # no pipeline outputs here
    code = main(["--params", str(REPO_ROOT / "params.yaml"), "sample", *options, "--out", "refused"])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not Path("refused").exists()

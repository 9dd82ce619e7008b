"""DVC as the flows drive it (stages in dependency order, one stage's repro and its outcome, `dvc add`ed
sources re-recorded) and param changes written into params.yaml with its comments kept."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rdm.config import ConfigError, load_config, set_params
from rdm.dvc_repo import DvcError, is_transient, reproduce, stages, version_sources
from tests.support import REPO_ROOT, rdm_env

DVC_YAML = {
    "stages": {
        # listed out of order on purpose: `stages()` must follow the dependencies
        "count": {"cmd": "wc -c < words.txt > count.txt", "deps": ["words.txt"], "outs": ["count.txt"]},
        "words": {"cmd": "cat source/*.txt > words.txt", "deps": ["source"], "outs": ["words.txt"]},
    }
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    env = rdm_env() | {"DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(tmp_path / "site")}
    for args in (["git", "init", "-q"], [str(Path(sys.executable).parent / "dvc"), "init", "-q"]):
        subprocess.run(args, cwd=tmp_path, env=env, check=True)
    (tmp_path / "source").mkdir()
    (tmp_path / "source" / "a.txt").write_text("alpha\n")
    subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), "add", "-q", "source"], cwd=tmp_path, env=env, check=True
    )
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML))
    return tmp_path


def test_stages_run_in_order_then_skip_and_sources_are_versioned(project: Path) -> None:
    assert stages(project) == ["words", "count"]
    lines: list[str] = []
    assert reproduce(project, "words", lines.append).outcome == "ran"
    assert reproduce(project, "count", lines.append).outcome == "ran"
    assert any("Running stage 'count'" in line for line in lines)
    assert reproduce(project, "words").outcome == "skipped"

    recorded = (project / "source.dvc").read_text()
    (project / "source" / "b.txt").write_text("beta\n")
    assert version_sources(project) == ["source"]
    assert (project / "source.dvc").read_text() != recorded
    assert reproduce(project, "words").outcome == "ran"
    assert (project / "words.txt").read_text() == "alpha\nbeta\n"


def test_a_failing_stage_names_the_command_and_shows_its_output(project: Path) -> None:
    (project / "source" / "a.txt").unlink()
    (project / "source" / "notes.md").write_text("no txt files any more\n")
    with pytest.raises(DvcError, match=r"dvc repro --single-item words.*failed") as error:
        reproduce(project, "words")
    assert "No such file" in str(error.value) or "failed to reproduce" in str(error.value)


def test_transient_errors_are_told_apart() -> None:
    assert is_transient(DvcError("ERROR: Unable to acquire lock. Most likely another DVC process is running"))
    assert is_transient(RuntimeError("botocore ConnectionError: Could not connect to the endpoint URL"))
    assert not is_transient(ConfigError("params.yaml: train.max_steps: Input should be a valid integer"))


def test_set_params_keeps_comments_and_validates_first(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text((REPO_ROOT / "params.yaml").read_text())
    assert set_params(path, {"train.max_steps": 20, "sample.k": load_config(path).sample.k}) == [
        "train.max_steps"
    ]
    text = path.read_text()
    assert "  max_steps: 20\n" in text and "# the retrieval-conditioned UNet" in text
    assert load_config(path).train.max_steps == 20
    before = path.read_text()
    with pytest.raises(ConfigError, match=r"train\.max_steps"):
        set_params(path, {"train.max_steps": "many"})
    with pytest.raises(ConfigError, match="no section 'trian'"):
        set_params(path, {"trian.max_steps": 3})
    assert path.read_text() == before

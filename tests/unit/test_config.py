from pathlib import Path

import pytest

from rdm.cli import main
from rdm.config import Config, ConfigError, config_from_dict, load_config
from tests.conftest import REPO_ROOT


def error_for(data: dict) -> str:
    with pytest.raises(ConfigError) as excinfo:
        config_from_dict(data, source="params.yaml")
    return str(excinfo.value)


def test_the_projects_params_file_is_valid() -> None:
    config = load_config(REPO_ROOT / "params.yaml")
    assert isinstance(config, Config)
    assert config.generate.held_out_styles == ["pixel_art", "ukiyo_e"]


@pytest.mark.parametrize(
    ("data", "field", "hint"),
    [
        ({"generate": {"sed": 1}}, "generate.sed", "unknown key"),
        ({"trainn": {}}, "trainn", "unknown key"),
        ({"prepare": {"sources": {"trian": "x"}}}, "prepare.sources.trian", "unknown key"),
        ({"prepare": {"min_side": "big"}}, "prepare.min_side", "integer"),
        ({"generate": {"seed": "1"}}, "generate.seed", "integer"),
        ({"generate": {"styles": "neon"}}, "generate.styles", "list"),
        ({"generate": {"style_caption_fraction": 1.5}}, "generate.style_caption_fraction", "less than"),
        ({"generate": {"train_images": 0}}, "generate.train_images", "greater than"),
        ({"prepare": {"workers": 1000}}, "prepare.workers", "less than"),
        ({"generate": {"held_out_styles": ["neon"], "styles": ["mosaic"]}}, "generate", "neon"),
        ({"generate": {"styles": ["neon"], "held_out_styles": ["neon"]}}, "generate", "at least one style"),
        ({"autoencoder": {"image_size": 66}}, "autoencoder", "divisible by the downsampling factor 4"),
        ({"train": {"unet": {"cross_attention": [True]}}}, "train.unet", "one true/false per level"),
        ({"train": {"unet": {"block_out_channels": [32, 48, 64]}}}, "train.unet", "multiples of"),
        ({"train": {"p_uncond": 1.5}}, "train.p_uncond", "less than"),
        ({"train": {"precision": "fp8"}}, "train.precision", "bf16-mixed"),
    ],
)
def test_each_invalid_value_names_its_field(data: dict, field: str, hint: str) -> None:
    message = error_for(data)
    assert message.startswith("params.yaml:")
    assert f"  {field}:" in message
    assert hint in message


def test_unknown_key_lists_the_allowed_keys() -> None:
    message = error_for({"prepare": {"min_sid": 3}})
    assert "min_side" in message and "max_pixels" in message


def test_cross_section_mismatch_names_both_fields() -> None:
    message = error_for({"generate": {"image_size": 32}, "prepare": {"min_side": 48}})
    assert "generate.image_size" in message and "prepare.min_side" in message


def test_training_k_beyond_the_neighbours_names_both_fields() -> None:
    message = error_for({"train": {"k": 8}, "neighbors": {"k": 4}})
    assert "train.k (8)" in message and "neighbors.k (4)" in message


def test_all_errors_are_reported_at_once() -> None:
    message = error_for({"generate": {"seed": "x", "image_size": 2}})
    assert "generate.seed" in message and "generate.image_size" in message


def test_missing_and_malformed_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such params file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("generate: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_config(bad)


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(ValueError, match="frozen"):
        config.generate.seed = 3  # type: ignore[misc]


def test_cli_fails_before_work_with_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("generate:\n  image_size: 8\n")
    assert main(["--params", str(params), "generate", "--out", str(tmp_path / "raw")]) == 2
    assert "generate.image_size" in capsys.readouterr().err
    assert not (tmp_path / "raw").exists()

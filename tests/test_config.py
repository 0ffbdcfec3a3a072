"""core.config: one typed configuration approach (TOML file + flags), mistakes named by file and key."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from core.config import ConfigError, Settings, flag_overrides, load, save


class Example(Settings):
    seed: int = 0
    learning_rate: float = 1e-3
    data: Path = Path("data")
    quick: bool = False
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    note: str | None = None


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "example.toml"
    path.write_text(text)
    return path


def test_file_then_flags_override(tmp_path):
    path = write(tmp_path, 'seed = 3\nlearning_rate = 1\ndata = "d2"\n')
    settings = load(Example, path, overrides={"seed": 7})
    assert settings.seed == 7 and settings.learning_rate == 1.0 and settings.data == Path("d2")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sed = 3\n", "unknown key 'sed'"),
        ('seed = "3"\n', "seed: input should be a valid integer"),
        ("seed = 1.5\n", "seed: input should be a valid integer"),
        ('quick = "yes"\n', "quick: input should be a valid boolean"),
        ("split = [0.8, 0.2]\n", "split"),
        ("seed = \n", "not valid TOML"),
    ],
)
def test_mistakes_name_the_file_and_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load(Example, path)
    assert str(error.value).startswith(str(path)) and message in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="no such configuration file"):
        load(Example, tmp_path / "absent.toml")


def test_section_of_a_shared_file(tmp_path):
    path = write(tmp_path, "[other]\nx = 1\n[example]\nseed = 4\n")
    assert load(Example, path, section="example").seed == 4
    with pytest.raises(ConfigError, match=r"\[other\]: unknown key 'x'"):
        load(Example, path, section="other")


def test_flags_set_only_what_was_given():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--quick", action="store_true", default=None)
    parser.add_argument("--unrelated", default="x")
    assert flag_overrides(parser.parse_args([]), Example) == {}
    assert flag_overrides(parser.parse_args(["--seed", "2", "--quick"]), Example) == {"seed": 2, "quick": True}


def test_saved_settings_load_back_the_same(tmp_path):
    settings = Example(seed=5, data=Path("some dir/x"), note='say "hi"', split=(0.7, 0.2, 0.1))
    path = save(settings, tmp_path / "resolved.toml", header="resolved by a test")
    assert path.read_text().startswith("# resolved by a test")
    assert load(Example, path) == settings


def test_replace_validates():
    with pytest.raises(Exception, match="valid integer"):
        Example().replace(seed="x")
    assert Example().replace(seed=9).seed == 9

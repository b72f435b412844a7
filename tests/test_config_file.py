"""`--config FILE`: a preset of one's own anywhere on disk, same fields as trainers/presets/*.yaml."""

from __future__ import annotations

import pytest

from safebench import config
from safebench.errors import UsageError


def test_a_preset_file_anywhere_is_layered_like_a_package_preset(tmp_path, monkeypatch):
    path = tmp_path / "experiments" / "mine.yaml"
    path.parent.mkdir()
    path.write_text("description: mine\nmethods: [sft]\ntrainers:\n  sft: {lr: 2.0e-4}\ngeneration: {k: 2}\n")
    monkeypatch.chdir(tmp_path)
    given = config.preset_argument("experiments/mine.yaml")
    assert given == str(path)  # absolute: a run's recorded request finds it from anywhere
    resolved, recipes = config.resolve(given)
    assert resolved.preset == "mine" and config.preset_label(given) == "mine"
    assert recipes["sft"].lr == pytest.approx(2e-4) and resolved.generation.k == 2


def test_errors_name_the_file_and_field(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("trainers:\n  sft: {lr: fast}\n")
    with pytest.raises(UsageError, match=f"^{path}: field 'trainers.sft.lr' = 'fast'"):
        config.resolve(str(path))
    with pytest.raises(UsageError, match="--config .*gone.yaml: file not found"):
        config.resolve(str(tmp_path / "gone.yaml"))
    assert config.preset_argument("tiny") == "tiny"

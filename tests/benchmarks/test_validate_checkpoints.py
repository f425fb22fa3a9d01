"""The held-out validation tool builds each network as its training run did (``--override``)."""

import argparse

import pytest

from benchmarks.validate_checkpoints import main, parse_override, train_config


@pytest.mark.parametrize("text, expected", [
    ("smoothing=False", ("smoothing", False)),
    ("regularization_weight=0.2", ("regularization_weight", 0.2)),
    ("name=text", ("name", "text")),
    ("widths=[8, 16]", ("widths", [8, 16])),
])
def test_parse_override_reads_python_literals_else_text(text, expected):
    assert parse_override(text) == expected


@pytest.mark.parametrize("text", ["smoothing", "=False", ""])
def test_parse_override_rejects_text_without_key_and_value(text):
    with pytest.raises(argparse.ArgumentTypeError, match="KEY=VALUE"):
        parse_override(text)


def test_train_config_builds_the_ablation_network_with_the_override(tmp_path):
    default = train_config("mdregnet", tmp_path, seed=999).get_parsed_content("network_def")
    ablation = train_config("mdregnet", tmp_path, seed=999, overrides={"smoothing": False}).get_parsed_content("network_def")
    assert default.smoothing is True
    assert ablation.smoothing is False


def test_train_config_names_an_unknown_override(tmp_path):
    with pytest.raises(ValueError, match="'smothing' is not an entry of mdregnet's train.json"):
        train_config("mdregnet", tmp_path, seed=999, overrides={"smothing": False})


def test_main_exits_with_the_reason_for_an_unknown_override(tmp_path):
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"")
    with pytest.raises(SystemExit, match="'smothing' is not an entry"):
        main(["--bundle", "mdregnet", "--checkpoints", str(checkpoint), "--data-dir", str(tmp_path),
              "--override", "smothing=False"])

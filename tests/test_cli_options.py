"""The predict flags come from PredictOptions: every field has one, and flags mean what the YAML keys mean."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from chunked_fnet import cli
from chunked_fnet.errors import InputError
from chunked_fnet.predict.options import PredictOptions

REQUIRED = ["predict", "in.zarr", "--models", "dna.ckpt", "--out", "out.zarr"]

# Every field, none at its default: the same settings as flags and as a YAML file.
FLAGS = [
    "--input-channel", "2", "--time", "1", "3", "--patch-shape", "16", "32", "48", "--overlap", "0.5",
    "--blend", "cosine", "--batch-size", "8", "--tta-flips", "--skip-empty", "2.5", "--chunks", "8", "64", "96", "--dtype", "float16",
    "--ngff-version", "0.4", "--levels", "3", "--device", "cpu", "--precision", "bf16", "--pad-mode", "edge",
    "--output-grid", "input", "--nonfinite", "fill", "--missing-chunks", "fill", "--retries", "5", "--stall-timeout", "60",
    "--shards", "none", "--compression", "zstd", "--profile",
]
YAML = """
input_channel: 2
time: [1, 3]
patch_shape: [16, 32, 48]
overlap: 0.5
blend: cosine
batch_size: 8
tta_flips: true
skip_empty: 2.5
chunks: [8, 64, 96]
dtype: float16
version: "0.4"
levels: 3
device: cpu
precision: bf16
pad_mode: edge
output_grid: input
nonfinite: fill
missing_chunks: fill
retries: 5
stall_timeout: 60
shards: none
compression: zstd
profile: true
"""


def _options(*argv: str) -> PredictOptions:
    return cli.predict_options(cli.build_parser().parse_args([*REQUIRED, *argv]))


def _predict_parser() -> argparse.ArgumentParser:
    parser = cli.build_parser()
    parser.parse_args([*REQUIRED])  # the predict flags are added when the subcommand is used
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["predict"]


def test_every_field_has_a_flag_named_after_it() -> None:
    actions = {a.dest: a for a in _predict_parser()._actions}
    for name, field in PredictOptions.model_fields.items():
        assert name in actions, f"PredictOptions.{name} has no predict flag"
        assert actions[name].help and field.description and actions[name].help.startswith(field.description.replace("%", "%%"))
    flags = {s for a in actions.values() for s in a.option_strings}
    assert {f"--{n.replace('_', '-')}" for n in PredictOptions.model_fields} - flags == {"--version"}  # it is --ngff-version


def test_the_test_covers_every_field_off_its_default() -> None:
    from_yaml = yaml.safe_load(YAML)
    assert set(from_yaml) == set(PredictOptions.model_fields)
    assert all(getattr(PredictOptions(), k) != getattr(PredictOptions(**from_yaml), k) for k in from_yaml)


def test_flags_give_the_same_options_as_the_yaml(tmp_path: Path) -> None:
    config = tmp_path / "predict.yaml"
    config.write_text(YAML)
    from_yaml = _options("--config", str(config))
    assert from_yaml == PredictOptions(**yaml.safe_load(YAML))
    assert _options(*FLAGS) == from_yaml
    assert _options() == PredictOptions()  # no flag, no file: the defaults


def test_flags_override_the_yaml_and_only_the_given_ones(tmp_path: Path) -> None:
    config = tmp_path / "predict.yaml"
    config.write_text(YAML)
    options = _options("--config", str(config), "--overlap", "0.125", "--no-tta-flips", "--channel", "brightfield")
    assert options == PredictOptions(**{**yaml.safe_load(YAML), "overlap": 0.125, "tta_flips": False, "input_channel": "brightfield"})


@pytest.mark.parametrize(
    "legacy, new",
    [
        (["--patch", "16", "16", "16"], ["--patch-shape", "16", "16", "16"]),
        (["--tta"], ["--tta-flips"]),
        (["--channel", "bf"], ["--input-channel", "bf"]),
        (["--time", "0", "1", "--chunks", "4", "8", "8", "--batch-size", "2"], ["--time", "0", "1", "--chunks", "4", "8", "8", "--batch-size", "2"]),
        (["--ngff-version", "0.4"], ["--ngff-version", "0.4"]),
    ],
)
def test_the_flags_scripts_already_use_still_work(legacy: list[str], new: list[str]) -> None:
    assert _options(*legacy) == _options(*new) != PredictOptions()


def test_choices_and_bad_values(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _options("--pad-mode", "wrap")
    assert "invalid choice: 'wrap'" in capsys.readouterr().err
    with pytest.raises(InputError, match=r"^predict options: field 'overlap': Value error, overlap is a fraction of the patch in \[0, 1\) or a whole number of model voxels, got 1.5"):
        _options("--overlap", "1.5")
    assert _options("--overlap", "32").overlap == 32 and _options("--patch", "auto").patch_shape == "auto"


def test_chunks_help_says_output_grid() -> None:
    chunks = next(a for a in _predict_parser()._actions if a.dest == "chunks")
    assert "on the output grid" in chunks.help and "model grid" not in chunks.help

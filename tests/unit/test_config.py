"""Config loading: defaults, precedence, and one clear error per mistake."""
from __future__ import annotations

import pytest

from raven_hpc.config import defaults, describe_schema, load_config, parse_override, to_toml
from raven_hpc.errors import ConfigError

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib

BASE = """
[data]
path = "d.h5"
[model]
layers = [{type = "dense", units = 10}]
"""


def write(tmp_path, text, name="c.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_fill_everything_and_paths_resolve(tmp_path):
    cfg = load_config(write(tmp_path, BASE), environ={})
    assert cfg["train"]["epochs"] == defaults()["train"]["epochs"]
    assert cfg["data"]["path"] == str((tmp_path / "d.h5").resolve())
    assert cfg["run"]["dir"].endswith("runs/c")
    assert cfg["meta"]["name"] == "c"


def test_precedence_cli_over_file_over_env(tmp_path):
    p = write(tmp_path, BASE + "[train]\nepochs = 4\n")
    env = {"RAVEN_TRAIN__EPOCHS": "7", "RAVEN_TRAIN__SEED": "11", "PATH": "x"}
    cfg = load_config(p, environ=env)
    assert cfg["train"]["epochs"] == 4          # file beats environment
    assert cfg["train"]["seed"] == 11           # environment beats default
    cfg = load_config(p, ["train.epochs=2"], environ=env)
    assert cfg["train"]["epochs"] == 2          # command line beats file


@pytest.mark.parametrize("text, match", [
    (BASE + "[trian]\nepochs = 1\n", r"unknown section \[trian\]; valid sections: data, model"),
    (BASE + "[train]\nepoch = 1\n", r"unknown key epoch in \[train\]; valid keys: epochs"),
    (BASE + "[train]\nepochs = \"ten\"\n", r"\[train\] epochs must be int, got 'ten'"),
    (BASE + "[train]\nepochs = 0\n", r"\[train\] epochs = 0 must be >= 1"),
    (BASE + "[train]\nepochs = true\n", r"must be int"),
    (BASE + "[cluster]\nbackend = \"tpu\"\n", r"backend = 'tpu' is not one of 'cpu', 'cuda'"),
    ("[model]\nlayers = [{type = \"dense\", units = 10}]\n", r"\[data\] path is required"),
    ("[data]\npath = \"d.h5\"\n", r"\[model\] layers is empty"),
    (BASE + "[train\n", r"not valid TOML"),
])
def test_bad_configs_give_one_clear_message(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, text), environ={})


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml", environ={})


def test_bad_overrides(tmp_path):
    p = write(tmp_path, BASE)
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(p, ["epochs"], environ={})
    with pytest.raises(ConfigError, match="unknown section"):
        load_config(p, ["nope.x=1"], environ={})
    assert parse_override("optimizer.lr=0.5") == ("optimizer", "lr", 0.5)
    assert parse_override("run.dir=abc") == ("run", "dir", "abc")


def test_int_accepted_for_float_and_open_sections_pass_through(tmp_path):
    cfg = load_config(write(tmp_path, BASE + "[optimizer]\nlr = 1\nmomentum = 0.9\n"), environ={})
    assert cfg["optimizer"]["lr"] == 1.0 and isinstance(cfg["optimizer"]["lr"], float)
    assert cfg["optimizer"]["momentum"] == 0.9


def test_resolved_config_round_trips_through_toml(tmp_path):
    cfg = load_config(write(tmp_path, BASE), environ={})
    text = to_toml(cfg)
    back = tomllib.loads(text)
    for section in ("data", "train", "run", "cluster", "model"):
        for k, v in back[section].items():
            assert cfg[section][k] == v
    assert "[train]" in describe_schema()

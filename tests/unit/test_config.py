"""Config loading: defaults, precedence, and one clear error per mistake."""
from __future__ import annotations

from pathlib import Path

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


def test_backend_is_cpu_cuda_or_auto(tmp_path):
    """The backend is chosen per rank when it starts (a node may lack a GPU),
    so the config only checks the name; "auto" is the default."""
    assert load_config(write(tmp_path, BASE), environ={})["cluster"]["backend"] == "auto"
    for name in ("cpu", "cuda", "auto"):
        cfg = load_config(write(tmp_path, BASE + f"[cluster]\nbackend = \"{name}\"\n", f"{name}.toml"), environ={})
        assert cfg["cluster"]["backend"] == name
    with pytest.raises(ConfigError, match="backend"):
        load_config(write(tmp_path, BASE, "d.toml"), ["cluster.backend=\"tpu\""], environ={})


def test_data_delivery_and_the_worker_cache(tmp_path):
    """data.delivery: read (the default: each worker opens data.path),
    scatter or auto; cluster.worker_cache_mb bounds what a worker keeps of
    the data it was sent (0: nothing)."""
    cfg = load_config(write(tmp_path, BASE), environ={})
    assert cfg["data"]["delivery"] == "read" and cfg["cluster"]["worker_cache_mb"] == 128.0
    for mode in ("read", "scatter", "auto"):
        assert load_config(write(tmp_path, BASE), [f'data.delivery="{mode}"'], environ={})["data"]["delivery"] == mode
    assert load_config(write(tmp_path, BASE), ["cluster.worker_cache_mb=0"], environ={})["cluster"]["worker_cache_mb"] == 0.0
    with pytest.raises(ConfigError, match=r"delivery = 'shared' is not one of 'read', 'scatter', 'auto'"):
        load_config(write(tmp_path, BASE), ['data.delivery="shared"'], environ={})
    with pytest.raises(ConfigError, match=r"worker_cache_mb = -1.0 must be >= 0"):
        load_config(write(tmp_path, BASE), ["cluster.worker_cache_mb=-1"], environ={})


def test_every_relative_path_is_relative_to_the_config_files_folder(tmp_path, monkeypatch):
    """data.path, run.dir and poc.drain_file follow one rule, whatever the
    current directory and wherever the value came from."""
    folder = tmp_path / "configs"
    folder.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    p = write(folder, BASE + "[run]\ndir = \"../runs/{name}\"\n[poc]\ndrain_file = \"ops/drain\"\n", "exp.toml")
    cfg = load_config(p, environ={})
    assert cfg["data"]["path"] == str(folder / "d.h5")
    assert cfg["run"]["dir"] == str(tmp_path / "runs" / "exp")
    assert cfg["poc"]["drain_file"] == str(folder / "ops" / "drain")
    # the default run dir and the default drain file
    cfg = load_config(write(folder, BASE, "dflt.toml"), environ={})
    assert cfg["run"]["dir"] == str(folder / "runs" / "dflt")
    assert cfg["poc"]["drain_file"] == str(folder / "runs" / "dflt" / "drain")
    # --set and the environment: the same rule
    cfg = load_config(p, ["run.dir=\"r2\"", "poc.drain_file=\"{run}/d\"", "data.path=\"sub/x.h5\""], environ={})
    assert cfg["run"]["dir"] == str(folder / "r2")
    assert cfg["poc"]["drain_file"] == str(folder / "r2" / "d")
    assert cfg["data"]["path"] == str(folder / "sub" / "x.h5")
    cfg = load_config(folder / "dflt.toml", environ={"RAVEN_RUN__DIR": "env-runs/{name}"})
    assert cfg["run"]["dir"] == str(folder / "env-runs" / "dflt")
    # absolute paths stay as they are
    cfg = load_config(p, [f"run.dir=\"{tmp_path / 'abs'}\"", "poc.drain_file=\"/var/tmp/x-drain\""], environ={})
    assert cfg["run"]["dir"] == str(tmp_path / "abs") and cfg["poc"]["drain_file"] == "/var/tmp/x-drain"
    with pytest.raises(ConfigError, match=r"\[run\] dir = '\{run\}/x' cannot use \{run\}"):
        load_config(p, ["run.dir=\"{run}/x\""], environ={})


def test_raven_hpc_drain_edits_the_file_the_master_reads(tmp_path, monkeypatch):
    """The run directory's config.toml (written by the master) names the same
    drain file the master polls, so `raven-hpc drain RUN_DIR` agrees with it
    from any current directory."""
    from raven_hpc.report import drain_path, update_drain

    folder = tmp_path / "cfg"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    for drain in ("ops/drain", "{run}/drain", "drain-{name}"):
        p = write(folder, BASE + f"[run]\ndir = \"../run-{{name}}\"\n[poc]\ndrain_file = \"{drain}\"\n", "job.toml")
        cfg = load_config(p, environ={})
        run_dir = Path(cfg["run"]["dir"])
        run_dir.mkdir(exist_ok=True)
        (run_dir / "config.toml").write_text(to_toml(cfg))   # what the master writes
        master_reads = Path(cfg["poc"]["drain_file"])
        assert master_reads.is_absolute()
        sub = tmp_path / "somewhere" / "else"
        sub.mkdir(parents=True, exist_ok=True)
        monkeypatch.chdir(sub)
        assert drain_path(run_dir) == master_reads, drain
        master_reads.parent.mkdir(parents=True, exist_ok=True)
        update_drain(run_dir, [2])
        assert master_reads.read_text().split() == ["2"], drain
        monkeypatch.chdir(tmp_path)


BN = """
[data]
path = "d.h5"
[model]
layers = [{type = "dense", units = 8}, {type = "batchnorm"}, {type = "dense", units = 3}]
"""


def _bn_cfg(tmp_path, batch, task_snippets, text=BN):
    from raven_hpc.config import load_config

    return load_config(write(tmp_path, text + f"[train]\nbatch_size = {batch}\ntask_snippets = {task_snippets}\n"),
                       environ={})


def test_batch_norm_tasks_too_small_for_the_snippet_table_are_refused_before_training(tmp_path):
    """A 1-sample snippet that can be a task of its own fails a batch-norm
    model mid-training; the start-up checks find it in the snippet table."""
    from raven_hpc.checks import validate

    counts = [32, 32, 32, 1]                       # 97 samples, snippet size 32
    cfg = _bn_cfg(tmp_path, batch=64, task_snippets=1)
    with pytest.raises(ConfigError, match=r"model\.layers\[1\] \(batchnorm\) needs at least 2 samples per task .*"
                                          r"a task of 1 sample: tasks are 1 snippet\(s\) \(train\.task_snippets = 1\)"
                                          r".*has snippet 3 \(1 sample\); fix: prepare the data again with a "
                                          r"--snippet-size that divides the 97 training samples"):
        validate(cfg, (5,), 3, counts, 32)
    validate(cfg, (5,), 3)                         # without the table: not checked
    validate(_bn_cfg(tmp_path, batch=64, task_snippets=2), (5,), 3, counts, 32)   # tasks of 2 snippets: >= 33
    # tasks of 2 snippets, steps of 3: a step's last task is 1 snippet, which can be the short one
    with pytest.raises(ConfigError, match=r"a step's last task can be 1 snippet\(s\) \(steps of 3 snippets, from "
                                          r"train\.batch_size = 96 and snippet size 32, cut into tasks of 2; the "
                                          r"epoch's last step has 1\).*snippet 3 \(1 sample\)"):
        validate(_bn_cfg(tmp_path, batch=96, task_snippets=2), (5,), 3, counts, 32)
    # snippets of one sample each, one per task
    with pytest.raises(ConfigError, match=r"a task of 1 sample.*fix: make every task hold at least 2 samples: raise "
                                          r"train\.task_snippets"):
        validate(_bn_cfg(tmp_path, batch=4, task_snippets=1), (5,), 3, [1] * 10, 1)
    # no batch norm, or a 2-d batch norm over 2x2 maps (4 values per channel per sample): nothing to refuse
    plain = BN.replace('{type = "batchnorm"}, ', "")
    validate(_bn_cfg(tmp_path, batch=64, task_snippets=1, text=plain), (5,), 3, counts, 32)
    conv = BN.replace('{type = "dense", units = 8}, {type = "batchnorm"}',
                      '{type = "reshape", shape = [2, 2, 2]}, {type = "batchnorm"}, {type = "flatten"}')
    validate(_bn_cfg(tmp_path, batch=64, task_snippets=1, text=conv), (8,), 3, counts, 32)

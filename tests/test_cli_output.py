"""The CLI's machine-readable output and run metadata, without Ray: `methods --json` is one JSON object, bad
`--tag` / `--run-name` values are one line (exit 2) before anything starts, the experiment's precedence, and the
exit codes are documented in `--help`."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.run import check_run_name, load_config, parse_tags
from pipelines.tracking import experiment_name
from trainers import method_keys
from trainers.common.config import ConfigError


def test_methods_json_is_one_object_listing_every_method():
    res = CliRunner().invoke(app, ["methods", "--json"])
    assert res.exit_code == 0
    out = json.loads(res.stdout)
    assert [m["key"] for m in out["methods"]] == list(method_keys())
    assert all(m["patent"].startswith("JP") and m["summary"] for m in out["methods"])


@pytest.mark.parametrize("args,fragment", [
    (["--tag", "team"], "--tag: 'team'; allowed: key=value"),
    (["--tag", "=x"], "--tag: '=x'; allowed: key=value"),
    (["--tag", "mlflow.user=me"], "--tag: 'mlflow.user' is set by trainlab or MLflow"),
    (["--tag", "method=other"], "--tag: 'method' is set by trainlab or MLflow"),
    (["--run-name", "two words"], "--run-name: 'two words'; allowed: 1-128 characters"),
    (["--run-name", "../escape"], "--run-name: '../escape'; allowed"),
])
def test_bad_run_metadata_is_one_line_before_anything_starts(args, fragment):
    res = CliRunner().invoke(app, ["run", "decorrelation", "--quick", *args])
    assert res.exit_code == 2, res.output
    assert fragment in res.output and "Traceback" not in res.output


def test_tags_and_run_names_that_are_allowed():
    assert parse_tags(["team=vision", "note=a=b", "empty="]) == {"team": "vision", "note": "a=b", "empty": ""}
    assert check_run_name("lr-test_1.2") == "lr-test_1.2"
    with pytest.raises(ConfigError):
        check_run_name("x" * 129)


def test_the_experiment_is_the_environments_then_the_configs_then_the_methods(monkeypatch):
    cfg = load_config("decorrelation", sets=["tracking.experiment=from-config"])
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    assert experiment_name(load_config("decorrelation"), "decorrelation") == "trainlab/decorrelation"
    assert experiment_name(cfg, "decorrelation") == "from-config"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    assert experiment_name(cfg, "decorrelation") == "from-env"


def test_help_documents_the_exit_codes_and_json():
    def shown(*args):  # rich wraps the help text to the terminal: compare with the wrapping undone
        return " ".join(CliRunner().invoke(app, [*args, "--help"]).output.replace("│", " ").split())

    assert "Exit codes: 0 done; 1 training failed" in shown() and "2 bad input" in shown()
    assert "--json" in shown("run") and "--run-name" in shown("run") and "MLFLOW_EXPERIMENT_NAME" in shown("run")


def test_split_contexts_follow_mlflows_names():
    from pipelines.tracking import split_context

    assert [split_context(s) for s in ("source_train", "train", "d1_val", "target_test", "eval", "task1_eval")] == [
        "training", "training", "validation", "test", "evaluation", "evaluation"]


@pytest.mark.parametrize("args,fragment", [
    (["--register", "bad/name"], "--register: 'bad/name'; allowed"),
    (["--register", "ok-name", "--set", "tracking.log_model=false"], "--register: tracking.log_model is false"),
])
def test_bad_register_requests_are_one_line_before_anything_starts(args, fragment):
    res = CliRunner().invoke(app, ["run", "decorrelation", "--quick", *args])
    assert res.exit_code == 2, res.output
    assert fragment in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("key", method_keys())
def test_describe_lists_every_config_field_once_with_its_range(key):
    from trainers.common.config import flatten

    res = CliRunner().invoke(app, ["run", key, "--quick", "--describe", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["fields"]
    names = [r["field"] for r in rows]
    assert len(names) == len(set(names))
    flat = set(flatten(load_config(key, quick=True).model_dump(mode="json")))
    by = {r["field"]: r for r in rows}
    assert flat <= set(names) and all(by[n]["default"] == {} for n in set(names) - flat)  # (an empty dict flattens away)
    assert by["train.epochs"]["allowed"] == ">= 1 and <= 10000" and by["train.epochs"]["type"] == "int"
    assert by["train.epochs"]["default"] == load_config(key, quick=True).train.epochs  # --quick's value
    assert by["train.optimizer"]["allowed"] == "sgd, adam, adamw"
    table = CliRunner().invoke(app, ["run", key, "--describe"])
    assert table.exit_code == 0 and "train.batch_size" in table.output, table.output

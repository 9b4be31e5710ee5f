"""mixture_sparsity on the spine: config validation, driver-side checks, and end to end through the CLI
(real Ray Train, real MLflow): the run is read back, physical pruning is exact, budget mode hits its
target, the pruned fraction grows with α0, and a tiny sweep nests its trials."""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from pipelines.cli import app

from conftest import mlflow_artifacts, mlflow_client, mlflow_runs
from pipelines.run import load_config
from trainers.common.config import ConfigError
from trainers.mixture_sparsity.loop import budget_tau, check

BAD = [
    (["method.weights=[0.5, 0.6]"], "method.weights", "sum to 1"),
    (["method.weights=[-0.5, 1.5]"], "method.weights", ">= 0"),
    (["method.stds=[0.5, 0]"], "method.stds", "> 0"),
    (["method.means=[0, 1, 2]"], "method.weights/means/stds", "differ"),
    (["method.family=[gaussian, laplace, laplace]"], "method.family", "allowed: 1 or 2"),
    (["method.family=[cauchy]"], "method.family", "'gaussian' or 'laplace'"),
    (["method.groups=[fc0]"], "method.groups", "'layer:rows' or 'layer:cols'"),
    (["method.budget=1.0"], "method.budget", "less than 1"),
    (["method.budget=0"], "method.budget", "greater than 0"),
    (["method.regularizer=lasso"], "method.regularizer", "'mixture', 'group_lasso', 'l2' or 'none'"),
    (["method.lam=-1"], "method.lam", "greater than or equal to 0"),
    (["method.warmup_epochs=20"], "method.warmup_epochs", "allowed: 0..14"),
    (["model.act=tanh"], "model.act", "'sigmoid' or 'relu'"),
    (["method.budget_unit=bytes"], "method.budget_unit", "'groups' or 'params'"),
    (["method.budget=0.5", "method.regularizer=none"], "method.budget_search", "allowed: threshold"),
    (["method.budget=0.5", "method.regularizer=group_lasso"], "method.threshold", "fixed deletion threshold"),
    (["method.calibration_runs=1"], "method.calibration_runs", "greater than or equal to 2"),
    (["method.calibration_tolerance=0"], "method.calibration_tolerance", "greater than 0"),
]


@pytest.mark.parametrize("sets,field,fragment", BAD, ids=[b[0][0] for b in BAD])
def test_bad_config_values_are_rejected_with_the_field_named(sets, field, fragment):
    with pytest.raises(ConfigError) as ei:
        load_config("mixture_sparsity", sets=sets)
    msg = str(ei.value)
    assert field in msg and fragment in msg, msg


DIGITS = SimpleNamespace(input_shape=(1, 8, 8), num_classes=10)


@pytest.mark.parametrize("sets,fragment", [
    (["method.groups=[fc7:rows]"], "unknown layer 'fc7'"),
    (["method.groups=[fc2:rows]"], "output classes"),
    (["method.weights=[1.0]", "method.means=[0]", "method.stds=[0.5]"], "method.threshold"),
    (["model.name=cnn", "method.groups=[conv0:rows]"], "model: image_hw: (8, 8) is too small"),
])
def test_driver_side_checks_name_the_field(sets, fragment):
    with pytest.raises(ValueError) as ei:
        check(load_config("mixture_sparsity", sets=sets), DIGITS)
    assert fragment in str(ei.value), str(ei.value)
    big = SimpleNamespace(input_shape=(1, 16, 16), num_classes=10)
    with pytest.raises(ValueError, match="unknown layer 'fc9'"):
        check(load_config("mixture_sparsity", sets=["model.name=cnn", "method.groups=[conv0:rows, fc9:rows]"]), big)
    check(load_config("mixture_sparsity", sets=["model.name=cnn", "method.groups=[conv0:rows, conv1:rows, fc0:rows]"]),
          big)


def test_a_single_component_prior_is_fine_with_an_explicit_threshold_or_budget():
    one = ["method.weights=[1.0]", "method.means=[0]", "method.stds=[0.5]"]
    check(load_config("mixture_sparsity", sets=one + ["method.threshold=0.1"]), DIGITS)
    check(load_config("mixture_sparsity", sets=one + ["method.budget=0.3", "method.budget_search=threshold"]), DIGITS)
    with pytest.raises(ValueError, match="method.budget_search: calibrate .* has none"):
        check(load_config("mixture_sparsity", sets=one + ["method.budget=0.3"]), DIGITS)


def test_the_budget_knob_moves_only_the_delete_weight_and_keeps_a_valid_mixture():
    cfg = load_config("mixture_sparsity", sets=["method.budget=0.5", "method.weights=[0.6, 0.3, 0.1]",
                                                "method.means=[0, 2, 3]", "method.stds=[0.5, 0.5, 0.5]"])
    knob = cfg.budget_knob()
    assert knob.name == "method.weights[0]" and knob.metric == "natural_pruned_fraction" and knob.target == 0.5
    assert knob.shown(knob.start) == pytest.approx(0.6)
    last = -1.0
    for u in (knob.lo, -1.0, 0.0, 3.0, knob.hi):
        w = knob.overrides(u)["method"]["weights"]
        assert sum(w) == pytest.approx(1.0) and w[1] / w[2] == pytest.approx(3.0) and w[0] > last
        last = w[0]
        load_config("mixture_sparsity", sets=["method.means=[0, 2, 3]", "method.stds=[0.5, 0.5, 0.5]"],
                    overrides=knob.overrides(u))  # every point of the search is a valid config
    gl = load_config("mixture_sparsity", sets=["method.budget=0.5", "method.budget_unit=params",
                                               "method.regularizer=group_lasso", "method.threshold=0.1"]).budget_knob()
    assert gl.name == "method.lam" and gl.metric == "natural_params_removed_fraction"
    assert gl.overrides(-2.0) == {"method": {"lam": pytest.approx(0.01)}}
    assert load_config("mixture_sparsity", sets=["method.budget=0.5", "method.budget_search=threshold"]).budget_knob() is None
    assert load_config("mixture_sparsity").budget_knob() is None


def test_a_parameter_budget_removes_that_share_of_parameters():
    """budget_unit=params: the smallest-norm groups whose physical removal comes closest to the share."""
    import torch

    from trainers.mixture_sparsity.loop import budget_threshold, exact_norms, params_removed
    from trainers.mixture_sparsity.models import SigmoidMLP

    torch.manual_seed(0)
    model = SigmoidMLP(64, [128, 128], 10)
    spec = [("fc0", "rows"), ("fc1", "rows")]
    norms = exact_norms(model, spec)
    for b in (0.2, 0.5, 0.8):
        got = params_removed(model, spec, budget_threshold(model, spec, norms, b, "params"))
        assert abs(got - b) < 0.01, (b, got)    # one fc0 row is 64+1+128 of ~26k parameters


def test_budget_threshold_deletes_the_requested_share():
    import torch

    norms = torch.rand(200, generator=torch.Generator().manual_seed(0))
    for b in (0.1, 0.3, 0.5, 0.7, 0.9):
        assert (norms < budget_tau(norms, b)).float().mean().item() == pytest.approx(b)


# ------------------------------------------------------------------------------------------- e2e

def _runs():
    return mlflow_runs("trainlab/mixture_sparsity")


_client, _artifacts = mlflow_client, mlflow_artifacts


@pytest.mark.e2e
def test_quick_run_prunes_physically_and_logs_everything(ray_session, workdir):
    res = CliRunner().invoke(app, ["run", "mixture_sparsity", "--quick", "--set", "method.budget=0.5",
                                   "--set", "method.budget_search=threshold"])
    assert res.exit_code == 0, res.output
    (run,) = _runs()
    assert run.info.status == "FINISHED"
    assert run.data.tags["method"] == "mixture_sparsity" and run.data.tags["variant"] == "mixture"
    assert run.data.params["method.budget"] == "0.5" and run.data.tags["threshold_rule"] == "budget"
    m = run.data.metrics
    for k in ("val_acc", "task_loss", "reg_loss", "pruned_fraction", "params_before", "params_after",
              "acc_after_prune", "latency_ratio_b1", "latency_ratio_b64", "latency_ratio_b1024", "macs_after"):
        assert k in m, k
    assert m["pruned_fraction"] == pytest.approx(0.5)
    assert m["params_after"] < 0.7 * m["params_before"] and m["macs_after"] < m["macs_before"]
    assert m["max_abs_diff_pruned_vs_masked"] < 1e-5          # the smaller model computes the same function
    assert m["val_acc"] > 0.3                                  # 5 quick epochs learn the digits well above 0.1
    arts = _artifacts(run.info.run_id)
    assert "config.yaml" in arts and "plots/group_norm_histogram.png" in arts
    import mlflow
    import torch

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    (model,) = [x for x in mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
                if x.source_run_id == run.info.run_id]
    pruned = mlflow.pytorch.load_model(f"models:/{model.model_id}")
    assert sum(p.numel() for p in pruned.parameters()) == m["params_after"]
    assert pruned(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.e2e
def test_pruned_fraction_grows_with_the_delete_weight(ray_session, workdir):
    """The patent's point: α0 (weight of the zero-mean 'delete' component) steers how much is pruned."""
    from pipelines.run import train

    fractions = []
    for a0 in (0.3, 0.9):
        cfg = load_config("mixture_sparsity", quick=True,
                          sets=[f"method.weights=[{a0}, {round(1 - a0, 6)}]", "tracking.log_model=false",
                                "scaling.num_workers=0"])  # local mode: the prior is under test, not Ray Train
        fractions.append(train("mixture_sparsity", cfg).metrics["pruned_fraction"])
    assert fractions[0] < fractions[1], fractions


@pytest.mark.e2e
def test_budget_calibration_retrains_until_the_prior_deletes_the_budget(ray_session, workdir):
    """Budget mode: trainlab bisects α0 over full trainings (nested MLflow runs) and the chosen run's
    pruned model deletes exactly the budget."""
    res = CliRunner().invoke(app, ["run", "mixture_sparsity", "--quick", "--set", "method.budget=0.4",
                                   "--set", "method.calibration_runs=3", "--set", "method.calibration_tolerance=0.1",
                                   "--set", "tracking.log_model=false", "--num-workers", "0"])  # local mode
    assert res.exit_code == 0, res.output
    runs = _runs()
    (parent,) = [r for r in runs if r.data.tags.get("kind") == "budget_calibration"]
    children = sorted((r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
                      key=lambda r: int(r.data.tags["calibration_step"]))
    pm = parent.data.metrics
    assert parent.info.status == "FINISHED" and len(children) == pm["budget_calibration_runs"] <= 3
    assert all(c.info.status == "FINISHED" and c.data.metrics["pruned_fraction"] == pytest.approx(0.4, abs=1 / 256)
               for c in children)                       # every training prunes exactly the budget ...
    natural = [c.data.metrics["natural_pruned_fraction"] for c in children]
    chosen = next(c for c in children if c.info.run_id == parent.data.tags["chosen_run_id"])
    assert pm["budget_natural_achieved"] == chosen.data.metrics["natural_pruned_fraction"]
    assert abs(pm["budget_natural_achieved"] - 0.4) == pytest.approx(min(abs(n - 0.4) for n in natural))
    assert pm["budget_converged"] == float(abs(pm["budget_natural_achieved"] - 0.4) <= 0.1)
    a0 = [float(c.data.params["method.weights"].strip("[]").split(",")[0]) for c in children]
    assert a0[0] == pytest.approx(0.7) and len(set(a0)) == len(a0)   # starts at the user's α0, then moves
    assert "calibration parent run" in res.output


@pytest.mark.e2e
def test_tiny_sweep_nests_trials(ray_session, workdir):
    res = CliRunner().invoke(app, ["sweep", "mixture_sparsity", "--quick", "--num-samples", "2", "--max-concurrent", "2",
                                   "--scheduler", "fifo", "--set", "tracking.log_model=false"])
    assert res.exit_code == 0, res.output
    runs = _runs()
    (parent,) = [r for r in runs if r.data.tags.get("kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    assert parent.data.metrics["best_val_acc"] == pytest.approx(max(c.data.metrics["val_acc"] for c in children))


def test_user_parquet_feature_vectors_feed_the_mlp(ray_session, tmp_path):
    """User data for this method: parquet `features` + `label` (e.g. acoustic frames), read with Ray Data."""
    from pipelines.data import build_classification, embedded_digits_shift, write_parquet

    arrays = {k: (x.reshape(len(x), -1), y) for k, (x, y) in embedded_digits_shift(image_size=8, shift=()).items()}
    path = tmp_path / "frames.parquet"
    write_parquet(arrays, str(path))
    cfg = load_config("mixture_sparsity", sets=[f"data.source={path}"])
    bundle = build_classification(cfg)
    assert bundle.input_shape == (64,) and bundle.num_classes == 10
    assert bundle.sizes["source_train"] == len(arrays["source_train"][0])
    check(cfg, bundle)
    with pytest.raises(ValueError, match="model: .*cnn needs image inputs"):
        check(load_config("mixture_sparsity", sets=[f"data.source={path}", "model.name=cnn"]), bundle)

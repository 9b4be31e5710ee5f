"""shift_explainer on the spine: config and data checks, the embedded benchmark's known cause, and end to end
through the CLI on real Ray (classifier job, Ray Data batch inference, generator job) and real MLflow: metrics,
the grid PNG, the models, `trainlab explain` from the checkpoint, a user classifier from an MLflow URI, and the
bad inputs that must stop before any run is created."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import mlflow_artifacts, mlflow_client, mlflow_runs
from pipelines.cli import app
from pipelines.data import embedded_colour_thickness, write_parquet
from pipelines.run import load_config
from trainers.common.config import ConfigError

EXP = "trainlab/shift_explainer"
runner = CliRunner()


# ----------------------------------------------------------------------------- config, no Ray

BAD = [
    (["method.k=-1"], "method.k", "greater than or equal to 0"),
    (["method.selection=threshold"], "method.tau1", "required when method.selection is 'threshold'"),
    (["method.selection=threshold", "method.tau1=0.1"], "method.tau2", "required"),
    (["method.selection=threshold", "method.tau_unit=quantile", "method.tau1=0.1", "method.tau2=1.5"],
     "method.tau2", "quantile in [0, 1]"),
    (["method.layout=diagonal", "method.k=3", "method.k_loss=4"], "method.k_loss", "the same count"),
    (["method.model_type=gan"], "method.model_type", "'ae', 'vae' or 'bigan'"),
    (["method.latent_dim=0"], "method.latent_dim", "greater than or equal to 1"),
    (["data.image_size=18"], "data.image_size", "multiple of 4"),
    (["method.loss_fn=hinge"], "method.loss_fn", "'ce' or 'one_minus_p'"),
]


@pytest.mark.parametrize("sets,field,fragment", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_config_values_name_the_field(sets, field, fragment):
    with pytest.raises(ConfigError) as ei:
        load_config("shift_explainer", sets=sets)
    assert field in str(ei.value) and fragment in str(ei.value), str(ei.value)


# ----------------------------------------------------------------------------- the embedded benchmark

def test_colour_thickness_benchmark_has_the_known_cause():
    """Domain 2 = thicker strokes (ink proxy clearly higher); both domains cover every hue (colour is not
    the shift); deterministic in the seed; disjoint digits; labelled everywhere."""
    from trainers.shift_explainer.metrics import hue, ink

    a, b = embedded_colour_thickness(0), embedded_colour_thickness(0)
    for k in a:
        assert np.array_equal(a[k][0], b[k][0]) and np.array_equal(a[k][1], b[k][1])
        assert a[k][0].shape[1:] == (3, 16, 16) and a[k][0].min() >= 0 and a[k][0].max() <= 1
        assert set(np.unique(a[k][1])) == set(range(10))
    ink1 = ink(torch.from_numpy(a["d1_train"][0])).mean().item()
    ink2 = ink(torch.from_numpy(a["d2_train"][0])).mean().item()
    assert ink2 > 1.8 * ink1, (ink1, ink2)
    for k in ("d1_train", "d2_train"):
        h = hue(torch.from_numpy(a[k][0])).numpy()
        counts = np.histogram(h[np.isfinite(h)], bins=6, range=(0, 1))[0]
        assert counts.min() > 0.6 * counts.mean(), counts      # hues spread over the whole circle
    c = embedded_colour_thickness(1)
    assert not np.array_equal(a["d1_train"][0], c["d1_train"][0])
    with pytest.raises(ValueError, match="thickness"):
        embedded_colour_thickness(0, thickness=1)


# ----------------------------------------------------------------------------- end to end (real Ray + MLflow)

def _run(*args):
    res = runner.invoke(app, list(args), catch_exceptions=False)
    return res.exit_code, res.output


@pytest.fixture(scope="module")
def quick_run(ray_session, tmp_path_factory):
    """One quick run shared by the read-back tests (its own MLflow store and storage)."""
    import os

    d = tmp_path_factory.mktemp("se_quick")
    old = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "TRAINLAB_STORAGE")}
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{d / 'mlflow.db'}"
    os.environ["TRAINLAB_STORAGE"] = str(d / "runs")
    try:
        code, out = _run("run", "shift_explainer", "--quick", "--num-workers", "0")  # local mode (2 workers: below)
        assert code == 0, out
        runs = mlflow_runs(EXP)
        yield {"dir": d, "out": out, "runs": runs}
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _checkpoint(run):
    return run.data.params.get("checkpoint") or run.data.tags.get("checkpoint")


@pytest.mark.e2e
def test_quick_run_logs_the_explanation(quick_run):
    runs = quick_run["runs"]
    assert len(runs) == 1
    r = runs[0]
    assert r.info.status == "FINISHED"
    m = r.data.metrics
    for k in ("classifier_acc_domain1", "classifier_acc_domain2", "recon_loss", "loss_axis_spearman",
              "feature_axis_loss_spread", "shift_pvalue", "seconds_per_grid", "latent_invariance"):
        assert k in m and np.isfinite(m[k]), (k, m.get(k))
    # the benchmark's shift is real: the classifier is worse on domain 2, and the shift test sees it
    assert m["classifier_acc_domain1"] > m["classifier_acc_domain2"] + 0.1, m
    assert m["shift_pvalue"] < 1e-3
    assert -1 <= m["loss_axis_spearman"] <= 1
    # recon_loss at every epoch
    hist = mlflow_client().get_metric_history(r.info.run_id, "recon_loss")
    assert sorted(h.step for h in hist) == [1, 2, 3, 4]
    arts = set(mlflow_artifacts(r.info.run_id))
    for a in ("explanation/explanation_grid.png", "explanation/selected_samples.npz", "explanation/explanation.json",
              "plots/curves.png"):
        assert a in arts, (a, sorted(arts))
    import re

    assert any(re.match(r"images/explanation_grid[+%]step[+%]4[+%]", a) for a in arts), sorted(arts)  # MLflow image
    # the generator and the classifier are MLflow models of this run that load and run
    import mlflow
    import mlflow.pytorch

    models = {lm.name: lm for lm in mlflow.search_logged_models(experiment_ids=[r.info.experiment_id],
                                                                 output_format="list")
              if lm.source_run_id == r.info.run_id}
    assert set(models) == {"generator", "classifier"}, models
    gen = mlflow.pytorch.load_model(f"models:/{models['generator'].model_id}")
    with torch.no_grad():
        x_hat = gen.decode(gen.encode(torch.zeros(2, 3, 16, 16)), torch.tensor([0.1, 0.9]))
    assert x_hat.shape == (2, 3, 16, 16)
    f = mlflow.pytorch.load_model(f"models:/{models['classifier'].model_id}")
    assert f(torch.zeros(2, 3, 16, 16)).shape == (2, 10)
    assert r.data.tags["method"] == "shift_explainer" and r.data.tags["variant"] == "ae"
    assert "loss_axis_spearman" in quick_run["out"]


@pytest.mark.e2e
def test_explanation_json_matches_the_grid(quick_run):
    """The logged grid: K = 3 -> 5 × 5 cells; conditioning losses evenly spaced from L(1) to L(2); the
    selected pair is a correct domain-1 sample and a misclassified domain-2 sample of the same class."""
    r = quick_run["runs"][0]
    local = mlflow_client().download_artifacts(r.info.run_id, "explanation/explanation.json", str(quick_run["dir"]))
    info = json.loads(Path(local).read_text())
    ls = np.array(info["grid_conditioning_losses"])
    sel = info["selection"]
    assert len(ls) == 5 and np.allclose(ls, np.linspace(sel["l1"], sel["l2"], 5), atol=1e-5)
    assert np.array(info["realised_loss"]).shape == (5, 5)
    assert sel["y1"] == sel["y2"] and sel["l1"] < sel["l2"]
    assert info["metrics"]["loss_axis_spearman"] == pytest.approx(r.data.metrics["loss_axis_spearman"])


@pytest.mark.e2e
def test_explain_from_the_checkpoint_in_seconds(quick_run, tmp_path):
    """`trainlab explain` redraws the grid with other settings from the final checkpoint, without Ray; the
    classifier stored there reproduces the losses the generator was conditioned on (f never changed)."""
    from trainers.shift_explainer.classifier import unpack_classifier
    from trainers.shift_explainer.explanation import load_final_state
    from trainers.shift_explainer.losses import per_sample_loss

    r = quick_run["runs"][0]
    ckpt = _checkpoint(r)
    assert ckpt and Path(ckpt).is_dir(), r.data.params
    out = tmp_path / "g.png"
    t0 = time.perf_counter()
    code, text = _run("explain", "--checkpoint", ckpt, "--set", "method.k=5", "--output", str(out))
    dt = time.perf_counter() - t0
    assert code == 0, text
    assert out.is_file() and out.stat().st_size > 10_000
    assert "loss_axis_spearman" in text and str(out) in text.replace("\n", "")
    assert dt < 30, dt
    code, text = _run("explain", "--checkpoint", ckpt, "--set", "method.layout=diagonal", "--output", str(tmp_path / "d.png"))
    assert code == 0 and "diagonal_loss_spearman" in text, text
    code, text = _run("explain", "--checkpoint", ckpt, "--set", "train.lr=1")
    assert code == 2 and "method.*" in text, text

    state = load_final_state(ckpt)
    f = unpack_classifier(state["classifier"], (3, 16, 16), 10)
    d2 = state["pool"]["d2"]
    with torch.no_grad():
        again = per_sample_loss(f(torch.from_numpy(d2["x"])), torch.from_numpy(d2["y"]), state["cfg"]["method"]["loss_fn"]).numpy()
    np.testing.assert_allclose(again, d2["loss"], rtol=1e-5, atol=1e-6)


@pytest.mark.e2e
def test_thresholds_that_select_nothing_stop_before_any_run(ray_session, workdir):
    code, out = _run("run", "shift_explainer", "--quick", "--set", "method.selection=threshold",
                     "--set", "method.tau1=1", "--set", "method.tau2=1000000", "--set", "method.classifier_epochs=1",
                     "--num-workers", "0")
    assert code == 2, out
    assert "method.tau2" in out and "span" in out, out
    c = mlflow_client()
    exp = c.get_experiment_by_name(EXP)
    assert exp is None or not c.search_runs([exp.experiment_id])


@pytest.mark.e2e
def test_domain2_without_labels_is_one_clear_error(ray_session, workdir):
    a = embedded_colour_thickness(0)
    arrays = {"source_train": a["d1_train"], "source_val": a["d1_val"],
              "target_train": (a["d2_train"][0], np.full(len(a["d2_train"][0]), -1)),
              "target_val": a["d2_val"], "target_test": a["d2_val"]}
    write_parquet(arrays, str(workdir / "pair.parquet"))
    code, out = _run("run", "shift_explainer", "--quick", "--set", f"data.source={workdir / 'pair.parquet'}")
    assert code == 2, out
    assert "unlabelled" in out and "needs the true label" in out, out


@pytest.mark.e2e
def test_user_classifier_from_an_mlflow_uri_and_a_size_mismatch(ray_session, workdir):
    """A classifier logged to MLflow by the user is loaded by URI (no S102 training): the run's domain
    accuracies equal the ones computed directly. A classifier for other image sizes is refused up front."""
    import mlflow
    import mlflow.pytorch

    from trainers.common.models import SmallCNN

    a = embedded_colour_thickness(0)
    torch.manual_seed(0)
    f = SmallCNN(3, 10, 8, 32)
    opt = torch.optim.Adam(f.parameters(), 3e-3)
    x, y = torch.from_numpy(a["d1_train"][0]), torch.from_numpy(a["d1_train"][1])
    for _ in range(60):
        idx = torch.randint(0, len(x), (64,))
        loss = torch.nn.functional.cross_entropy(f(x[idx]), y[idx])
        opt.zero_grad(), loss.backward(), opt.step()
    f.eval()
    import os

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])   # this test's store (earlier runs set another)
    mlflow.set_experiment("user-models")
    with mlflow.start_run() as run:
        mlflow.pytorch.log_model(f, name="model", pip_requirements=["torch"],   # MLflow 3's default 'pt2' format
                                 input_example=np.zeros((2, 3, 16, 16), np.float32))
    uri = f"runs:/{run.info.run_id}/model"
    code, out = _run("run", "shift_explainer", "--quick", "--set", f"method.classifier={uri}",
                     "--set", "train.epochs=1", "--set", "tracking.log_model=false", "--num-workers", "0")
    assert code == 0, out
    m = mlflow_runs(EXP)[0].data.metrics
    with torch.no_grad():
        acc1 = (f(torch.from_numpy(a["d1_val"][0])).argmax(1).numpy() == a["d1_val"][1]).mean()
        x2 = np.concatenate([a["d2_train"][0], a["d2_val"][0]])
        y2 = np.concatenate([a["d2_train"][1], a["d2_val"][1]])
        acc2 = (f(torch.from_numpy(x2)).argmax(1).numpy() == y2).mean()
    assert m["classifier_acc_domain1"] == pytest.approx(acc1, abs=1e-6)
    assert m["classifier_acc_domain2"] == pytest.approx(acc2, abs=1e-6)

    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 10)), workdir / "f16.pt")
    n_before = len(mlflow_runs(EXP))
    code, out = _run("run", "shift_explainer", "--quick", "--set", "data.image_size=32",
                     "--set", f"method.classifier={workdir / 'f16.pt'}")
    assert code == 2, out
    assert "method.classifier" in out and "image size mismatch" in out, out
    assert len(mlflow_runs(EXP)) == n_before


@pytest.mark.e2e
def test_two_workers_bigan_with_style_transformer(ray_session, workdir):
    """Every path at once on 2 gloo workers: the BiGAN variant (E, G, D(x, z | L)) and the claim-6 style
    transformer (x(1) := A(x(2))); the run finishes with its figures and the style transformer's own."""
    code, out = _run("run", "shift_explainer", "--quick", "--num-workers", "2", "--set", "method.model_type=bigan",
                     "--set", "method.style_transformer=true", "--set", "train.epochs=2",
                     "--set", "tracking.log_model=false")
    assert code == 0, out
    r = mlflow_runs(EXP)[0]
    m = r.data.metrics
    assert r.data.tags["variant"] == "bigan"
    for k in ("loss_d", "loss_style_cycle", "style_cycle_error", "style_loss_drop", "loss_axis_spearman"):
        assert k in m and np.isfinite(m[k]), k


# ----------------------------------------------------------------------------- one S103 step, no Ray

@pytest.mark.parametrize("sets", [["method.model_type=ae"], ["method.model_type=vae"], ["method.model_type=bigan"],
                                  ["method.model_type=ae", "method.z_independence=1"],
                                  ["method.model_type=ae", "method.style_transformer=true"]],
                         ids=["ae", "vae", "bigan", "ae+independence", "ae+style"])
def test_train_step_moves_every_trained_model_and_reports_its_losses(sets, one_torch_thread):
    from trainers.shift_explainer.step import LOSS_KEYS, build_models, make_optimizers, train_step

    cfg = load_config("shift_explainer", sets=sets + ["model.width=8"])
    torch.manual_seed(0)
    models = build_models(cfg, (3, 16, 16), loss_mean=0.5, loss_std=0.3)
    opts = make_optimizers(cfg, models)
    before = {k: [p.detach().clone() for p in mod.parameters()] for k, mod in models.modules().items()}
    g = torch.Generator().manual_seed(0)
    x, l = torch.rand(16, 3, 16, 16, generator=g), torch.rand(16, generator=g)
    domain = torch.tensor([1, 2] * 8)
    out = train_step(models, opts, x, l, domain, cfg.method, g)
    assert set(out) == set(LOSS_KEYS) and all(torch.isfinite(v) for v in out.values())
    assert set(opts) == set(models.modules()) == ({"gen"} | ({"disc"} if cfg.method.model_type == "bigan" else set())
                                                  | ({"style", "style_disc"} if cfg.method.style_transformer else set()))
    for k, mod in models.modules().items():          # every model with an optimiser was updated
        moved = any(not torch.equal(a, b) for a, b in zip(before[k], mod.parameters()))
        assert moved, k
    m = cfg.method
    assert (out["loss_d"] != 0) == (m.model_type == "bigan")
    assert (out["loss_kl"] != 0) == (m.model_type == "vae")
    assert (out["loss_z_dependence"] != 0) == (m.z_independence > 0)
    assert (out["loss_style_cycle"] != 0) == m.style_transformer


def test_the_independence_penalty_removes_loss_information_from_z(one_torch_thread):
    """method.z_independence: on images whose L is the brightness of a square, a probe fitted afterwards
    predicts L from Z almost perfectly without the penalty and no better than the mean with it, at the same
    reconstruction error (the decoder takes the brightness from its condition instead)."""
    from trainers.shift_explainer.step import build_models, make_optimizers, train_step
    from trainers.shift_explainer.losses import recon_loss

    g = torch.Generator().manual_seed(0)
    x = torch.rand(256, 3, 8, 8, generator=g) * 0.2
    bright = torch.rand(256, generator=g)
    x[:, :, 2:6, 2:6] += bright[:, None, None, None] * 0.8          # L = the brightness of a square
    l = bright.clone()

    def fit(weight: float) -> tuple[float, float]:
        cfg = load_config("shift_explainer", sets=["model.width=8", "method.latent_dim=2", "train.lr=3e-3",
                                                   f"method.z_independence={weight}"])
        torch.manual_seed(1)
        models = build_models(cfg, (3, 8, 8), float(l.mean()), float(l.std()))
        opts = make_optimizers(cfg, models)
        for _ in range(300):
            idx = torch.randint(0, 256, (64,), generator=g)
            train_step(models, opts, x[idx], l[idx], torch.ones(64, dtype=torch.long), cfg.method, g)
        with torch.no_grad():
            z = models.gen.encode(x)
            rec = float(recon_loss(x, models.gen.decode(z, l)))
        probe = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
        o = torch.optim.Adam(probe.parameters(), 1e-2)
        c = ((l - l.mean()) / l.std())[:, None]
        for _ in range(400):
            loss = torch.nn.functional.mse_loss(probe(z), c)
            o.zero_grad(), loss.backward(), o.step()
        return float(loss.detach()), rec

    (plain, rec0), (indep, rec1) = fit(0.0), fit(1.0)
    assert plain < 0.1, plain                   # without it, Z encodes L
    assert indep > 0.8, indep                   # with it, L is (nearly) unpredictable from Z: variance is 1
    assert rec1 < 1.5 * rec0 + 1e-3, (rec0, rec1)


def test_hsic_dependence_against_numpy():
    from trainers.shift_explainer.losses import hsic_dependence

    rng = np.random.default_rng(0)
    z = rng.normal(size=(40, 3))
    l = rng.normal(size=40)

    def np_nhsic(a, b):
        def gram(v):
            v = v.reshape(len(v), -1)
            d2 = ((v[:, None] - v[None]) ** 2).sum(-1)
            bw = np.median(d2[~np.eye(len(v), dtype=bool)])
            h = np.eye(len(v)) - 1 / len(v)
            return h @ np.exp(-d2 / bw) @ h
        ka, kb = gram(a), gram(b)
        return (ka * kb).sum() / (np.linalg.norm(ka) * np.linalg.norm(kb))

    got = float(hsic_dependence(torch.tensor(z), torch.tensor(l)))
    assert got == pytest.approx(np_nhsic(z, l), rel=1e-3)          # float32 Gram matrices
    dep = float(hsic_dependence(torch.tensor(np.c_[l, l ** 2]), torch.tensor(l)))
    assert dep > 0.5 and got < 0.2                              # dependent vs independent
    assert float(hsic_dependence(torch.tensor(z) * 100, torch.tensor(l))) == pytest.approx(got, rel=1e-4)
    with pytest.raises(ValueError, match="z, l"):
        hsic_dependence(torch.zeros(3, 2), torch.zeros(3))


@pytest.mark.e2e
def test_tiny_sweep_nests_trials_and_reuses_the_classifier(ray_session, workdir):
    """`trainlab sweep shift_explainer`, 2 trials over registry entries of the space (latent size and the
    Z–L independence weight): one parent run, 2 nested children with the sweep metric; the second trial
    reuses the first one's classifier (same data, seed and classifier settings: trained once per sweep)."""
    import yaml

    from trainers import get_method

    sp = get_method("shift_explainer").search_space
    space = {"method.latent_dim": {"choice": [2, 4]}, "method.z_independence": sp["method.z_independence"]}
    assert set(space["method.latent_dim"]["choice"]) <= set(sp["method.latent_dim"]["choice"])
    (workdir / "space.yaml").write_text(yaml.safe_dump(space))
    code, out = _run("sweep", "shift_explainer", "--quick", "--num-samples", "2", "--max-concurrent", "1",
                     "--scheduler", "fifo", "--space", str(workdir / "space.yaml"), "--set", "train.epochs=1",
                     "--set", "method.classifier_epochs=2", "--set", "tracking.log_model=false",
                     "--num-workers", "0")  # trials train in their own process; so does the classifier (local mode)
    assert code == 0, out
    runs = mlflow_runs(EXP)
    (parent,) = [r for r in runs if r.data.tags.get("kind") == "sweep"]
    children = sorted([r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id],
                      key=lambda r: r.info.start_time)
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    rho = [c.data.metrics["loss_axis_spearman"] for c in children]
    assert parent.data.metrics["best_loss_axis_spearman"] == pytest.approx(max(rho))
    assert [c.data.tags["classifier_source"].split(":")[0] for c in children] == ["trained", "cache"]
    assert children[0].data.metrics["classifier_acc_domain1"] == children[1].data.metrics["classifier_acc_domain1"]

"""ssd2gan on the spine: config validation, the training iteration's update isolation and order
(spec §8.2 tests 11–14), the quality reference, and end to end through the CLI (real Ray Train, real
MLflow): the run is read back, per-step losses and artifacts are logged, a stopped run resumes with
its step count, and a tiny sweep nests its trials."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import mlflow_artifacts, mlflow_client, mlflow_runs
from pipelines.cli import app
from pipelines.run import load_config
from trainers.common.config import ConfigError
from trainers.ssd2gan.loop import LOSS_KEYS, build_models, check, make_optimizers, train_step


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRAINLAB_CACHE", str(tmp_path_factory.getbasetemp() / "trainlab-cache"))


BAD = [
    (["method.alpha=0"], "method.alpha", "greater than 0"),
    (["method.alpha=1"], "method.alpha", "less than 1"),
    (["method.lambda_c=-0.1"], "method.lambda_c", "greater than or equal to 0"),
    (["method.transform=wavelet"], "method.transform", "'dct' or 'dft'"),
    (["method.variant=V4"], "method.variant", "'sngan'"),
    (["data.image_size=24"], "data.image_size", "16 or 32"),
    (["method.loss_type=hinge"], "method.loss_type", "'log' or 'ns'"),
    (["method.fd_samples=10"], "method.fd_samples", "greater than or equal to 64"),
    (["train.optimizer=sgd"], "train.optimizer", "adam, adamw"),
]


@pytest.mark.parametrize("sets,field,fragment", BAD, ids=[b[0][0] for b in BAD])
def test_bad_config_values_are_rejected_with_the_field_named(sets, field, fragment):
    with pytest.raises(ConfigError) as ei:
        load_config("ssd2gan", sets=sets)
    assert field in str(ei.value) and fragment in str(ei.value), str(ei.value)


def test_image_size_must_match_the_data():
    cfg = load_config("ssd2gan", sets=["data.image_size=32"])
    with pytest.raises(ValueError, match=r"data.image_size: 32, but the images have shape \(1, 16, 16\)"):
        check(cfg, SimpleNamespace(input_shape=(1, 16, 16)))
    check(load_config("ssd2gan"), SimpleNamespace(input_shape=(1, 16, 16)))


# ----------------------------------------------------------------------------- one iteration, no Ray

def _setup(variant: str, lam: float = 0.001, seed: int = 0, **method):
    sets = [f"method.variant={variant}", f"method.lambda_c={lam}", "model.g_width=8", "model.d_width=8",
            "model.z_dim=8"] + [f"method.{k}={v}" for k, v in method.items()]
    cfg = load_config("ssd2gan", sets=sets)
    torch.manual_seed(seed)
    g, ds, df = build_models(cfg, 1)
    return cfg, g, ds, df, make_optimizers(cfg, g, ds, df)


def _batch(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(8, 1, 16, 16, generator=gen) * 2 - 1, torch.randn(8, 8, generator=gen)


def _params(m):
    return [p.detach().clone() for p in m.parameters()]


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_consistency_reaches_ds_only():
    """Spec test 12: λc = 0 vs λc = 1 from the same seed: θ_G and θ_f bit-identical, θ_s different."""
    x, z = _batch()
    out = {}
    for lam in (0.0, 1.0):
        cfg, g, ds, df, opts = _setup("V2", lam)
        train_step(g, ds, df, opts, x, z, cfg.method)
        out[lam] = (_params(g), _params(ds), _params(df))
    assert _same(out[0.0][0], out[1.0][0]) and _same(out[0.0][2], out[1.0][2])
    assert not _same(out[0.0][1], out[1.0][1])


def test_update_order_is_g_then_df_then_ds_and_the_g_step_moves_only_g():
    """Spec tests 11 and 14: G is stepped first, with Ds and Df untouched; then Df; then Ds."""
    cfg, g, ds, df, opts = _setup("V3")
    order, snapshots = [], {}
    for name, opt in opts.items():
        step = opt.step

        def wrapped(*a, _name=name, _step=step, **k):
            order.append(_name)
            snapshots[_name] = (_params(ds), _params(df))
            return _step(*a, **k)
        opt.step = wrapped
    before = (_params(ds), _params(df))
    x, z = _batch()
    train_step(g, ds, df, opts, x, z, cfg.method)
    assert order == ["g", "df", "ds"]
    assert _same(snapshots["df"][0], before[0]) and _same(snapshots["df"][1], before[1])  # after G's step


@pytest.mark.parametrize("variant", ["sngan", "durall", "freqmse", "V0", "V1", "V2", "V3"])
def test_every_variant_runs_one_finite_iteration(variant):
    cfg, g, ds, df, opts = _setup(variant)
    assert (df is None) == (variant in ("sngan", "durall", "freqmse"))
    x, z = _batch()
    g0 = _params(g)
    out = {k: v.item() for k, v in train_step(g, ds, df, opts, x, z, cfg.method).items()}
    assert set(out) == set(LOSS_KEYS) and all(np.isfinite(v) for v in out.values())
    assert not _same(g0, _params(g))
    assert (out["loss_spectral"] > 0) == (variant in ("durall", "freqmse"))
    if variant in ("V2", "V3"):
        assert out["loss_ds"] > out["loss_ds_gan"]          # + λc · L_cons
    if variant == "V1":
        assert out["loss_g"] == pytest.approx(0.8 * out["loss_gs"] + 0.2 * out["loss_gf"], rel=1e-5)
    if variant == "V0":
        assert out["loss_g"] == pytest.approx(out["loss_gs"] + out["loss_gf"], rel=1e-5)


def test_dft_transform_gives_df_two_channels():
    cfg, g, ds, df, opts = _setup("V3", transform="dft")
    assert df.in_channels == 2
    x, z = _batch()
    assert torch.isfinite(train_step(g, ds, df, opts, x, z, cfg.method)["loss_df"])


# ----------------------------------------------------------------------------- quality reference

def test_feature_classifier_is_trained_once_and_cached(tmp_path, monkeypatch):
    from pipelines.data import embedded_images
    from trainers.ssd2gan.quality import features, feature_classifier, reference

    monkeypatch.setenv("TRAINLAB_CACHE", str(tmp_path))
    a = embedded_images("digits", 16)
    x, y = a["source_train"][0] * 2 - 1, a["source_train"][1]
    m1, info1 = feature_classifier(x, y)
    m2, info2 = feature_classifier(x, y)
    assert not info1["cached"] and info2["cached"] and info1["path"] == info2["path"]
    assert info1["train_acc"] > 0.9                          # the features know the digits
    xt = torch.as_tensor(x[:64])
    assert np.array_equal(features(m1, xt), features(m2, xt))
    ref = reference(x, y, a["source_val"][0] * 2 - 1)
    from trainers.ssd2gan.metrics import frechet_distance_from_stats

    held_out = frechet_distance_from_stats(ref.mu, ref.sigma, ref.mu_val, ref.sigma_val)
    noise = features(m1, torch.rand(512, 1, 16, 16) * 2 - 1)
    fd_noise = frechet_distance_from_stats(noise.mean(0), np.cov(noise, rowvar=False), ref.mu, ref.sigma)
    assert held_out < 0.1 * fd_noise                        # real vs real is far closer than noise vs real


def test_natural_patches_are_deterministic_and_labelled_by_photo_and_rotation():
    from pipelines.data import natural_patches

    x1, y1 = natural_patches(16, n=64, seed=3)
    x2, y2 = natural_patches(16, n=64, seed=3)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert x1.shape == (64, 1, 16, 16) and 0 <= x1.min() and x1.max() <= 1 and set(y1) <= set(range(8))


def test_prepare_rejects_images_outside_0_1(ray_session):
    import ray.data

    from trainers.ssd2gan.loop import prepare

    bad = ray.data.from_items([{"x": np.full((1, 16, 16), 3.0, np.float32), "y": 0}] * 4)
    with pytest.raises(ValueError, match=r"data.source: image values span \[3, 3\]; allowed: \[0, 1\]"):
        prepare(load_config("ssd2gan"), SimpleNamespace(datasets={"source_train": bad, "source_val": bad}))


# ----------------------------------------------------------------------------- end to end

def _runs():
    return mlflow_runs("trainlab/ssd2gan")


@pytest.mark.e2e
def test_quick_run_logs_losses_quality_and_artifacts(ray_session, workdir):
    # local mode (Ray Train's num_workers=0): what this reads back is the method's; Ray Train's worker path is the
    # 2-worker test's
    res = CliRunner().invoke(app, ["run", "ssd2gan", "--quick", "--num-workers", "0"])
    assert res.exit_code == 0, res.output
    (run,) = _runs()
    assert run.info.status == "FINISHED" and run.data.tags["variant"] == "V3"
    m = run.data.metrics
    for k in ("loss_g", "loss_ds", "loss_df", "loss_consistency", "loss_g_avg", "fd", "fd_val", "best_fd",
              "spectral_error",
              "spectral_error_high"):
        assert k in m and np.isfinite(m[k]), k
    cfg = load_config("ssd2gan", quick=True)
    steps = cfg.train.epochs * cfg.method.eval_every
    hist = mlflow_client().get_metric_history(run.info.run_id, "loss_g")
    assert sorted(h.step for h in hist) == list(range(1, steps + 1))          # every step logged
    fds = [h.value for h in mlflow_client().get_metric_history(run.info.run_id, "fd")]
    assert len(fds) == cfg.train.epochs and m["best_fd"] == pytest.approx(min(fds))
    arts = mlflow_artifacts(run.info.run_id)
    assert {"plots/fd_curve.png", "plots/power_spectra.png"} <= set(arts)
    assert sum(a.startswith("samples/") for a in arts) == cfg.train.epochs
    # the same grids as MLflow images over training (mlflow.log_image key/step: the UI's step slider)
    import re

    shown = {int(m[1]) for a in mlflow_artifacts(run.info.run_id, "images")  # images/<key>+step+<n>+... (or %)
             if (m := re.match(r"images/samples[+%]step[+%](\d+)[+%]", a))}
    assert shown == {e * cfg.method.eval_every for e in range(1, cfg.train.epochs + 1)}, shown
    assert any(a.startswith("model") or "MLmodel" in a for a in arts) or _logged_model(run)


def _logged_model(run) -> bool:
    import mlflow

    return any(x.source_run_id == run.info.run_id for x in
               mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list"))


@pytest.mark.e2e
def test_three_models_train_data_parallel_on_two_workers(ray_session, workdir):
    """G, Ds and Df are each DDP modules on 2 gloo workers; the G step skips Ds/Df's all-reduce."""
    res = CliRunner().invoke(app, ["run", "ssd2gan", "--quick", "--num-workers", "2", "--set", "train.epochs=2",
                                   "--set", "tracking.log_model=false"])
    assert res.exit_code == 0, res.output
    (run,) = _runs()
    m = run.data.metrics
    assert run.info.status == "FINISHED" and run.data.params["scaling.num_workers"] == "2"
    assert all(np.isfinite(m[k]) for k in ("loss_g", "loss_ds", "loss_df", "fd"))


@pytest.mark.e2e
@pytest.mark.parametrize("workers", [1, 0])
def test_a_run_resumes_from_its_checkpoint_and_continues_the_step_count(ray_session, workdir, workers):
    """The checkpoint holds G, Ds, Df and the three optimisers; rerunning the same run name restores it: on a Ray
    Train worker (Ray Train's checkpoint manager), and in local mode (scaling.num_workers=0), where trainlab keeps
    the checkpoints itself (trainers.common.checkpoints)."""
    from pipelines.run import storage_root, train

    cfg = load_config("ssd2gan", quick=True, sets=["train.epochs=2", "tracking.log_model=false",
                                                   "method.variant=V2", f"scaling.num_workers={workers}"])
    first = train("ssd2gan", cfg, run_name="gan-resume")
    assert first.checkpoint.startswith(f"{storage_root()}/gan-resume/checkpoint_")
    if workers == 0:
        assert first.checkpoint.endswith("checkpoint_000002")
    state = torch.load(f"{first.checkpoint}/state.pt", weights_only=False)
    assert {"g", "ds", "df", "opt_g", "opt_ds", "opt_df", "step", "best_g"} <= set(state)
    assert state["step"] == 2 * cfg.method.eval_every
    more = copy.deepcopy(cfg)
    more.train.epochs = 3
    second = train("ssd2gan", more, run_name="gan-resume")
    assert second.metrics["step"] == 3 * cfg.method.eval_every and second.metrics["epoch"] == 3
    hist = mlflow_client().get_metric_history(second.run_id, "loss_g")
    assert sorted(h.step for h in hist) == list(range(2 * cfg.method.eval_every + 1, 3 * cfg.method.eval_every + 1))
    if workers == 0:  # nothing left to train: the run still ends with the checkpoint it restored
        assert train("ssd2gan", more, run_name="gan-resume").checkpoint == second.checkpoint


@pytest.mark.e2e
def test_tiny_sweep_nests_trials(ray_session, workdir):
    res = CliRunner().invoke(app, ["sweep", "ssd2gan", "--quick", "--num-samples", "2", "--scheduler", "fifo",
                                   "--set", "tracking.log_model=false"])
    assert res.exit_code == 0, res.output
    runs = _runs()
    (parent,) = [r for r in runs if r.data.tags.get("kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    assert parent.data.metrics["best_best_fd"] == pytest.approx(min(c.data.metrics["best_fd"] for c in children))

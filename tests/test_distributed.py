"""Distributed correctness with real Ray Train workers on CPU (gloo): the decorrelation loss over the
GLOBAL batch gives the same value and the same gradients on 2 workers as on 1 process with the
concatenated batch (the bug lightly#1977 shipped: per-worker correlation)."""
from __future__ import annotations

import sys

import pytest
import ray.cloudpickle
import torch

from trainers.common.config import build_config
from trainers.common.models import FeatureTap, build_classifier
from trainers.decorrelation.config import DecorrelationConfig
from trainers.decorrelation.loop import step_terms

# Ray workers cannot import this test module: ship its functions by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

B = 16  # global batch (source) and the same again of target samples


def _batch():
    g = torch.Generator().manual_seed(123)
    xs = torch.rand(B, 1, 16, 16, generator=g)
    ys = torch.randint(0, 10, (B,), generator=g)
    xu = torch.rand(B, 1, 16, 16, generator=g)
    return xs, ys, xu


def _model(cfg):
    torch.manual_seed(0)
    return build_classifier(cfg.model, (1, 16, 16), 10)


def _flat_grad(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in getattr(model, "module", model).parameters()])


def _worker_fn(config):
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    cfg = DecorrelationConfig.model_validate(config["cfg"])
    ctx = ray.train.get_context()
    rank, ws = ctx.get_world_rank(), ctx.get_world_size()
    model = _model(cfg)
    tap = FeatureTap(model, cfg.method.layers_labelled + cfg.method.layers_unlabelled)
    model = ray.train.torch.prepare_model(model)
    xs, ys, xu = _batch()
    sl = slice(rank * B // ws, (rank + 1) * B // ws)
    terms = step_terms(model, tap, cfg.method, xs[sl], ys[sl], xu[sl])
    terms["loss"].backward()
    task = terms["task_loss"].detach().clone()
    dist.all_reduce(task)
    task /= ws
    corr = terms["loss"].detach() - cfg.method.lambda2 * terms["task_loss"].detach()
    if rank == 0:
        torch.save({"grad": _flat_grad(model), "task": task, "corr": corr,
                    "l3": terms["corr_loss_unlabelled"].detach(), "l4": terms["corr_loss_labelled"].detach(),
                    "decov": terms.get("decov_loss", torch.zeros(())).detach()},
                   config["out"])
    ray.train.report({"done": 1})


CASES = {
    "B-two-layers-gap": ["method.variant=B", "method.layers_unlabelled=[conv2, fc1]", "method.layers_labelled=[fc1]"],
    "generic-gmp-abs": ["method.variant=generic", "method.reduction=gmp", "method.aggregation=abs",
                        "method.layers_unlabelled=[conv2]", "method.layers_labelled=[conv2]"],
    "decov": ["method.variant=decov", "method.decov_weight=0.5"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_two_workers_match_one_process(ray_session, tmp_path, case):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from trainers.common.config import parse_set_args

    cfg = build_config(DecorrelationConfig, {"model": {"width": 8, "feature_dim": 16}},
                       parse_set_args(CASES[case] + ["train.batch_size=16"]))
    # reference: one process, the concatenated batch, no process group
    model = _model(cfg)
    tap = FeatureTap(model, cfg.method.layers_labelled + cfg.method.layers_unlabelled)
    xs, ys, xu = _batch()
    ref = step_terms(model, tap, cfg.method, xs, ys, xu)
    ref["loss"].backward()
    ref_grad = _flat_grad(model)

    out = tmp_path / "rank0.pt"
    TorchTrainer(_worker_fn, train_loop_config={"cfg": cfg.model_dump(mode="json"), "out": str(out)},
                 scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
                 run_config=RunConfig(name=f"dist-{case}", storage_path=str(tmp_path / "ray"))).fit()
    got = torch.load(out)
    assert torch.allclose(got["task"], ref["task_loss"].detach(), rtol=1e-5, atol=1e-6)
    assert torch.allclose(got["corr"], ref["loss"].detach() - cfg.method.lambda2 * ref["task_loss"].detach(),
                          rtol=1e-5, atol=1e-6)
    assert torch.allclose(got["l3"], ref["corr_loss_unlabelled"].detach(), rtol=1e-5, atol=1e-6)
    assert torch.allclose(got["l4"], ref["corr_loss_labelled"].detach(), rtol=1e-5, atol=1e-6)
    if "decov_loss" in ref:  # tiny at initialisation: compare relatively, no absolute slack
        assert torch.allclose(got["decov"], ref["decov_loss"].detach(), rtol=1e-4, atol=0)
    assert torch.allclose(got["grad"], ref_grad, rtol=1e-4, atol=1e-6), (got["grad"] - ref_grad).abs().max()
    # a per-worker (local half-batch) correlation is a different number: the test can tell them apart
    m2 = _model(cfg)
    half = step_terms(m2, FeatureTap(m2, cfg.method.layers_labelled + cfg.method.layers_unlabelled),
                      cfg.method, xs[:B // 2], ys[:B // 2], xu[:B // 2])
    if "decov_loss" in half:
        assert not torch.allclose(half["decov_loss"].detach(), got["decov"], rtol=1e-3, atol=0)
    else:
        local = half["loss"].detach() - cfg.method.lambda2 * half["task_loss"].detach()
        assert not torch.allclose(local, got["corr"], rtol=1e-3)

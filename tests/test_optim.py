import math

import pytest
import torch
from torch import nn

from rayssl.config import OptimConfig
from rayssl.train.optim import effective_lr, lr_factor, make_scheduler, param_groups


def test_effective_lr_scales_base_lr_by_total_batch():
    assert effective_lr(OptimConfig(base_lr=1.5e-4), 512) == pytest.approx(3e-4)
    assert effective_lr(OptimConfig(lr=0.01), 512) == 0.01


def test_warmup_then_cosine_to_min_lr():
    o = OptimConfig(schedule="cosine", min_lr=1e-5)
    base = 1e-3
    f = lambda s: lr_factor(s, total_steps=110, warmup_steps=10, optim=o, steps_per_epoch=10, base_lr=base)
    assert f(0) == pytest.approx(0.1)
    assert f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    # half-way through the cosine: the mean of peak and floor
    assert f(60) * base == pytest.approx(0.5 * (base + 1e-5))
    assert f(110) * base == pytest.approx(1e-5)
    assert all(f(s) >= f(s + 1) - 1e-12 for s in range(10, 110))


def test_step_schedule_halves_every_step_epochs():
    o = OptimConfig(schedule="step", step_epochs=2, step_gamma=0.5, warmup_epochs=0)
    f = lambda s: lr_factor(s, 1000, 0, o, steps_per_epoch=5, base_lr=1.0)
    assert [f(0), f(9), f(10), f(19), f(20)] == [1.0, 1.0, 0.5, 0.5, 0.25]


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.pos_embed = nn.Parameter(torch.zeros(1, 2, 4), requires_grad=False)  # fixed sin-cos
        self.proj = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)


def test_pretraining_decays_tokens_but_not_biases_and_norms():
    """facebookresearch/mae main_pretrain.py: no decay only for 1-D params and biases; tokens decayed."""
    model = Tiny()
    groups = param_groups(model, 0.05)
    by_decay = {g["weight_decay"]: {id(p) for p in g["params"]} for g in groups}
    assert by_decay[0.05] == {id(model.proj.weight), id(model.cls_token), id(model.mask_token)}
    assert by_decay[0.0] == {id(model.proj.bias), id(model.norm.weight), id(model.norm.bias)}
    from rayssl.models import MaskedAutoencoder

    mae = MaskedAutoencoder(3, (32,) * 3, 16, 1, 48, 1, 3, decoder_embed_dim=48, decoder_depth=1, decoder_num_heads=3)
    ids = {g["weight_decay"]: {id(p) for p in g["params"]} for g in param_groups(mae, 0.05)}
    assert {id(mae.mask_token), id(mae.encoder.cls_token)} <= ids[0.05]
    assert not {id(mae.encoder.pos_embed), id(mae.decoder_pos_embed)} & (ids[0.05] | ids[0.0])  # frozen: left out


def test_scheduler_drives_optimizer_lr():
    model = Tiny()
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-3)
    sched = make_scheduler(opt, OptimConfig(warmup_epochs=1), 1e-3, total_steps=20, steps_per_epoch=10)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-4)
    assert lrs[9] == pytest.approx(1e-3)
    assert lrs[15] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_zero_buffers_scale_with_the_largest_layer():
    from rayssl.train.engine import deepspeed_config

    model = torch.nn.Sequential(torch.nn.Linear(1000, 3000), torch.nn.Linear(3000, 10))  # largest: 3M weights
    assert deepspeed_config(2, OptimConfig(), 0, "fp32", model)["zero_optimization"] == {"stage": 0}
    zero2 = deepspeed_config(2, OptimConfig(), 2, "fp32", model)["zero_optimization"]
    assert zero2 == {"stage": 2, "reduce_bucket_size": 3_000_000, "allgather_bucket_size": 3_000_000}
    zero3 = deepspeed_config(2, OptimConfig(), 3, "fp32", model)["zero_optimization"]
    assert zero3["stage3_max_live_parameters"] == zero3["sub_group_size"] == 12_000_000
    # a small model still gets DeepSpeed-sized buckets of at least 1M elements
    tiny = deepspeed_config(2, OptimConfig(), 3, "fp32", torch.nn.Linear(4, 4))["zero_optimization"]
    assert tiny["reduce_bucket_size"] == tiny["stage3_prefetch_bucket_size"] == 10**6


def test_eta_extrapolates_the_pace_since_the_start_or_resume(monkeypatch):
    import time

    from rayssl.train.worker import Eta

    clock = iter([100.0, 190.0])  # built at t=100 s on step 40 of 100 (a resume), asked at t=190 s on step 50
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    eta = Eta(40, 100)
    assert eta(40) == "ETA ?"  # no step taken yet: no pace to go by
    assert eta(50) == "ETA 7m30s"  # 90 s for 10 steps is 9 s a step; 50 steps left: 450 s


def test_first_epoch_rows_start_before_they_are_asked_for():
    import threading

    from rayssl.train.worker import started_now

    calls, called = [], threading.Event()

    def rows():
        calls.append(threading.current_thread().name)
        called.set()
        return iter([{"epoch": len(calls) - 1, "i": i} for i in range(3)])

    epoch_rows = started_now(rows)
    called.wait(60)  # the first stream is drawn in the background before anyone asks
    assert calls == ["rayssl-first-rows"]
    assert [r["i"] for r in epoch_rows()] == [0, 1, 2]  # all rows, the prefetched one first
    assert [r["epoch"] for r in epoch_rows()] == [1, 1, 1] and calls[1] == threading.current_thread().name

    def broken():
        yield from ()
        raise OSError("the shard could not be read")

    def unreachable():
        raise ConnectionError("no shard")

    with pytest.raises(OSError, match="could not be read"):  # raised where the rows are used
        started_now(broken)()
    with pytest.raises(ConnectionError, match="no shard"):
        started_now(unreachable)()
    assert list(started_now(lambda: iter([]))()) == []


def test_poly_schedule_is_nnssls_polylr():
    from rayssl.config import OptimConfig
    from rayssl.train.optim import lr_factor

    o = OptimConfig(schedule="poly", warmup_epochs=0)
    f = lambda s: lr_factor(s, total_steps=100, warmup_steps=0, optim=o, steps_per_epoch=10, base_lr=1e-2)  # noqa: E731
    assert f(0) == 1.0 and f(100) == 0.0
    assert f(50) == pytest.approx(0.5 ** 0.9) and f(90) == pytest.approx(0.1 ** 0.9)  # (1 - step / max) ** 0.9


def test_sgd_takes_nesterov_from_the_config():
    import torch

    from rayssl.config import OptimConfig
    from rayssl.train.optim import make_optimizer

    opt = make_optimizer(OptimConfig(optimizer="sgd", momentum=0.99, nesterov=True), 1e-2)([torch.nn.Parameter(torch.zeros(2))])
    assert opt.defaults["nesterov"] is True and opt.defaults["momentum"] == 0.99


@pytest.mark.parametrize("num_workers, world, grad_accum, want_accum, want_lr", [
    (2, 2, 1, 1, 1e-3),              # a fixed group: unchanged
    ((1, 2), 2, 1, 1, 1e-3),         # an elastic run at its maximum: unchanged
    ((1, 2), 1, 1, 2, 1e-3),         # on half the workers: twice the micro-batches, the same global batch and lr
    ((2, 8), 4, 3, 6, 1e-3),         # 24 micro-batches a step: 4 x 6
    ((2, 8), 3, 1, 3, 1e-3 * 9 / 8),  # 8 do not divide by 3: 9 micro-batches, the lr by the linear rule
])
def test_an_elastic_group_keeps_the_planned_global_batch(num_workers, world, grad_accum, want_accum, want_lr):
    from rayssl.config import ScaleConfig
    from rayssl.train.worker import group_optim

    optim, lr = group_optim(OptimConfig(grad_accum=grad_accum), ScaleConfig(num_workers=num_workers), world, 1e-3)
    assert optim.grad_accum == want_accum and lr == pytest.approx(want_lr, rel=1e-12)

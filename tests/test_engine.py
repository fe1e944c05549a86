"""The DeepSpeed engine rayssl builds, in this process on a one-rank gloo group."""

import copy

import pytest
import torch
import torch.distributed as dist
from torch import nn

from rayssl.config import OptimConfig
from rayssl.train.checkpoint import restore_engine, save_checkpoint
from rayssl.train.engine import build_engine, deepspeed_config, full_state_dict
from rayssl.train.optim import make_optimizer, param_groups


@pytest.fixture(scope="module")
def one_rank_group(tmp_path_factory):
    # one group for the module: DeepSpeed caches its process groups, a second init would leave them stale
    mp = pytest.MonkeyPatch()
    mp.setenv("LOCAL_RANK", "0")  # what Ray Train sets in its workers
    linear = torch.nn.functional.linear  # ZeRO-3 swaps in its own F.linear for the process: undo it after
    dist.init_process_group("gloo", init_method=f"file://{tmp_path_factory.mktemp('pg') / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
    torch.nn.functional.linear = linear
    mp.undo()


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 256))  # above ZeRO-3's persistence threshold


def zero3_engine(model: nn.Module, optim: OptimConfig):
    return build_engine(
        model,
        param_groups(model, optim.weight_decay),
        make_optimizer(optim, 1e-3),
        lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0),
        deepspeed_config(8, optim, 3, "fp32", model),
    )


def step_both(engine, reference: nn.Module, ref_opt, x: torch.Tensor) -> float:
    """One training step of the engine and of the plain torch reference; their losses must agree."""
    loss = engine(x).pow(2).mean()
    engine.backward(loss)
    engine.step()
    ref_loss = reference(x).pow(2).mean()
    ref_opt.zero_grad()
    ref_loss.backward()
    ref_opt.step()
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    return loss.item()


def test_zero3_fp32_steps_parameter_partitions_in_place(one_rank_group, tmp_path):
    torch.manual_seed(0)
    model = mlp()
    reference = copy.deepcopy(model)
    optim = OptimConfig()
    engine = zero3_engine(model, optim)
    zero = engine.optimizer
    # no separate fp32 master: the optimiser steps the flat parameter partitions themselves
    assert len(zero.fp32_partitioned_groups_flat) > 0
    for part, master in zip(zero.fp16_partitioned_groups_flat, zero.fp32_partitioned_groups_flat):
        assert master.data_ptr() == part.data_ptr()

    # and the updates are those of a plain torch AdamW on the same model
    ref_opt = make_optimizer(optim, 1e-3)(param_groups(reference, optim.weight_decay))
    x = torch.randn(8, 256)
    losses = [step_both(engine, reference, ref_opt, x) for _ in range(3)]
    assert losses[-1] < losses[0]
    weights = full_state_dict(engine)
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(weights[name], value, rtol=1e-5, atol=1e-6)

    # a checkpoint restores weights and moments into the shared partitions
    save_checkpoint(engine, tmp_path / "ckpt", {"step": 3}, rank=0, world_size=1)
    restored = zero3_engine(mlp(), optim)
    restore_engine(restored, tmp_path / "ckpt")
    for _ in range(2):
        step_both(restored, reference, ref_opt, x)


class _Planted:
    """A pickle that touches a marker file when it is unpickled (as a planted checkpoint would run code)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.marker),)


@pytest.mark.parametrize("stage", [0, 3])
def test_resume_refuses_a_planted_pickle_and_runs_nothing(one_rank_group, tmp_path, stage):
    from rayssl.train.engine import UnsafeCheckpointError

    optim = OptimConfig()

    def engine():
        model = mlp()
        return build_engine(model, param_groups(model, optim.weight_decay), make_optimizer(optim, 1e-3),
                            lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0),
                            deepspeed_config(8, optim, stage, "fp32", model))

    trained = engine()
    loss = trained(torch.randn(8, 256)).pow(2).mean()
    trained.backward(loss)
    trained.step()
    save_checkpoint(trained, tmp_path / "ckpt", {"step": 1}, rank=0, world_size=1)
    restore_engine(engine(), tmp_path / "ckpt")  # DeepSpeed's own files (with their plain-data types) load
    marker = tmp_path / "code-ran"
    for victim in sorted((tmp_path / "ckpt").rglob("*.pt")):
        original = victim.read_bytes()
        torch.save({"module": _Planted(marker)}, victim)
        with pytest.raises(UnsafeCheckpointError, match=f"checkpoint file {victim} was not loaded: .* a reference to getattr"):
            restore_engine(engine(), tmp_path / "ckpt")
        assert not marker.exists()
        victim.write_bytes(original)


def test_resume_passes_over_damaged_checkpoints_to_the_newest_intact(one_rank_group, tmp_path):
    from rayssl.train.checkpoint import damage, newest_intact

    optim = OptimConfig()
    model = mlp()
    engine = build_engine(model, param_groups(model, optim.weight_decay), make_optimizer(optim, 1e-3),
                          lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0),
                          deepspeed_config(8, optim, 0, "fp32", model))
    run = tmp_path / "run"
    assert newest_intact(str(run)) == (None, [])  # nothing saved yet: a fresh start
    for i, step in enumerate((2, 4, 6, 8)):  # directory names do not decide: the saved step does
        save_checkpoint(engine, run / f"checkpoint_{9 - i}", {"step": step}, rank=0, world_size=1)
    assert all(damage(d) is None for d in run.iterdir())
    assert newest_intact(str(run)) == (str(run / "checkpoint_6"), [])

    weights = run / "checkpoint_6" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    (run / "checkpoint_7" / "ds" / "mp_rank_00_model_states.pt").write_bytes(b"not a checkpoint")  # foreign
    (run / "checkpoint_8" / "files_rank0.json").unlink()  # incomplete: never sealed
    path, skipped = newest_intact(str(run))
    assert path == str(run / "checkpoint_9")
    assert [line.split(" (step")[0] for line in skipped] == [str(run / f"checkpoint_{i}") for i in (6, 7, 8)]
    assert "model.safetensors does not match" in skipped[0] and "mp_rank_00_model_states.pt" in skipped[1]
    assert "files_rank0.json" in skipped[2]

    (run / "checkpoint_9" / "train_state.json").unlink()  # missing
    with pytest.raises(RuntimeError, match=r"no intact checkpoint to resume from:\n.*checkpoint_6(.|\n)*checkpoint_9"):
        newest_intact(str(run))

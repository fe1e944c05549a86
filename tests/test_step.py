"""The training step keeps an accelerator busy: no host sync per step (the losses are read only at log steps),
batches on the device ahead of the step, every network compiled as one graph, and the compile mode per device."""

import numpy as np
import pytest
import torch

from rayssl.config import DataConfig, ScaleConfig
from rayssl.train.engine import compile_model, resolve_compile
from rayssl.train.worker import LossWindow, TrainState, on_device, train_epochs

READS: list[str] = []


class CountedLoss(torch.Tensor):
    """A loss that records every read into Python (each is a host sync on a GPU)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.Tensor.item, torch.Tensor.__float__, torch.Tensor.tolist, torch.Tensor.__bool__):
            READS.append(func.__name__)
        return super().__torch_function__(func, types, args, kwargs or {})


def test_the_loss_is_read_only_when_a_window_is_reported():
    READS.clear()
    data = DataConfig(roi=[8, 8, 8], patches_per_volume=2, flip_prob=0.0)
    rng = np.random.default_rng(0)
    volumes = [{"case_id": f"c{i}", "image": rng.random((1, 12, 12, 12), dtype=np.float32)} for i in range(4)]
    state, window, reported = TrainState(), LossWindow(), []

    def step(batch):
        return (batch["image"].mean() * 0 + 0.5).as_subclass(CountedLoss), batch["image"].shape[0]

    def after_step():
        if state.step % 3 == 0:
            reported.append(window.mean())
            window.reset()

    train_epochs(state, lambda: volumes, data, epochs=2, steps=100, batch_size=2, grad_accum=1, columns=["image"],
                 shuffle_seed=0, world=1, step=step, window=window, after_step=after_step)
    assert state.step == 8  # 4 volumes x 2 crops / batch 2, 2 epochs
    assert reported == [0.5, 0.5]  # steps 3 and 6
    assert len(READS) == len(reported)  # one read per report, none per step (before: one per step)


def test_batches_pass_unchanged_where_there_is_no_gpu():
    batches = [{"image": torch.full((2, 1), float(i))} for i in range(3)]
    assert list(on_device(iter(batches), torch.device("cpu"))) == batches
    assert list(on_device(iter(batches), None)) == batches


def test_compile_is_on_for_gpus_and_off_on_cpu_and_under_zero3():
    assert resolve_compile(ScaleConfig(), on_gpu=True) == "default"
    assert resolve_compile(ScaleConfig(), on_gpu=False) == "off"
    assert resolve_compile(ScaleConfig(zero_stage=3), on_gpu=True) == "off"
    assert resolve_compile(ScaleConfig(compile="reduce-overhead"), on_gpu=True) == "reduce-overhead"
    with pytest.raises(ValueError, match="compile=max-autotune needs zero_stage 0-2"):
        ScaleConfig(compile="max-autotune", zero_stage=3)


def _models():
    from rayssl.models.classifier import ViTClassifier
    from rayssl.models.genesis_unet import GenesisUNet
    from rayssl.models.mae import MaskedAutoencoder
    from rayssl.models.unetr import UNETR

    from rayssl.models.resenc_unet import RESENC_SIZES, ResEncUNet
    from rayssl.pretrain.cnn_mae import block_mask, masked_mse

    x3, x2 = torch.rand(2, 1, 32, 32, 32), torch.rand(2, 1, 32, 32)
    mask = block_mask(2, (32, 32, 32), 16, 0.75, torch.Generator().manual_seed(0), torch.device("cpu"))
    return {
        "resenc_unet_sparse": (lambda: ResEncUNet(1, 1, **RESENC_SIZES["tiny"], sparse=True),
                               lambda m: masked_mse(m(x3 * (1 - mask), mask), x3, mask)),
        "mae3d": (lambda: MaskedAutoencoder(3, (32, 32, 32), 16, 1, 48, 2, 3, 48, 1, 3), lambda m: m(x3, mask_ratio=0.75)[0]),
        "mae2d": (lambda: MaskedAutoencoder(2, (32, 32), 8, 1, 48, 2, 3, 48, 1, 3), lambda m: m(x2, mask_ratio=0.75)[0]),
        "unetr": (lambda: UNETR((32, 32, 32), 8, 1, 3, 48, 4, 3), lambda m: m(x3).square().mean()),
        "genesis_unet": (lambda: GenesisUNet(1, 1, 4, "batch"), lambda m: (m(x3) - x3).square().mean()),
        "vit_classifier": (lambda: ViTClassifier(2, (32, 32), 8, 1, 5, 48, 2, 3), lambda m: m(x2).square().mean()),
    }


@pytest.mark.parametrize("name", sorted(_models()))
def test_each_network_compiles_as_one_graph_with_the_eager_loss_and_gradients(name):
    """``fullgraph=True`` fails on any graph break; AOTAutograd (the ``aot_eager`` backend) traces forward and
    backward as inductor would, without inductor's minute of C++ compilation per network on a CPU."""
    build, loss_of = _models()[name]
    torch.manual_seed(0)
    eager = build()
    compiled = build()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile(fullgraph=True, backend="aot_eager")
    torch.manual_seed(1)
    want = loss_of(eager)
    want.backward()
    torch.manual_seed(1)
    got = loss_of(compiled)
    got.backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for (n, a), b in zip(eager.named_parameters(), compiled.parameters()):
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=n)


def test_compile_model_keeps_the_state_dict_names():
    from rayssl.models.genesis_unet import GenesisUNet

    model = GenesisUNet(1, 1, 4, "instance")
    names = list(model.state_dict())
    assert compile_model(model, "default") is model and list(model.state_dict()) == names
    assert compile_model(GenesisUNet(1, 1, 4), "off")._compiled_call_impl is None


def test_a_batch_larger_than_a_workers_crops_of_an_epoch_is_an_error_not_a_run_that_never_steps():
    from rayssl.train.worker import steps_per_epoch

    # 24 cases on 8 workers, 4 crops each: 12 crops a worker an epoch
    assert steps_per_epoch(24, 4, 8, 6, 2) == 1
    with pytest.raises(ValueError, match=r"3 training case\(s\) x 4 crop\(s\) = 12 crops an epoch, fewer than one "
                                         r"optimiser step of batch_size 128 x optim.grad_accum 1"):
        steps_per_epoch(24, 4, 8, 128, 1)  # before: 1 step an epoch planned, and no batch ever cut

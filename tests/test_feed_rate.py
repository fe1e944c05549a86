"""benchmarks/feed_rate.py: the crops a GPU needs against what one core cuts."""

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("feed_rate", Path(__file__).parents[1] / "benchmarks/feed_rate.py")
feed_rate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(feed_rate)


def test_feed_rate_derives_crops_per_gpu_from_counted_flops(capsys):
    out = feed_rate.main(["--roi", "32", "--repeats", "1", "--peak-tflops", "100", "--mfu", "0.5"])
    flops = out["gflop_per_sample"] * 1e9
    # 8 patches of 16^3, 2 visible: the ViT-B encoder's blocks alone (85M weights) do 6 FLOPs per weight
    # and token (forward 2, backward 4); the decoder and the cls token come on top
    assert flops > 6 * 85e6 * 2
    assert out["crops_per_s_needed_per_gpu"] == pytest.approx(0.5 * 100e12 / flops)
    assert out["crops_per_s_per_core"] > 0
    assert out["cores_per_gpu"] == pytest.approx(out["crops_per_s_needed_per_gpu"] / out["crops_per_s_per_core"])
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("{")


def test_the_device_crop_rate_runs_on_any_device():
    import torch

    assert feed_rate.crops_per_core(16, 1, torch.device("cpu")) > 0  # the GPU path's rate, here on CPU tensors

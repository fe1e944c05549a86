import numpy as np
import pytest

from rayssl.config import DataConfig
from rayssl.data.crops import MIX_VOLUMES, epoch_batches, flip_patch, patches_per_case
from rayssl.data.pipeline import train_volumes
from rayssl.data.sources import resolve_source
from rayssl.data.synthetic import make_ct_phantoms

ROI = (8, 8, 4)


def _volumes(n=6):
    rng = np.random.default_rng(0)
    return [{"case_id": f"c{i}", "image": rng.standard_normal((1, 20, 18, 10)).astype(np.float32),
             "label": rng.integers(0, 3, (20, 18, 10)).astype(np.uint8)} for i in range(n)]


def _crops(volumes, data, epoch, batch_size=4, columns=("image", "label", "origin")):
    return list(epoch_batches(iter(volumes), data, epoch, batch_size, list(columns)))


def test_new_crops_every_epoch_and_the_same_under_the_same_seed():
    data = DataConfig(roi=ROI, patches_per_volume=3, seed=7)
    vols = _volumes()
    first, again, later = (_crops(vols, data, e) for e in (0, 0, 1))
    origins = lambda batches: [tuple(o.tolist()) for b in batches for o in b["origin"]]  # noqa: E731
    assert origins(first) == origins(again)  # same seed, case and epoch: the same sequence
    assert all((a["image"] == b["image"]).all() for a, b in zip(first, again))
    assert origins(first) != origins(later)
    other_seed = _crops(vols, data.model_copy(update={"seed": 8}), 0)
    assert origins(first) != origins(other_seed)
    # 6 volumes x 3 crops = 18 patches: 4 full batches, the last 2 patches dropped
    assert len(first) == 4 and all(b["image"].shape == (4, 1, *ROI) for b in first)


def test_each_crop_is_a_window_of_its_volume_with_its_label():
    data = DataConfig(roi=ROI, patches_per_volume=2, seed=0)
    vols = _volumes(2)
    for batch in _crops(vols, data, 0, batch_size=1):
        o = batch["origin"][0].tolist()
        box = tuple(slice(s, s + r) for s, r in zip(o, ROI))
        hits = [v for v in vols if np.array_equal(v["image"][(slice(None), *box)], batch["image"][0].numpy())]
        assert len(hits) == 1
        np.testing.assert_array_equal(hits[0]["label"][box], batch["label"][0].numpy())


def test_flips_drawn_per_crop_image_and_label_together():
    rng = np.random.default_rng(0)
    image = np.arange(2 * 4 * 3 * 2, dtype=np.float32).reshape(2, 4, 3, 2)
    label = np.arange(4 * 3 * 2, dtype=np.uint8).reshape(4, 3, 2)
    flipped = flip_patch({"image": image.copy(), "label": label.copy()}, rng, prob=1.0)
    np.testing.assert_array_equal(flipped["image"], image[:, ::-1, ::-1, ::-1])
    np.testing.assert_array_equal(flipped["label"], label[::-1, ::-1, ::-1])
    kept = flip_patch({"image": image.copy()}, rng, prob=0.0)
    np.testing.assert_array_equal(kept["image"], image)
    # 2D: the horizontal axis only, as the MAE reference's RandomHorizontalFlip
    image2d = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    np.testing.assert_array_equal(flip_patch({"image": image2d.copy()}, rng, 1.0)["image"], image2d[:, :, ::-1])
    # about 20% of crops flipped per axis with prob 0.2
    data = DataConfig(roi=(20, 18, 10), patches_per_volume=1, flip_prob=0.2)
    vol = _volumes(1)[0]
    flips = []
    for epoch in range(300):
        out = _crops([vol], data, epoch, batch_size=1, columns=("image",))[0]["image"][0].numpy()
        flips.append(not np.array_equal(out, vol["image"]))
    assert 0.35 < np.mean(flips) < 0.6  # P(any of 3 axes) = 1 - 0.8^3 = 0.488


def test_batches_mix_cases():
    data = DataConfig(roi=ROI, patches_per_volume=4, seed=0)
    vols = [{"case_id": f"c{i}", "image": np.full((1, 12, 12, 6), i, np.float32)} for i in range(MIX_VOLUMES)]
    batches = _crops(vols, data, 0, batch_size=4, columns=("image",))
    cases_per_batch = [len(np.unique(b["image"].numpy())) for b in batches]
    assert len(batches) == MIX_VOLUMES and max(cases_per_batch) > 1  # not one case per batch


def test_patches_per_case():
    assert patches_per_case(DataConfig(roi=(16, 16, 8), patches_per_volume=5)) == 5
    assert patches_per_case(DataConfig(roi=(224, 224), patches_per_volume=5)) == 1  # the whole 2D image
    assert patches_per_case(DataConfig(roi=(16, 16, 8), patches_per_volume=5), (1, 16, 16, 8)) == 1
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        next(epoch_batches(iter([]), DataConfig(roi=ROI), 0, 0, ["image"]))


def test_worker_stream_gives_new_crops_each_epoch(ray_session, tmp_path):
    # what a training worker reads every epoch (its share of the kept volumes), cropped for two epochs as
    # the training loops do
    from rayssl.train.worker import volume_stream

    root = make_ct_phantoms(tmp_path / "ct", n=3, seed=0, shape=(40, 40, 20))
    data = DataConfig(source=f"msd:{root}", recipe="ct_btcv", roi=(16, 16, 8), patches_per_volume=4, folds=3)
    rows = volume_stream(train_volumes(data, ["image", "label"], resolve_source(data), "ct_btcv").volumes, 0, 1)

    def epoch_crops(rows, epoch):
        return sorted(tuple(o.tolist()) for b in epoch_batches(rows(), data, epoch, 2, ["origin"])
                      for o in b["origin"])

    e0, e1 = epoch_crops(rows, 0), epoch_crops(rows, 1)
    assert len(e0) == len(e1) == 4 * 2 and e0 != e1  # 2 training cases of 3 (fold 0 is validation)
    rerun = volume_stream(train_volumes(data, ["image", "label"], resolve_source(data), "ct_btcv").volumes, 0, 1)  # a second run, same seed
    assert epoch_crops(rerun, 0) == e0 and epoch_crops(rerun, 1) == e1


def test_fewer_training_cases_than_workers_is_an_error_before_ray():
    from rayssl.train.launch import check_cases_per_worker

    check_cases_per_worker(2, 2, "synthetic:ct:4")
    with pytest.raises(ValueError, match=r"has 1 training case\(s\) but scale.num_workers asks for 2 workers"):
        check_cases_per_worker(1, 2, "synthetic:ct:2")


@pytest.mark.parametrize("sampling", ["random", "balanced", "classes", "tissue"])
def test_crops_cut_on_the_device_are_the_crops_cut_on_the_cpu(sampling):
    """``DeviceCrops`` (here on CPU tensors, as it runs on a GPU) gives batch for batch the same crops, flips and
    labels as the numpy path, and sends each volume once however many epochs it serves."""
    import torch

    from rayssl.data.crops import DeviceCrops

    data = DataConfig(roi=ROI, patches_per_volume=3, seed=3, flip_prob=0.5, sampling=sampling)
    vols = _volumes(5)
    for v in vols:
        v["target"] = np.arange(3, dtype=np.float32) + float(v["case_id"][1:])
    device = DeviceCrops(torch.device("cpu"), data)
    columns = ["image", "label", "target"]
    for epoch in (0, 1):
        want = list(epoch_batches(iter(vols), data, epoch, 4, columns, shuffle_seed=1))
        got = list(epoch_batches(iter(vols), data, epoch, 4, columns, shuffle_seed=1, on_device=device))
        assert len(got) == len(want) == 3  # 15 crops: 3 batches of 4
        for g, w in zip(got, want):
            assert set(g) == set(columns) and g["image"].dtype == w["image"].dtype
            for k in columns:
                assert torch.equal(g[k], w[k]), k
    assert sorted(device.volumes) == [v["case_id"] for v in vols]
    flipped = [c["flip"] for v in vols for c in device.plan(v, 2)]
    assert any(flipped) and not all(flipped)  # flips drawn, as on the CPU

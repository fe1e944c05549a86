"""Test-time augmentation and label maps of rayssl.predict (no Ray)."""

import numpy as np
import pytest
import torch
from torch import nn

from rayssl.finetune.task import TaskSpec
from rayssl.predict.infer import flips, label_map, segment_probabilities

SPEC = TaskSpec("multiclass", 3, ("a", "b"), 1, "dicece")


def test_flip_combinations_as_nnunet_mirrors():
    assert flips(3, "flip") == [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    assert flips(2, "flip") == [(), (1,)] and flips(3, "none") == [()]
    with pytest.raises(ValueError, match="tta must be"):
        flips(3, "rotate")


def test_tta_of_a_flip_equivariant_model_is_flip_equivariant():
    torch.manual_seed(0)
    net = nn.Conv3d(1, 3, kernel_size=3, padding=1)
    with torch.no_grad():  # a kernel symmetric along every axis: the network is flip-equivariant
        for dim in (2, 3, 4):
            net.weight.copy_((net.weight + net.weight.flip(dim)) / 2)
    image = np.random.default_rng(0).random((1, 16, 16, 16)).astype(np.float32)
    plain = segment_probabilities([net], image, SPEC, [(16, 16, 16)], 0.0, 1, "none")
    tta = segment_probabilities([net], image, SPEC, [(16, 16, 16)], 0.0, 1, "flip")
    np.testing.assert_allclose(tta, plain, atol=1e-5)  # every flip gives the same answer back
    flipped = segment_probabilities([net], image[:, ::-1].copy(), SPEC, [(16, 16, 16)], 0.0, 1, "flip")
    np.testing.assert_allclose(flipped, tta[:, ::-1], atol=1e-5)


def test_tta_averages_the_flipped_predictions_of_any_model():
    torch.manual_seed(1)
    net = nn.Conv3d(1, 3, kernel_size=3, padding=1)
    image = np.random.default_rng(1).random((1, 8, 8, 8)).astype(np.float32)
    expected = np.zeros((3, 8, 8, 8))
    for axes in flips(3, "flip"):
        x = torch.as_tensor(image)[None].flip([a + 2 for a in axes]) if axes else torch.as_tensor(image)[None]
        with torch.no_grad():
            p = torch.softmax(net(x), 1)
        expected += (p.flip([a + 2 for a in axes]) if axes else p)[0].numpy() / 8
    got = segment_probabilities([net], image, SPEC, [(8, 8, 8)], 0.0, 1, "flip")
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_label_maps_of_classes_and_regions():
    probs = np.zeros((3, 2, 2, 1), np.float32)
    probs[1, 0], probs[2, 1], probs[0, 1, 1] = 0.9, 0.6, 0.7
    assert label_map(probs, SPEC)[:, :, 0].tolist() == [[1, 1], [2, 0]]
    regions = TaskSpec("brats_regions", 3, ("TC", "WT", "ET"), 4, "dice")
    r = np.zeros((3, 1, 1, 3), np.float32)
    r[1, 0, 0, :] = 0.9  # whole tumour everywhere
    r[0, 0, 0, 1:] = 0.8  # core in two voxels
    r[2, 0, 0, 2] = 0.7  # enhancing in one
    assert label_map(r, regions)[0, 0].tolist() == [1, 2, 3]


def test_a_classifier_writes_predictions_csv(ray_session, tmp_path):
    import csv
    import json

    from safetensors.torch import save_file

    from rayssl.config import FinetuneConfig, PredictConfig, dump_config, load_config
    from rayssl.data.synthetic import CXR_FINDINGS, make_cxr_phantoms
    from rayssl.finetune.models import build_model
    from rayssl.predict.driver import predict

    root = make_cxr_phantoms(tmp_path / "cxr", n=6, seed=0, size=64)
    cfg = load_config(FinetuneConfig, "finetune", "vit_cxr14", overrides=[
        "data.roi=[32,32]", "model.size=tiny", "model.patch_size=8"])
    torch.manual_seed(0)
    net = build_model(cfg, 1, 14)
    run = tmp_path / "run"
    run.mkdir()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(run / "best.safetensors"))
    (run / "result.json").write_text(json.dumps({"config": dump_config(cfg), "task": {
        "mode": "multilabel", "num_classes": 14, "class_names": list(CXR_FINDINGS), "channels": 1, "recipe": "cxr",
        "spacing": None}}))
    out = tmp_path / "out"
    pcfg = load_config(PredictConfig, "predict", overrides=["tta=flip"])
    pcfg.model, pcfg.input, pcfg.out = [str(run)], f"cxr14:{root}", str(out)
    predict(pcfg)
    with (out / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and list(rows[0])[2:] == list(CXR_FINDINGS)
    assert all(0.0 <= float(r[name]) <= 1.0 for r in rows for name in CXR_FINDINGS)
    predict(pcfg)  # resume: every image is in predictions.csv already
    with (out / "predictions.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 6

"""Predictions go back to each file's own grid: preprocess, then to_source_grid, gives the file's shape and a
label map equal to the file's up to resampling."""

import nibabel as nib
import numpy as np
import pytest

from rayssl.data.geometry import to_source_grid
from rayssl.data.preprocess import load_case
from rayssl.data.sources import Case


def _oblique(theta=0.3, spacing=(1.2, 0.9, 2.5), origin=(5.0, -7.0, 11.0)):
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag(spacing)
    a[:3, 3] = origin
    return a


LPS = np.diag([-1.6, -1.6, 3.0, 1.0])
LPS[:3, 3] = (40.0, 60.0, -90.0)
GEOMETRIES = {  # name: (shape, affine, recipe, spacing, least agreement of the label round trip)
    "lps_anisotropic": ((96, 96, 48), LPS, "ct_btcv", (1.5, 1.5, 2.0), 0.995),
    "oblique_odd_shape": ((61, 47, 33), _oblique(), "ct_btcv", (1.0, 1.0, 1.0), 0.99),
    "smaller_than_the_roi": ((20, 18, 14), LPS, "ct_btcv", (3.0, 3.0, 3.0), 0.95),
    "native_grid": ((40, 40, 30), np.eye(4), "none", None, 1.0),
}


def _phantom(tmp_path, shape, affine):
    label = np.zeros(shape, np.uint8)
    label[tuple(slice(s // 4, 3 * s // 4) for s in shape)] = 1
    label[tuple(slice(s // 3, s // 2 + 1) for s in shape)] = 2
    image = label * 60.0 + np.random.default_rng(0).normal(0, 5, shape) - 100.0
    image[:3] = -1000.0  # air on one side: the foreground crop removes it
    nib.save(nib.Nifti1Image(image.astype(np.float32), affine), str(tmp_path / "img.nii.gz"))
    nib.save(nib.Nifti1Image(label, affine), str(tmp_path / "lab.nii.gz"))
    return label


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_preprocessed_label_maps_back_onto_the_file_grid(tmp_path, name):
    shape, affine, recipe, spacing, agreement = GEOMETRIES[name]
    label = _phantom(tmp_path, shape, affine)
    v = load_case(Case("c", [str(tmp_path / "img.nii.gz")], str(tmp_path / "lab.nii.gz")), recipe, spacing)
    np.testing.assert_allclose(v["source_affine"], nib.load(str(tmp_path / "img.nii.gz")).affine, atol=1e-6)
    assert v["source_shape"] == shape
    back = to_source_grid(v["label"][None], v["affine"], v["source_affine"], v["source_shape"], mode="nearest")[0]
    assert back.shape == shape and back.dtype == np.uint8
    assert (back == label).mean() >= agreement


def test_probabilities_outside_the_cropped_volume_are_background(tmp_path):
    shape, affine = (40, 36, 30), LPS
    _phantom(tmp_path, shape, affine)
    v = load_case(Case("c", [str(tmp_path / "img.nii.gz")]), "ct_btcv", (1.6, 1.6, 3.0))
    assert v["image"].shape[1] < shape[0]  # the air slab was cropped away
    probs = np.zeros((3, *v["image"].shape[1:]), np.float32)
    probs[1] = 1.0  # "everything is class 1" on the preprocessed grid
    back = to_source_grid(probs, v["affine"], v["source_affine"], shape, fill=[1.0, 0.0, 0.0])
    assert back.shape == (3, *shape)
    np.testing.assert_allclose(back.sum(0), 1.0, atol=1e-5)  # still a distribution everywhere
    np.testing.assert_allclose(back[0, :3], 1.0, atol=1e-5)  # the air slab (file voxels 0-2) was cropped: background
    inside = back[1, 10:-10, 5:-5, 5:-5]
    np.testing.assert_allclose(inside, 1.0, atol=1e-5)


def test_identity_grid_returns_the_values():
    values = np.random.default_rng(1).random((2, 7, 9, 5)).astype(np.float32)
    np.testing.assert_allclose(to_source_grid(values, np.eye(4), np.eye(4), (7, 9, 5)), values, atol=1e-6)
    with pytest.raises(ValueError, match="mode must be"):
        to_source_grid(values, np.eye(4), np.eye(4), (7, 9, 5), mode="cubic")

import gzip

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from rayssl.data.io import BadInput, read_bytes, read_image_2d, read_label, read_nifti, read_volume
from rayssl.storage import open_uri

from conftest import write_nifti


def _affine(spacing=(1.5, 1.5, 2.0), origin=(10.0, -20.0, 30.0)):
    a = np.diag([*spacing, 1.0])
    a[:3, 3] = origin
    return a


def _save(path, data, affine=None):
    return str(write_nifti(path, data, _affine() if affine is None else affine))


@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz"])
def test_read_nifti_round_trip(tmp_path, name):
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) - 60
    path = _save(tmp_path / name, data)
    out, affine = read_nifti(path)
    assert out.dtype == np.float32 and out.shape == (4, 5, 6)
    np.testing.assert_array_equal(out, data.astype(np.float32))
    np.testing.assert_allclose(affine, _affine())
    assert affine.dtype == np.float64


def test_read_nifti_file_uri(tmp_path):
    path = _save(tmp_path / "v.nii.gz", np.ones((3, 3, 3), np.float32))
    out, _ = read_nifti("file://" + path)
    assert out.shape == (3, 3, 3) and out.sum() == 27
    fs, inner = open_uri("file://" + path)
    assert inner == path and fs.get_file_info(inner).size > 0


def test_missing_file(tmp_path):
    with pytest.raises(BadInput, match="^file not found$") as e:
        read_bytes(str(tmp_path / "nope.nii.gz"))
    assert e.value.path.endswith("nope.nii.gz")
    with pytest.raises(BadInput, match="file not found"):
        read_volume([str(tmp_path / "nope.nii.gz")])


def test_truncated_gzip(tmp_path):
    full = _save(tmp_path / "full.nii.gz", np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32))
    raw = open(full, "rb").read()
    (tmp_path / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(BadInput, match=r"truncated: header claims 16 x 16 x 16 voxels of float32 \(16736 bytes with the "
                                        r"header\) but the file holds \d+ bytes \(the gzip data is truncated or corrupt\)"):
        read_nifti(str(tmp_path / "cut.nii.gz"))


def test_truncated_uncompressed_data(tmp_path):
    full = _save(tmp_path / "full.nii", np.zeros((16, 16, 16), np.float32))
    raw = open(full, "rb").read()
    (tmp_path / "cut.nii").write_bytes(raw[:1000])  # header intact, voxel data cut short
    with pytest.raises(BadInput, match=r"truncated: header claims 16 x 16 x 16 voxels of float32 .* the file holds 1000 bytes"):
        read_nifti(str(tmp_path / "cut.nii"))


def test_garbage_bytes(tmp_path):
    (tmp_path / "junk.nii.gz").write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(BadInput, match="^not a NIfTI file$"):
        read_nifti(str(tmp_path / "junk.nii.gz"))
    # valid gzip around non-NIfTI content
    (tmp_path / "text.nii.gz").write_bytes(gzip.compress(b"hello world" * 100))
    with pytest.raises(BadInput, match="^not a NIfTI file$"):
        read_nifti(str(tmp_path / "text.nii.gz"))


def test_png_renamed_nii(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x.png")
    (tmp_path / "x.nii").write_bytes((tmp_path / "x.png").read_bytes())
    with pytest.raises(BadInput, match="^not a NIfTI file$"):
        read_volume([str(tmp_path / "x.nii")])


def test_read_volume_3d_4d_and_stacked(tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(4, 5, 6)).astype(np.float32)
    img, aff = read_volume([_save(tmp_path / "a.nii.gz", vol)])
    assert img.shape == (1, 4, 5, 6)
    np.testing.assert_array_equal(img[0], vol)
    np.testing.assert_allclose(aff, _affine())

    four = rng.normal(size=(4, 5, 6, 3)).astype(np.float32)  # MSD: channels on the last axis
    img, _ = read_volume(_save(tmp_path / "b.nii.gz", four))
    assert img.shape == (3, 4, 5, 6)
    for c in range(3):
        np.testing.assert_array_equal(img[c], four[..., c])

    paths = [_save(tmp_path / f"m{i}.nii.gz", vol * (i + 1)) for i in range(2)]
    img, _ = read_volume(paths)
    assert img.shape == (2, 4, 5, 6)
    np.testing.assert_allclose(img[1], 2 * vol)


def test_read_volume_wrong_dimensionality(tmp_path):
    with pytest.raises(BadInput, match=r"expected a 3D or 4D volume, got shape \(8, 8\)"):
        read_volume([_save(tmp_path / "flat.nii.gz", np.ones((8, 8), np.float32))])
    with pytest.raises(BadInput, match=r"got shape \(4, 4, 4, 2, 2\)"):
        read_volume([_save(tmp_path / "five.nii.gz", np.ones((4, 4, 4, 2, 2), np.float32))])


def test_read_volume_channel_mismatch(tmp_path):
    a = _save(tmp_path / "a.nii.gz", np.ones((4, 4, 4), np.float32))
    b = _save(tmp_path / "b.nii.gz", np.ones((4, 4, 5), np.float32))
    with pytest.raises(BadInput, match=r"channel shape \(4, 4, 5\) != first channel shape \(4, 4, 4\)") as e:
        read_volume([a, b])
    assert e.value.path == b
    c = _save(tmp_path / "c.nii.gz", np.ones((4, 4, 4), np.float32), _affine(origin=(0, 0, 0)))
    with pytest.raises(BadInput, match="channel affine differs"):
        read_volume([a, c])


def test_read_label(tmp_path):
    lab = np.zeros((4, 4, 4), np.uint8)
    lab[1:3, 1:3, 1:3] = 3
    out, aff = read_label(_save(tmp_path / "l.nii.gz", lab))
    assert out.dtype == np.uint8 and out.shape == (4, 4, 4)
    np.testing.assert_array_equal(out, lab)
    # float-stored labels are rounded back to integers
    out, _ = read_label(_save(tmp_path / "f.nii.gz", lab.astype(np.float32)))
    assert out.dtype == np.uint8 and out.max() == 3
    with pytest.raises(BadInput, match="non-integer"):
        read_label(_save(tmp_path / "h.nii.gz", lab.astype(np.float32) + 0.5))
    with pytest.raises(BadInput, match=r"expected a 3D label map, got shape \(4, 4\)"):
        read_label(_save(tmp_path / "2d.nii.gz", np.zeros((4, 4), np.uint8)))


def test_read_image_2d(tmp_path):
    rgb = np.zeros((6, 5, 3), np.uint8)
    rgb[..., 0] = 200  # pure red: luminance = 200 * 299 / 1000 = 59.8 -> 59 or 60
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    out = read_image_2d(str(tmp_path / "rgb.png"))
    assert out.shape == (1, 6, 5) and out.dtype == np.float32
    assert np.all(np.abs(out - 59.8) <= 1)

    deep = (np.arange(20, dtype=np.uint16).reshape(4, 5) * 3000).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    np.testing.assert_array_equal(read_image_2d(str(tmp_path / "deep.png"))[0], deep.astype(np.float32))

    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    with pytest.raises(BadInput, match="^not an image file$"):
        read_image_2d(str(tmp_path / "bad.png"))


@pytest.mark.parametrize("shape", [(5, 7, 9), (5, 7, 9, 3), (5, 7, 9, 2, 3), (5, 7), (3000, 7, 2)])
@pytest.mark.parametrize("dtype", ["<i2", "<f4", ">f4", "<f8", "u1", "<i4"])
@pytest.mark.parametrize("kind", ["v.nii", "v.nii.gz", "n2.nii.gz"])
def test_read_nifti_decodes_as_nibabel_does(tmp_path, shape, dtype, kind):
    # read in chunks into one float32 array: values, shape, axis order and affine as nibabel gives them
    data = np.random.default_rng(0).normal(0, 100, shape).astype(dtype)
    klass = nib.Nifti2Image if kind.startswith("n2") else nib.Nifti1Image
    path = str(tmp_path / kind)
    nib.save(klass(data, _affine()), path)
    out, affine = read_nifti(path)
    np.testing.assert_array_equal(out, nib.load(path).get_fdata(dtype=np.float32))
    np.testing.assert_allclose(affine, nib.load(path).affine)
    if len(shape) in (3, 4):
        image, _ = read_volume(path)
        assert image.flags.c_contiguous and image.shape == (shape[3] if len(shape) == 4 else 1, *shape[:3])
        np.testing.assert_array_equal(image, np.moveaxis(out if len(shape) == 4 else out[..., None], -1, 0))


def test_read_nifti_applies_scaling_and_skips_extensions(tmp_path):
    img = nib.Nifti1Image(np.arange(60, dtype=np.int16).reshape(3, 4, 5), _affine())
    img.header.set_slope_inter(0.5, -3.0)
    img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"x" * 5000))  # voxels at byte 5360
    path = str(tmp_path / "s.nii.gz")
    nib.save(img, path)
    np.testing.assert_allclose(read_nifti(path)[0], np.arange(60).reshape(3, 4, 5) * 0.5 - 3.0)

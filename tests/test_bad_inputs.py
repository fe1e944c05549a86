"""A corpus of hostile and careless inputs: each is handled or quarantined with a reason naming the file,
nothing crashes, and nothing outside the dataset root is read."""

import json
import os
import sys

import nibabel as nib
import numpy as np
import pytest

from rayssl.config import DataConfig
from rayssl.data.preprocess import load_case
from rayssl.data.sources import resolve_source

_OPENED: list[str] | None = None


def _audit(event, args):
    if _OPENED is not None and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


def opened_during(fn):
    """``fn()``'s result and the paths opened while it ran (Python's ``open`` audit events)."""
    global _OPENED
    _OPENED = []
    try:
        return fn(), list(_OPENED)
    finally:
        _OPENED = None


def leaked(opened: list[str], secret) -> list[str]:
    """The opened paths that lie outside the dataset: the secret volume's folder, or system files."""
    out = (os.path.realpath(secret.parent), "/etc/passwd", "/proc/self/environ", f"/proc/{os.getpid()}/environ")
    return [p for p in opened if os.path.realpath(p).startswith(out) or p.startswith(out)]


def nifti(path, shape=(12, 12, 12), label=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    data = (rng.integers(0, 3, shape) if label else rng.normal(0, 100, shape)).astype(np.uint8 if label else np.int16)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


@pytest.fixture
def layout(tmp_path):
    """A dataset folder with two good cases, and a secret volume next to it (outside its root)."""
    root = tmp_path / "ds"
    for i in range(2):
        nifti(root / "imagesTr" / f"good_{i}.nii.gz")
        nifti(root / "labelsTr" / f"good_{i}.nii.gz", label=True)
    secret = nifti(tmp_path / "secret" / "vol.nii.gz")
    return root, secret


ESCAPES = {
    "dotdot": lambda root, secret: "../secret/vol.nii.gz",
    "absolute": lambda root, secret: str(secret),
    "file_uri": lambda root, secret: f"file://{secret}",
    "s3_uri": lambda root, secret: "s3://some-bucket/data/vol.nii.gz",
    "etc_passwd": lambda root, secret: "/etc/passwd",
    "proc_environ": lambda root, secret: "/proc/self/environ",
    "symlink": lambda root, secret: _symlink(root / "imagesTr" / "link.nii.gz", secret),
    "dir_symlink": lambda root, secret: _symlink(root / "imagesTr" / "linked_dir", secret.parent) + "/vol.nii.gz",
}


def _symlink(link, target) -> str:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return f"./imagesTr/{link.name}"


def _msd(root, image, label=None):
    training = [{"image": f"./imagesTr/good_{i}.nii.gz", "label": f"./labelsTr/good_{i}.nii.gz"} for i in range(2)]
    training.append({"image": image, "label": label or "./labelsTr/good_0.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"modality": {"0": "CT"}, "labels": {"0": "bg", "1": "a", "2": "b"},
                                                   "training": training}))
    return f"msd:{root}"


def _csv(root, image, label=None):
    rows = ["image,label"] + [f"imagesTr/good_{i}.nii.gz,labelsTr/good_{i}.nii.gz" for i in range(2)]
    rows.append(f"{image},{label or 'labelsTr/good_0.nii.gz'}")
    (root / "cases.csv").write_text("\n".join(rows) + "\n")
    return f"csv:{root / 'cases.csv'}"


def _check_escape(spec, root, secret, bad, allow=False):
    def listing():
        src = resolve_source(DataConfig(source=spec, folds=2, allow_outside_root=allow))
        return src, [load_case(c, "none") for c in src.cases]

    (src, loaded), opened = opened_during(listing)
    return src, loaded, opened


@pytest.mark.parametrize("kind", ["msd", "csv"])
@pytest.mark.parametrize("escape", sorted(ESCAPES))
@pytest.mark.parametrize("field", ["image", "label"])
def test_manifest_paths_outside_the_root_are_quarantined_unread(layout, kind, escape, field):
    root, secret = layout
    bad = ESCAPES[escape](root, secret)
    spec = (_msd if kind == "msd" else _csv)(root, bad if field == "image" else "./imagesTr/good_1.nii.gz",
                                             bad if field == "label" else None)
    src, loaded, opened = _check_escape(spec, root, secret, bad)
    assert len(src.cases) == 2 and len(loaded) == 2  # the good cases all made it
    (path, reason), = [m for m in src.missing]
    assert "outside the dataset root" in reason and str(root) in reason
    assert not leaked(opened, secret), opened


def test_opting_in_reads_files_outside_the_root(layout):
    root, secret = layout
    src, loaded, _ = _check_escape(_msd(root, "../secret/vol.nii.gz"), root, secret, None, allow=True)
    assert len(src.cases) == 3 and not src.missing
    assert loaded[-1]["image"].shape == (1, 12, 12, 12)


@pytest.mark.parametrize("what", ["image", "label"])
def test_folder_symlink_out_of_the_folder_is_quarantined(layout, what):
    root, secret = layout
    images, labels = root / "imagesTr", root / "labelsTr"
    (images / "linked.nii.gz").symlink_to(secret) if what == "image" else nifti(images / "linked.nii.gz")
    if what == "label":
        (labels / "linked.nii.gz").symlink_to(secret)
    else:
        nifti(labels / "linked.nii.gz", label=True)
    spec = f"folder:{images},{labels}"
    src, loaded, opened = _check_escape(spec, root, secret, None)
    assert sorted(c.case_id for c in src.cases) == ["good_0", "good_1"]
    assert any("outside the dataset root" in r for _, r in src.missing)
    assert not leaked(opened, secret)


def test_cxr14_image_names_cannot_leave_the_root(tmp_path):
    from rayssl.data.synthetic import make_cxr_phantoms

    root = make_cxr_phantoms(tmp_path / "cxr", n=4, seed=0, size=32)
    entries = (root / "Data_Entry_2017.csv").read_text().splitlines()
    first = entries[1].split(",")[0]
    entries[1] = entries[1].replace(first, "../../etc/passwd", 1)
    (root / "Data_Entry_2017.csv").write_text("\n".join(entries) + "\n")
    (root / "train_val_list.txt").write_text((root / "train_val_list.txt").read_text().replace(first, "../../etc/passwd"))
    src, opened = opened_during(lambda: resolve_source(DataConfig(source=f"cxr14:{root}")))
    assert any(p.endswith("etc/passwd") and "outside the dataset root" in r for p, r in src.missing)
    assert not leaked(opened, tmp_path / "none" / "x")


# ----------------------------------------------------------------------------------------------- bad files

import gzip  # noqa: E402
import subprocess  # noqa: E402

from rayssl.data.io import BadInput  # noqa: E402
from rayssl.data.sources import Case  # noqa: E402


def _save(path, data, affine=None, dtype=None, header_fn=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data) if dtype is None else np.asarray(data).astype(dtype),
                          np.eye(4) if affine is None else affine)
    if header_fn:
        header_fn(img)
    nib.save(img, str(path))
    return path


def _lying_header(path, dims=(1000, 1000, 1000), dtype=np.int16, gz=True):
    """A valid NIfTI header claiming ``dims`` voxels, followed by 4 KB of data only."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(dims)
    hdr.set_data_dtype(dtype)
    hdr.set_qform(np.eye(4), code=1)
    hdr["vox_offset"] = 352
    raw = hdr.binaryblock + b"\0" * 4 + b"\1" * 4096
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def _raw_nifti(path, data, srow):
    """A NIfTI file written field by field, whose sform is ``srow`` (nibabel refuses to save a singular one)."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(data.shape)
    hdr.set_data_dtype(data.dtype)
    hdr["qform_code"], hdr["sform_code"], hdr["vox_offset"] = 0, 1, 352
    hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = srow[0], srow[1], srow[2]
    return _write(path, gzip.compress(hdr.binaryblock + b"\0" * 4 + data.tobytes(order="F")))


def _write(path, content: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _rgb(path):
    rgb = np.zeros((8, 8, 8), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    return _save(path, rgb)


VOL = (12, 12, 12)
R = np.random.default_rng(1)


def _noise(shape=VOL):
    return R.normal(0, 100, shape).astype(np.float32)


BAD_IMAGES = {
    # name: (writes the image file, the reason's expected words)
    "header_claims_1000_cubed": (lambda p: _lying_header(p), "header claims 1000 x 1000 x 1000 voxels of int16"),
    "header_claims_1000_cubed_raw": (lambda p: _lying_header(p.with_suffix(""), gz=False), "but the file holds"),
    "header_claims_above_the_cap": (lambda p: _lying_header(p, (4000, 4000, 4000), np.float64), "above the 8 GiB"),
    "truncated_gzip": (lambda p: _truncate(_save(p, _noise())), "truncated"),
    "truncated_raw_nifti": (lambda p: _truncate(_save(p.with_suffix(""), _noise()), 0.6), "truncated"),
    "corrupt_gzip": (lambda p: _write(p, b"\x1f\x8b\x08\x00" + os.urandom(600)), "gzip"),
    "random_bytes": (lambda p: _write(p.with_suffix(""), b"\x17" + os.urandom(4000)), "not a NIfTI file"),
    "empty_file": (lambda p: _write(p, b""), "not a NIfTI file"),
    "text_file": (lambda p: _write(p, b"this is not an image\n"), "not a NIfTI file"),
    "complex64_voxels": (lambda p: _save(p, _noise() + 1j * _noise(), dtype=np.complex64), "complex voxels (complex64)"),
    "rgb24_voxels": (_rgb, "RGB / structured voxels"),
    "all_zero_affine": (lambda p: _raw_nifti(p, _noise(), np.zeros((3, 4))), "affine is not an invertible"),
    "collapsed_axis_affine": (lambda p: _raw_nifti(p, _noise(), np.diag([1.0, 0.0, 1.0, 1.0])[:3]), "affine is not an invertible"),
    "nan_voxels": (lambda p: _save(p, np.where(R.random(VOL) < 0.01, np.nan, _noise())), "NaN/Inf voxels"),
    "inf_voxels": (lambda p: _save(p, np.where(R.random(VOL) < 0.01, np.inf, _noise())), "NaN/Inf voxels"),
    "constant_volume": (lambda p: _save(p, np.full(VOL, 7.0, np.float32)), "constant"),
    "zero_size_axis": (lambda p: _save(p, np.zeros((12, 0, 12), np.float32)), "empty image"),
    "two_dimensional": (lambda p: _save(p, _noise((12, 12))), "3D"),
    "five_dimensional": (lambda p: _save(p, _noise((6, 6, 6, 2, 2))), "expected a 3D or 4D volume"),
    "time_series_as_channels": (lambda p: _save(p, _noise((12, 12, 12, 20))), "20 channels"),
    "not_a_file": (lambda p: p.mkdir(parents=True) or p, "not a file"),
    "missing": (lambda p: p, "file not found"),
}

BAD_LABELS = {
    "label_shape_mismatch": (lambda p: _save(p, np.zeros((10, 12, 12), np.uint8)), "label shape"),
    "label_affine_mismatch": (lambda p: _save(p, np.zeros(VOL, np.uint8), affine=np.diag([2.0, 1, 1, 1])), "label affine differs"),
    "label_nan": (lambda p: _save(p, np.where(R.random(VOL) < 0.1, np.nan, 1.0).astype(np.float32)), "NaN/Inf"),
    "label_fractional": (lambda p: _save(p, np.full(VOL, 0.5, np.float32)), "non-integer"),
    "label_too_large": (lambda p: _save(p, np.full(VOL, 70000, np.int32)), "do not fit int16"),
    "label_four_dimensional": (lambda p: _save(p, np.zeros((12, 12, 12, 3), np.uint8)), "expected a 3D label map"),
    "label_truncated": (lambda p: _truncate(_save(p, R.integers(0, 3, VOL).astype(np.uint8))), "truncated"),
    "label_corrupt_gzip": (lambda p: _write(p, b"\x1f\x8b\x08\x00" + os.urandom(300)), "gzip"),
    "label_missing": (lambda p: p, "file not found"),
}


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_bad_image_is_refused_with_a_reason_naming_the_file(tmp_path, name):
    write, reason = BAD_IMAGES[name]
    path = write(tmp_path / "img" / f"{name}.nii.gz")
    with pytest.raises(BadInput) as e:
        load_case(Case(name, [str(path)]), "none", channels=1)
    assert reason in str(e.value) and e.value.path == str(path)


@pytest.mark.parametrize("name", sorted(BAD_LABELS))
def test_bad_label_is_refused_with_a_reason_naming_the_file(tmp_path, name):
    write, reason = BAD_LABELS[name]
    image = _save(tmp_path / "img" / "case.nii.gz", _noise())
    label = write(tmp_path / "lab" / f"{name}.nii.gz")
    with pytest.raises(BadInput) as e:
        load_case(Case(name, [str(image)], str(label)), "none", channels=1)
    assert reason in str(e.value) and e.value.path in (str(label), str(image))


HANDLED = {
    "nifti2": lambda p: nib.save(nib.Nifti2Image(_noise(), np.eye(4)), str(p)),
    "big_endian": lambda p: nib.save(nib.Nifti1Image(_noise().astype(">f4"), np.eye(4)), str(p)),
    "int8_with_scaling": lambda p: _save(p, R.integers(-100, 100, VOL).astype(np.int8),
                                         header_fn=lambda img: img.header.set_slope_inter(2.0, -5.0)),
    "trailing_singleton_axis": lambda p: _save(p, _noise((12, 12, 12, 1))),
    "uncompressed": lambda p: _save(p.with_suffix(""), _noise()),
}


@pytest.mark.parametrize("name", sorted(HANDLED))
def test_unusual_but_valid_images_load(tmp_path, name):
    path = tmp_path / f"{name}.nii.gz"
    (tmp_path).mkdir(exist_ok=True)
    HANDLED[name](path)
    path = path if path.exists() else path.with_suffix("")
    volume = load_case(Case(name, [str(path)]), "none", channels=1)
    assert volume["image"].shape == (1, *VOL) and np.isfinite(volume["image"]).all()


def test_a_lying_header_costs_megabytes_not_gigabytes(tmp_path):
    path = _lying_header(tmp_path / "liar.nii.gz")
    probe = (
        "import resource, sys\n"
        "from rayssl.data.io import BadInput, read_volume\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n    read_volume(sys.argv[1])\nexcept BadInput as e:\n    print(e)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, timeout=120)
    reason, grown_mb = out.stdout.strip().splitlines()
    assert "header claims 1000 x 1000 x 1000 voxels of int16" in reason and "file holds" in reason
    assert int(grown_mb) < 30, out.stdout  # before: about 1 GB for the claimed array


def test_a_source_mixing_channel_counts_keeps_the_common_one(tmp_path):
    for i in range(3):
        _save(tmp_path / "imgs" / f"one_{i}.nii.gz", _noise())
    _save(tmp_path / "imgs" / "series.nii.gz", _noise((12, 12, 12, 20)))
    src = resolve_source(DataConfig(source=f"folder:{tmp_path / 'imgs'}", folds=2))
    assert src.channels == 1
    with pytest.raises(BadInput, match="20 channels .* the source has 1"):
        load_case(next(c for c in src.cases if c.case_id == "series"), "none", channels=src.channels)
    assert resolve_source(DataConfig(source=f"folder:{tmp_path / 'imgs'}", channels=20, folds=2)).channels == 20


BAD_MANIFESTS = {
    "not_json": ("{training: [", r"not valid JSON"),
    "not_an_object": ("[1, 2]", r"expected an MSD dataset.json object"),
    "training_not_a_list": ('{"training": {"image": "a.nii.gz"}}', r"'training' must be a list"),
    "entry_without_image": ('{"training": [{"label": "a.nii.gz"}]}', r"training\[0\] must be an object with 'image'"),
    "image_not_a_path": ('{"training": [{"image": 5}]}', r"training\[0\]"),
    "modality_not_a_mapping": ('{"modality": ["CT"], "training": []}', r"'modality' must map integer indices"),
    "labels_bad_keys": ('{"labels": {"bg": "background"}, "training": []}', r"'labels' must map integer indices"),
    "test_not_a_list": ('{"training": [], "test": "imagesTs"}', r"'test' must be a list"),
}


BAD_CSVS = {
    "no_image_column": ("path,label\na.nii.gz,b.nii.gz\n", "needs an 'image' column"),
    "empty_image": ("image,label\n,b.nii.gz\n", "line 2: empty 'image'"),
    "bad_split": ("image,split\na.nii.gz,training\n", "split must be train, val or test"),
}


MALFORMED = {**{("msd", "dataset.json", n): v for n, v in BAD_MANIFESTS.items()},
             **{("csv", "cases.csv", n): v for n, v in BAD_CSVS.items()}}


@pytest.mark.parametrize("kind,file,name", sorted(MALFORMED))
def test_a_malformed_manifest_is_a_clear_error_naming_the_file(tmp_path, kind, file, name):
    text, message = MALFORMED[kind, file, name]
    (tmp_path / file).write_text(text)
    with pytest.raises(ValueError, match=message) as e:
        resolve_source(DataConfig(source=f"{kind}:{tmp_path if kind == 'msd' else tmp_path / file}"))
    assert str(tmp_path / file) in str(e.value)


def test_duplicate_msd_case_ids_are_kept_apart(tmp_path, caplog):
    for sub in ("a", "b"):
        _save(tmp_path / sub / "case.nii.gz", _noise())
    (tmp_path / "dataset.json").write_text(json.dumps({"modality": {"0": "CT"}, "training": [
        {"image": "a/case.nii.gz"}, {"image": "b/case.nii.gz"}]}))
    src = resolve_source(DataConfig(source=f"msd:{tmp_path}", folds=2))
    assert sorted(c.case_id for c in src.cases) == ["case", "case_1"]
    assert any("listed 2 times" in m for m in caplog.messages)


def test_strict_mode_fails_at_listing_on_missing_files(tmp_path):
    from rayssl.data.sources import QuarantineError

    _save(tmp_path / "a.nii.gz", _noise())
    (tmp_path / "dataset.json").write_text(json.dumps({"modality": {"0": "CT"}, "training": [
        {"image": "a.nii.gz"}, {"image": "gone.nii.gz"}]}))
    with pytest.raises(QuarantineError, match="gone.nii.gz: file not found"):
        resolve_source(DataConfig(source=f"msd:{tmp_path}", strict=True))


def test_unknown_and_corrupt_weights_are_refused_by_name(tmp_path):
    import torch

    from rayssl.finetune.weights import load_pretrained
    from rayssl.models.unetr import UNETR
    from rayssl.train.checkpoint import load_export

    torch.save({"w": torch.zeros(2)}, tmp_path / "model.pt")  # plain tensors, read safely, in no known layout
    with pytest.raises(ValueError, match=r"weights in no layout rayssl reads .*first keys: \['w'\]"):
        load_pretrained(UNETR((32, 32, 32), 8, 1, 3, 48, 2, 3), str(tmp_path / "model.pt"))
    (tmp_path / "enc.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    (tmp_path / "enc.json").write_text("{}")
    with pytest.raises(ValueError, match=rf"{tmp_path / 'enc.safetensors'}: not a readable .safetensors file"):
        load_export(tmp_path / "enc.safetensors")


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEFORE_RAY = {
    "roi_not_divisible": ("pretrain", ["data.roi=[50,50,50]"], "data.roi=[50, 50, 50]: every axis must be a multiple of 8"),
    "roi_2d_on_3d_source": ("pretrain", ["data.roi=[32,32]"], "roi (32, 32) has 2 axes but source"),
    "unknown_scheme": ("pretrain", ["data.source=nfs:/data"], "unknown source type 'nfs'"),
    "missing_path": ("finetune", ["data.source=msd:/nonexistent/BTCV", "pretrained=none"], "does not exist"),
    "malformed_dataset_json": ("pretrain", ["data.source=msd:{bad}"], "'training' must be a list"),
    "empty_training_list": ("pretrain", ["data.source=msd:{empty}"], "has no training cases"),
    "eval_roi_not_divisible": ("finetune", ["eval.roi=[36,36,36]", "pretrained=none"], "eval.roi=[36, 36, 36]"),
    "unreadable_pretrained": ("finetune", ["pretrained={pt}"], "not a readable PyTorch or safetensors file"),
}


@pytest.mark.parametrize("name", sorted(BEFORE_RAY))
def test_job_errors_come_before_ray_and_leave_no_run_directory(tmp_path, name):
    job, overrides, message = BEFORE_RAY[name]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "dataset.json").write_text('{"training": {"image": "a.nii.gz"}}')
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "dataset.json").write_text('{"modality": {"0": "CT"}, "training": []}')
    (tmp_path / "w.pt").write_bytes(b"PK")
    overrides = [o.format(bad=tmp_path / "bad", empty=tmp_path / "empty", pt=tmp_path / "w.pt") for o in overrides]
    runs = tmp_path / "runs"
    out = subprocess.run([sys.executable, os.path.join(ROOT, "jobs", f"{job}.py"), f"run.storage_path={runs}",
                          f"data.synthetic_dir={tmp_path / 'syn'}", *overrides], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.startswith("error: ") and message in out.stderr, out.stderr[-2000:]
    assert "Started a local Ray instance" not in out.stdout + out.stderr  # Ray never started
    assert not runs.exists()

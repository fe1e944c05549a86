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

from conftest import write_msd, write_nifti

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
    rng = np.random.default_rng(0)
    data = (rng.integers(0, 3, shape) if label else rng.normal(0, 100, shape)).astype(np.uint8 if label else np.int16)
    return write_nifti(path, data)


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
    write_msd(root, training, labels={"0": "bg", "1": "a", "2": "b"})
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

    with os_opens(secret.parent) as seen:  # the kernel's view too: pyarrow's C++ opens escape audit hooks
        (src, loaded), opened = opened_during(listing)
    return src, loaded, opened + seen


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
    return write_nifti(path, rgb)


VOL = (12, 12, 12)
R = np.random.default_rng(1)


def _noise(shape=VOL):
    return R.normal(0, 100, shape).astype(np.float32)


BAD_IMAGES = {
    # name: (writes the image file, the reason's expected words)
    "header_claims_1000_cubed": (lambda p: _lying_header(p), "header claims 1000 x 1000 x 1000 voxels of int16"),
    "header_claims_1000_cubed_raw": (lambda p: _lying_header(p.with_suffix(""), gz=False), "but the file holds"),
    "header_claims_above_the_cap": (lambda p: _lying_header(p, (4000, 4000, 4000), np.float64), "above the 2 GiB budget"),
    "truncated_gzip": (lambda p: _truncate(write_nifti(p, _noise())), "truncated"),
    "truncated_raw_nifti": (lambda p: _truncate(write_nifti(p.with_suffix(""), _noise()), 0.6), "truncated"),
    "corrupt_gzip": (lambda p: _write(p, b"\x1f\x8b\x08\x00" + os.urandom(600)), "gzip"),
    "random_bytes": (lambda p: _write(p.with_suffix(""), b"\x17" + os.urandom(4000)), "not a NIfTI file"),
    "empty_file": (lambda p: _write(p, b""), "not a NIfTI file"),
    "text_file": (lambda p: _write(p, b"this is not an image\n"), "not a NIfTI file"),
    "complex64_voxels": (lambda p: write_nifti(p, _noise() + 1j * _noise(), dtype=np.complex64), "complex voxels (complex64)"),
    "rgb24_voxels": (_rgb, "RGB / structured voxels"),
    "all_zero_affine": (lambda p: _raw_nifti(p, _noise(), np.zeros((3, 4))), "affine is not an invertible"),
    "collapsed_axis_affine": (lambda p: _raw_nifti(p, _noise(), np.diag([1.0, 0.0, 1.0, 1.0])[:3]), "affine is not an invertible"),
    "nan_voxels": (lambda p: write_nifti(p, np.where(R.random(VOL) < 0.01, np.nan, _noise())), "NaN/Inf voxels"),
    "inf_voxels": (lambda p: write_nifti(p, np.where(R.random(VOL) < 0.01, np.inf, _noise())), "NaN/Inf voxels"),
    "constant_volume": (lambda p: write_nifti(p, np.full(VOL, 7.0, np.float32)), "constant"),
    "zero_size_axis": (lambda p: write_nifti(p, np.zeros((12, 0, 12), np.float32)), "empty image"),
    "two_dimensional": (lambda p: write_nifti(p, _noise((12, 12))), "3D"),
    "five_dimensional": (lambda p: write_nifti(p, _noise((6, 6, 6, 2, 2))), "expected a 3D or 4D volume"),
    "time_series_as_channels": (lambda p: write_nifti(p, _noise((12, 12, 12, 20))), "20 channels"),
    "not_a_file": (lambda p: p.mkdir(parents=True) or p, "not a file"),
    "missing": (lambda p: p, "file not found"),
}

BAD_LABELS = {
    "label_shape_mismatch": (lambda p: write_nifti(p, np.zeros((10, 12, 12), np.uint8)), "label shape"),
    "label_affine_mismatch": (lambda p: write_nifti(p, np.zeros(VOL, np.uint8), affine=np.diag([2.0, 1, 1, 1])), "label affine differs"),
    "label_nan": (lambda p: write_nifti(p, np.where(R.random(VOL) < 0.1, np.nan, 1.0).astype(np.float32)), "NaN/Inf"),
    "label_fractional": (lambda p: write_nifti(p, np.full(VOL, 0.5, np.float32)), "non-integer"),
    "label_too_large": (lambda p: write_nifti(p, np.full(VOL, 70000, np.int32)), "do not fit int16"),
    "label_four_dimensional": (lambda p: write_nifti(p, np.zeros((12, 12, 12, 3), np.uint8)), "expected a 3D label map"),
    "label_truncated": (lambda p: _truncate(write_nifti(p, R.integers(0, 3, VOL).astype(np.uint8))), "truncated"),
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
    image = write_nifti(tmp_path / "img" / "case.nii.gz", _noise())
    label = write(tmp_path / "lab" / f"{name}.nii.gz")
    with pytest.raises(BadInput) as e:
        load_case(Case(name, [str(image)], str(label)), "none", channels=1)
    assert reason in str(e.value) and e.value.path in (str(label), str(image))


HANDLED = {
    "nifti2": lambda p: nib.save(nib.Nifti2Image(_noise(), np.eye(4)), str(p)),
    "big_endian": lambda p: nib.save(nib.Nifti1Image(_noise().astype(">f4"), np.eye(4)), str(p)),
    "int8_with_scaling": lambda p: write_nifti(p, R.integers(-100, 100, VOL).astype(np.int8),
                                         header_fn=lambda img: img.header.set_slope_inter(2.0, -5.0)),
    "trailing_singleton_axis": lambda p: write_nifti(p, _noise((12, 12, 12, 1))),
    "uncompressed": lambda p: write_nifti(p.with_suffix(""), _noise()),
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
    path = _lying_header(tmp_path / "liar.nii.gz", (800, 800, 800))  # 1.9 GiB as float32: within the budget
    probe = (  # peak RSS from VmHWM: ru_maxrss would start at the (larger) pytest process's, kept across exec
        "import sys\n"
        "from rayssl.data.io import BadInput, read_volume\n"
        f"peak = lambda: {_VMHWM}\n"
        "before = peak()\n"
        "try:\n    read_volume(sys.argv[1])\nexcept BadInput as e:\n    print(e)\n"
        "print((peak() - before) // 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, timeout=120)
    reason, grown_mb = out.stdout.strip().splitlines()
    assert "header claims 800 x 800 x 800 voxels of int16" in reason and "file holds" in reason
    assert int(grown_mb) < 30, out.stdout  # before: about 1 GB for the claimed array


def test_a_source_mixing_channel_counts_keeps_the_common_one(tmp_path):
    for i in range(3):
        write_nifti(tmp_path / "imgs" / f"one_{i}.nii.gz", _noise())
    write_nifti(tmp_path / "imgs" / "series.nii.gz", _noise((12, 12, 12, 20)))
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
        write_nifti(tmp_path / sub / "case.nii.gz", _noise())
    write_msd(tmp_path, [{"image": "a/case.nii.gz"}, {"image": "b/case.nii.gz"}])
    src = resolve_source(DataConfig(source=f"msd:{tmp_path}", folds=2))
    assert sorted(c.case_id for c in src.cases) == ["case", "case_1"]
    assert any("listed 2 times" in m for m in caplog.messages)


def test_strict_mode_fails_at_listing_on_missing_files(tmp_path):
    from rayssl.data.sources import QuarantineError

    write_nifti(tmp_path / "a.nii.gz", _noise())
    write_msd(tmp_path, [{"image": "a.nii.gz"}, {"image": "gone.nii.gz"}])
    with pytest.raises(QuarantineError, match="gone.nii.gz: file not found"):
        resolve_source(DataConfig(source=f"msd:{tmp_path}", strict=True))


def test_unknown_and_corrupt_weights_are_refused_by_name(tmp_path):
    import torch

    from rayssl.finetune.weights import load_pretrained, resolve_pretrained
    from rayssl.models.unetr import UNETR
    from rayssl.models.weights_file import load_export

    torch.save({"w": torch.zeros(2)}, tmp_path / "model.pt")  # plain tensors, read safely, in no known layout
    with pytest.raises(ValueError, match=r"weights in no layout rayssl reads .*first keys: \['w'\]"):
        load_pretrained(UNETR((32, 32, 32), 8, 1, 3, 48, 2, 3), resolve_pretrained(str(tmp_path / "model.pt")))
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


# ----- roots and validity: OS-level open check, file:// roots, manifest links, checkpoint manifests, label values,
# copies across splits, unreadable manifests

import contextlib  # noqa: E402
import ctypes  # noqa: E402
import hashlib  # noqa: E402
import logging  # noqa: E402
import struct  # noqa: E402

_IN_OPEN = 0x20


@contextlib.contextmanager
def os_opens(*folders):
    """The files in ``folders`` (and the folders themselves) that anything opens while the block runs, as the
    kernel reports them (Linux inotify ``IN_OPEN``): Python's ``open``, pyarrow's C++ reads, nibabel alike. Yields
    a list, filled when the block ends; off Linux it stays empty (the audit hook still checks Python's opens)."""
    opened: list[str] = []
    if not sys.platform.startswith("linux"):
        yield opened
        return
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "inotify_init1 failed: the open check cannot run")
    try:
        names = {}
        for folder in folders:
            wd = libc.inotify_add_watch(fd, os.fsencode(str(folder)), _IN_OPEN)
            if wd < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {folder} failed")
            names[wd] = str(folder)
        yield opened
        events = b""
        while True:
            try:
                events += os.read(fd, 1 << 16)
            except BlockingIOError:
                break
        at = 0
        while at < len(events):
            wd, _, _, size = struct.unpack_from("iIII", events, at)
            name = os.fsdecode(events[at + 16: at + 16 + size].rstrip(b"\0"))
            opened.append(os.path.join(names.get(wd, "?"), name) if name else names.get(wd, "?"))
            at += 16 + size
    finally:
        os.close(fd)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")
def test_the_open_check_sees_what_pyarrow_opens_which_audit_hooks_miss(layout):
    from rayssl.data.io import read_bytes

    root, secret = layout
    with os_opens(secret.parent) as seen:
        _, audited = opened_during(lambda: read_bytes(str(secret)))  # pyarrow's C++ open
    assert str(secret) in seen
    assert not leaked(audited, secret)  # invisible to Python's audit hooks: why the escape tests also use os_opens
    write_nifti(secret.parent / "other.nii", _noise())  # of a size of its own: read by pyarrow only
    src, loaded, opened = _check_escape(_msd(root, "../secret/other.nii"), root, secret, None, allow=True)
    assert len(loaded) == 3 and leaked(opened, secret)  # the escape tests' check sees an escape that is let through


@pytest.mark.parametrize("kind", ["msd", "folder"])
def test_a_symlink_out_of_a_file_uri_root_is_quarantined_unopened(layout, kind):
    root, secret = layout
    link = _symlink(root / "imagesTr" / "link.nii.gz", secret)
    if kind == "msd":
        spec = _msd(root, link).replace("msd:", "msd:file://")
    else:
        nifti(root / "labelsTr" / "link.nii.gz", label=True)
        spec = f"folder:file://{root / 'imagesTr'},file://{root / 'labelsTr'}"
    src, loaded, opened = _check_escape(spec, root, secret, None)
    assert sorted(c.case_id for c in src.cases) == ["good_0", "good_1"] and len(loaded) == 2
    (path, reason), = src.missing
    assert path.endswith("imagesTr/link.nii.gz") and "outside the dataset root" in reason
    assert not leaked(opened, secret), opened


def _cxr_root(tmp_path):
    from rayssl.data.synthetic import make_cxr_phantoms

    return make_cxr_phantoms(tmp_path / "cxr", n=4, seed=0, size=32)


MANIFEST_LINKS = {  # name: (makes the dataset, the manifest to link out, the spec)
    "dataset.json": (lambda t: _msd(t / "ds", "./imagesTr/good_1.nii.gz") and t / "ds", "dataset.json", "msd:{root}"),
    "cases.csv": (lambda t: _csv(t / "ds", "imagesTr/good_1.nii.gz") and t / "ds", "cases.csv", "csv:{root}/cases.csv"),
    "Data_Entry_2017.csv": (_cxr_root, "Data_Entry_2017.csv", "cxr14:{root}"),
    "train_val_list.txt": (_cxr_root, "train_val_list.txt", "cxr14:{root}"),
    "test_list.txt": (_cxr_root, "test_list.txt", "cxr14:{root}"),
}


@pytest.mark.parametrize("name", sorted(MANIFEST_LINKS))
def test_a_manifest_linked_out_of_the_root_is_refused_unread(layout, tmp_path, name):
    make, manifest, spec = MANIFEST_LINKS[name]
    _, secret = layout
    root = make(tmp_path)
    outside = secret.parent / manifest
    outside.write_bytes((root / manifest).read_bytes().replace(b"good_", b"SECRET_").replace(b"0000", b"SECRET"))
    (root / manifest).unlink()
    (root / manifest).symlink_to(outside)
    with os_opens(secret.parent) as seen:
        with pytest.raises(ValueError) as e:
            opened_during(lambda: resolve_source(DataConfig(source=spec.format(root=root), folds=2)))
    assert str(root / manifest) in str(e.value) and "leads outside the dataset root" in str(e.value)
    assert "SECRET" not in str(e.value) and not seen, seen  # the outside file's content is neither shown nor read
    with os_opens(secret.parent) as seen:
        resolve_source(DataConfig(source=spec.format(root=root), folds=2, allow_outside_root=True))
    assert str(outside) in seen  # opting in reads it


def _checkpoint(directory, extra=()):
    """A sealed checkpoint of two files, whose ``files_rank0.json`` also lists ``extra`` (name: SHA-256)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "train_state.json").write_text(json.dumps({"step": 3, "world_size": 1}))
    (directory / "model.safetensors").write_bytes(b"weights")
    files = {n: hashlib.sha256((directory / n).read_bytes()).hexdigest() for n in ("train_state.json", "model.safetensors")}
    (directory / "files_rank0.json").write_text(json.dumps({**files, **dict(extra)}))
    return directory


def _link_out(ckpt, secret, name):
    """Replace the checkpoint's ``name`` with a link to a copy of it beside the secret."""
    outside = secret.parent / name
    outside.write_bytes((ckpt / name).read_bytes())
    (ckpt / name).unlink()
    (ckpt / name).symlink_to(outside)


CHECKPOINT_ESCAPES = {  # name: lists the secret in files_rank0.json (by the name returned) or links a file out
    "dotdot": lambda ckpt, secret: os.path.relpath(secret, ckpt),
    "absolute": lambda ckpt, secret: str(secret),
    "symlink": lambda ckpt, secret: (ckpt / "weights").symlink_to(secret) or "weights",
    "linked_manifest": lambda ckpt, secret: _link_out(ckpt, secret, "files_rank0.json"),
    "linked_state": lambda ckpt, secret: _link_out(ckpt, secret, "train_state.json"),
}


@pytest.mark.parametrize("name", sorted(CHECKPOINT_ESCAPES))
def test_the_checkpoint_check_opens_only_files_inside_the_checkpoint(layout, tmp_path, name):
    from rayssl.train.checkpoint import damage

    _, secret = layout
    assert damage(_checkpoint(tmp_path / "clean")) is None
    ckpt = _checkpoint(tmp_path / "run" / "checkpoint_1")
    listed = CHECKPOINT_ESCAPES[name](ckpt, secret)
    if listed is not None:  # with the secret's true digest: unchecked, the checkpoint would pass as intact
        _checkpoint(ckpt, {listed: hashlib.sha256(secret.read_bytes()).hexdigest()})
    with os_opens(secret.parent) as seen:
        wrong, opened = opened_during(lambda: damage(ckpt))
    assert wrong is not None and "outside the checkpoint (not opened)" in wrong, wrong
    assert not seen and not leaked(opened, secret), (seen, opened)


def test_a_checkpoint_folder_linked_out_of_the_run_is_ignored(layout, tmp_path):
    from rayssl.train.checkpoint import _candidates

    _, secret = layout
    run = tmp_path / "run"
    _checkpoint(run / "checkpoint_1")
    (secret.parent / "train_state.json").write_text(json.dumps({"step": 99, "world_size": 1}))
    (run / "checkpoint_9").symlink_to(secret.parent)
    with os_opens(secret.parent) as seen:
        found = _candidates(str(run))
    assert found == [(3, str(run / "checkpoint_1"))]
    assert not [p for p in seen if p.endswith("train_state.json")], seen


def test_label_values_outside_the_declared_set_are_quarantined_naming_them(tmp_path, monkeypatch, caplog):
    from rayssl.data import pipeline

    root = tmp_path / "ds"
    for i, values in enumerate(([0, 1, 2], [0, 7, 255], [0, 1])):
        write_nifti(root / "imagesTr" / f"c{i}.nii.gz", _noise())
        write_nifti(root / "labelsTr" / f"c{i}.nii.gz", np.resize(np.array(values, np.uint8), VOL))
    write_msd(root, [{"image": f"imagesTr/c{i}.nii.gz", "label": f"labelsTr/c{i}.nii.gz"} for i in range(3)],
              labels={"0": "bg", "1": "a", "2": "b"})
    data = DataConfig(source=f"msd:{root}", recipe="none", folds=2)
    source = resolve_source(data)

    class Listing:  # what _volume_stream hands Ray Data, run here without Ray
        def __init__(self, cases):
            self.items = pipeline._items(cases)

        def flat_map(self, fn, fn_kwargs):
            return [row for item in self.items for row in fn(item, **fn_kwargs)]

    monkeypatch.setattr(pipeline, "_listing", Listing)
    with caplog.at_level(logging.WARNING):
        rows = pipeline.case_dataset(data, source, "none", ["train", "val"])
    assert sorted(r["case_id"] for r in rows) == ["c0", "c2"]
    bad = str(root / "labelsTr" / "c1.nii.gz")
    assert any(f"quarantined {bad}: label values 7, 255 are not among the labels the source declares (0, 1, 2)" in m
               for m in caplog.messages), caplog.messages
    with pytest.raises(BadInput, match="label values 7, 255") as e:
        load_case(next(c for c in source.cases if c.case_id == "c1"), "none", label_values=[0, 1, 2])
    assert e.value.path == bad


def _splits_by_id(spec, seeds=range(6), **kw):
    return [{c.case_id: c.split for c in resolve_source(DataConfig(source=spec, folds=2, seed=s, **kw)).cases}
            for s in seeds]


def test_copies_of_one_case_land_in_one_split(tmp_path, caplog):
    volumes = {n: _noise() for n in ("a", "b", "c", "d")}
    for n, vol in volumes.items():
        write_nifti(tmp_path / "imagesTr" / f"{n}.nii", vol)  # uncompressed: all of one size
    write_nifti(tmp_path / "copies" / "a.nii", volumes["a"])  # the same content under another path
    training = [{"image": f"imagesTr/{n}.nii"} for n in volumes] + [{"image": "imagesTr/a.nii"}, {"image": "copies/a.nii"}]
    write_msd(tmp_path, training)
    splits = _splits_by_id(f"msd:{tmp_path}")
    assert all(s["a"] == s["a_1"] == s["a_2"] for s in splits), splits  # the same path; the same content
    assert len({s["b"] + s["c"] + s["d"] for s in splits}) > 1  # the others are still dealt apart
    caplog.clear()
    src = resolve_source(DataConfig(source=f"msd:{tmp_path}", folds=2))
    assert len({c.subject for c in src.cases}) == 4  # one size, other content: not copies
    copies = [m for m in caplog.messages if "case(s) list the same image file" in m]
    assert len(copies) == 1 and "2 case(s)" in copies[0], caplog.messages  # one line, with the count


def test_a_csv_naming_one_file_many_times_warns_once_and_keeps_one_split(tmp_path, caplog):
    write_nifti(tmp_path / "one.nii.gz", _noise())
    (tmp_path / "cases.csv").write_text("image\n" + "one.nii.gz\n" * 3000)
    with caplog.at_level(logging.WARNING):
        src = resolve_source(DataConfig(source=f"csv:{tmp_path / 'cases.csv'}", folds=5))
    assert len(src.cases) == 3000 and len({c.split for c in src.cases}) == 1
    assert len(caplog.records) == 2, caplog.messages[:5]  # the repeated id once, the copies once (with 2999)
    assert "2999 case(s) list the same image file" in caplog.messages[1]


DEEP = "[" * 100000 + "]" * 100000


def test_a_deeply_nested_dataset_json_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "dataset.json").write_text('{"training": ' + DEEP + "}")
    with pytest.raises(ValueError, match="nested too deeply") as e:
        resolve_source(DataConfig(source=f"msd:{tmp_path}"))
    assert str(tmp_path / "dataset.json") in str(e.value)


def test_a_deeply_nested_export_sidecar_is_an_error_naming_the_file(tmp_path):
    from rayssl.models.weights_file import load_export

    (tmp_path / "enc.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    (tmp_path / "enc.json").write_text(DEEP)
    with pytest.raises(ValueError, match=rf"{tmp_path / 'enc.json'}: not valid JSON \(nested too deeply\)"):
        load_export(tmp_path / "enc.safetensors")
    (tmp_path / "enc.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=rf"{tmp_path / 'enc.json'}: expected a JSON object"):
        load_export(tmp_path / "enc.safetensors")


@pytest.mark.parametrize("content,message", [
    (b"image\n\xff\xfe\x00garbage\x89PNG\n", "not a UTF-8 text file"),
    (b"image\n" + b"x" * 200000 + b"\n", "not a readable CSV file"),
])  # fmt: skip
def test_a_binary_or_broken_csv_is_an_error_naming_the_file(tmp_path, content, message):
    (tmp_path / "cases.csv").write_bytes(content)
    with pytest.raises(ValueError, match=message) as e:
        resolve_source(DataConfig(source=f"csv:{tmp_path / 'cases.csv'}"))
    assert str(e.value).startswith(f"{tmp_path / 'cases.csv'}: ")


# ----- decode budgets: memory bounded before decoding (NIfTI claim, trailing bytes, PNG, resampling, weights);
# NIfTI header defects

import math  # noqa: E402
import struct  # noqa: E402
import zipfile  # noqa: E402
import zlib  # noqa: E402

from rayssl.data.io import MAX_DECODED_BYTES, read_image_2d  # noqa: E402


def _zeros_nifti_gz(path, dims, dtype=np.float32):
    """A ``.nii.gz`` of zeros with a true header, streamed out (256 MiB of zeros deflate to ~1 MB)."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(dims)
    hdr.set_data_dtype(dtype)
    hdr.set_qform(np.eye(4), code=1)
    hdr["vox_offset"] = 352
    left = math.prod(dims) * np.dtype(dtype).itemsize
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(hdr.binaryblock + b"\0" * 4)
        while left > 0:
            f.write(bytes(min(left, 2**24)))
            left -= 2**24
    return path


_VMHWM = "int(next(ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')).split()[1])"
"""Peak RSS (KB) of this process since its exec (Linux). ``ru_maxrss`` is inherited across fork and exec, so a
child of a pytest process that holds 800 MB would report no growth below that."""


def _rss_probe(call: str, path) -> list[str]:
    """What ``call`` (code on ``p``, the path) prints in a fresh process, then how many MB its peak RSS grew."""
    probe = ("import sys\nimport numpy as np\nfrom rayssl.data.io import BadInput, read_volume\np = sys.argv[1]\n"
             f"peak = lambda: {_VMHWM}\nbefore = peak()\n"
             f"try:\n    {call}\nexcept BadInput as e:\n    print(e)\n"
             "print((peak() - before) // 1024)\n")
    out = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()


def test_a_volume_decodes_into_its_float32_array_alone(tmp_path):
    path = _zeros_nifti_gz(tmp_path / "zeros.nii.gz", (512, 512, 256))  # 256 MiB as float32, 0.5 MB on disk
    shape, grown_mb = _rss_probe("v, _ = read_volume(p); print(v.shape, v.dtype, v.flags.c_contiguous)", path)
    assert int(grown_mb) < 256 * 1.25, grown_mb  # before: 2x (the decompressed bytes, nibabel's array, a stacked copy)
    assert shape == "(1, 512, 512, 256) float32 True"


@pytest.mark.parametrize("dims,dtype,gib", [((2048, 2048, 512), np.float32, "8.0"),
                                             ((1024, 1024, 768), np.int16, "3.0")])
def test_a_claim_above_the_decoding_budget_is_refused_unread(tmp_path, dims, dtype, gib):
    # exactly 8 GiB passed the old cap; 1.5 GiB of int16 passed it too but is 3 GiB once float32
    path = _lying_header(tmp_path / "big.nii.gz", dims, dtype)
    with pytest.raises(BadInput, match=rf"header claims .* \({gib} GiB as float32\), above the 2 GiB budget") as e:
        load_case(Case("big", [str(path)]), "none")
    assert e.value.path == str(path) and MAX_DECODED_BYTES == 2 * 2**30


def test_a_nii_with_trailing_bytes_is_read_only_as_far_as_its_header_says(tmp_path):
    data = _noise((48, 48, 32))
    path = write_nifti(tmp_path / "trailing.nii", data)
    with open(path, "r+b") as f:  # 1 GiB of (sparse) bytes after the voxels
        f.truncate(path.stat().st_size + 2**30)
    total, grown_mb = _rss_probe("v, _ = read_volume(p); print(float(v.astype(np.float64).sum()))", path)
    assert float(total) == pytest.approx(float(data.astype(np.float64).sum()))
    assert int(grown_mb) < 50, grown_mb  # before: the whole file, 1 GiB


def _bounded_load(path, recipe: str, headroom_mb: int = 1500, imports: str = "") -> str:
    """``load_case`` of ``path`` in a fresh process whose address space may grow by ``headroom_mb`` past its imports
    (so that a regression fails here instead of taking the machine's memory): the reason, or the shape loaded."""
    probe = ("import resource, sys\nfrom rayssl.data.io import BadInput\nfrom rayssl.data.preprocess import load_case\n"
             f"from rayssl.data.sources import Case\n{imports}\n"
             "vm = int(next(ln for ln in open('/proc/self/status') if ln.startswith('VmSize')).split()[1]) * 1024\n"
             f"resource.setrlimit(resource.RLIMIT_AS, (vm + {headroom_mb} * 2**20, resource.RLIM_INFINITY))\n"
             "try:\n    print('loaded', load_case(Case('x', [sys.argv[1]]), sys.argv[2])['image'].shape)\n"
             "except BadInput as e:\n    print(e.path, '|', e)\n"
             "except Exception as e:\n    print(type(e).__name__, str(e)[:200])\n")
    out = subprocess.run([sys.executable, "-c", probe, str(path), recipe], capture_output=True, text=True, timeout=300)
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-2000:]


def _png16_zeros(path, width, height):
    """A 16-bit grayscale PNG, zeros but for a ramp in its first row, written row by row (12000 x 12000 deflates to
    ~1 MB, under Pillow's limit)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(1)
    row = bytes(1 + 2 * width)  # filter byte, then the pixels
    ramp = b"\0" + np.arange(width, dtype=">u2").tobytes()
    idat = z.compress(ramp) + b"".join(z.compress(row) for _ in range(height - 1)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_a_png_too_large_to_preprocess_is_refused_from_its_header(tmp_path):
    path = _png16_zeros(tmp_path / "huge.png", 12000, 12000)
    assert _bounded_load(path, "cxr") == (f"{path} | image is 12000 x 12000 pixels, above the 32 Mi pixels a 2D image "
                                          "may have (MAX_IMAGE_PIXELS); not decoded")  # before: killed at 4 GB
    assert read_image_2d(str(_png16_zeros(tmp_path / "ok.png", 64, 48))).shape == (1, 48, 64)


def test_a_volume_that_would_resample_to_gigabytes_is_refused_before_resampling(tmp_path):
    path = write_nifti(tmp_path / "coarse.nii.gz", _noise((16, 16, 16)), affine=np.diag([100.0, 100.0, 100.0, 1.0]))  # 15 KB
    assert _bounded_load(path, "ct_btcv", imports="import monai.transforms") == (
        f"{path} | resampling 16 x 16 x 16 voxels of 100 x 100 x 100 mm to 1.5 x 1.5 x 2 mm would make 1001 x 1001 x "
        "751 voxels (2.8 GiB as float32), above the 64 Mi voxels a resampled volume may have (MAX_RESAMPLED_VOXELS)")


def test_a_volume_that_preprocesses_to_nothing_is_refused(tmp_path):
    huge = write_nifti(tmp_path / "huge_voxels.nii.gz", _noise(), affine=np.diag([1e30, 1e30, 1e30, 1.0]))
    with pytest.raises(BadInput, match=r"1e\+30 x 1e\+30 x 1e\+30 mm to 1.5 x 1.5 x 2 mm would make 7.3+e\+30 x") as e:
        load_case(Case("huge", [str(huge)]), "ct_btcv")  # before: an image of shape [1, 0, 0, 0]
    assert e.value.path == str(huge)
    air = write_nifti(tmp_path / "air.nii.gz", R.uniform(-1000, -500, VOL).astype(np.float32))  # nothing in the CT window
    with pytest.raises(BadInput, match=r"recipe 'ct_btcv' leaves no voxels: shape \(1, 0, 0, 0\)") as e:
        load_case(Case("air", [str(air)]), "ct_btcv")
    assert e.value.path == str(air)


def _header_nifti(path, data, **fields):
    """An uncompressed NIfTI-1 file written field by field (nibabel will not save these headers)."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(data.shape)
    hdr.set_data_dtype(data.dtype)
    hdr["qform_code"], hdr["sform_code"], hdr["vox_offset"] = 1, 0, 352
    for k, v in fields.items():
        hdr[k] = v
    return _write(path, hdr.binaryblock + b"\0" * 4 + data.tobytes(order="F"))


NIFTI_HEADER_DEFECTS = {
    "vox_offset_zero": (lambda p: _header_nifti(p, _noise(), vox_offset=0),
                        "vox_offset 0 puts the voxel data inside the 348-byte header"),
    "zero_pixdim": (lambda p: _header_nifti(p, _noise(), pixdim=[1, 1, 0, 1, 1, 1, 1, 1]),
                    "pixdim gives a zero voxel size (1.0, 0.0, 1.0) and no sform sets the grid"),
}


@pytest.mark.parametrize("name", sorted(NIFTI_HEADER_DEFECTS))
def test_a_nifti_header_defect_is_refused_naming_the_file(tmp_path, name):
    write, reason = NIFTI_HEADER_DEFECTS[name]
    path = write(tmp_path / f"{name}.nii")
    with pytest.raises(BadInput) as e:  # before: read from byte 0 / read with 1 mm voxels
        load_case(Case(name, [str(path)]), "none", channels=1)
    assert reason in str(e.value) and e.value.path == str(path)


def test_a_multi_member_nii_gz_is_read_as_nibabel_reads_it(tmp_path):
    plain = write_nifti(tmp_path / "plain.nii", _noise())
    raw = plain.read_bytes()
    members = [gzip.compress(raw[a:b]) for a, b in ((0, 200), (200, 3000), (3000, None))]  # header split too
    multi = _write(tmp_path / "multi.nii.gz", b"".join(members))
    volume = load_case(Case("multi", [str(multi)]), "none", channels=1)  # before: refused as truncated
    np.testing.assert_array_equal(volume["image"][0], nib.load(str(multi)).get_fdata(dtype=np.float32))


def _deflated_weights(path, numel):
    """A ``torch.save`` file whose one float32 tensor of ``numel`` zeros is a deflated zip member (a zip bomb
    ``torch.load`` inflates in full): a 4-element tensor's pickle with the element counts patched."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save({"w": torch.zeros(4)}, buf)
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as out:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/data.pkl"):  # the storage's and the tensor's size: 4 -> numel
                n = b"J" + struct.pack("<i", numel)
                data = data.replace(b"cpuq\x06K\x04", b"cpuq\x06" + n)
                data = data.replace(b"K\x00K\x04\x85", b"K\x00" + n + b"\x85")
            if info.filename.endswith("/data/0"):
                with out.open(info.filename, "w") as f:
                    for _ in range(numel * 4 // 2**24):
                        f.write(bytes(2**24))
            else:
                out.writestr(info, data)
    return path


def test_weights_that_unpack_far_beyond_their_file_are_refused_before_loading(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import torch

    from rayssl.finetune.weights import load_pretrained, resolve_pretrained
    from rayssl.models import weights_file
    from rayssl.models.unetr import UNETR
    from rayssl.train.engine import load_checkpoints_safely

    bomb = _deflated_weights(tmp_path / "bomb.pt", 2**26)  # 1.1 MB holding a 256 MiB tensor
    with pytest.raises(ValueError, match=rf"{bomb}: refused: its zip members unpack to 256 MiB from a 1.\d MiB file"):
        load_pretrained(UNETR((32, 32, 32), 8, 1, 3, 48, 2, 3), resolve_pretrained(str(bomb)))  # before: inflated in full
    engine = SimpleNamespace(checkpoint_engine=SimpleNamespace())
    load_checkpoints_safely(engine)  # a checkpoint shard is no bigger than it says either
    with pytest.raises(ValueError, match="unpack to 256 MiB"):
        engine.checkpoint_engine.load(str(bomb))
    torch.save({"w": torch.zeros(2048)}, tmp_path / "plain.pt")
    assert engine.checkpoint_engine.load(str(tmp_path / "plain.pt"))["w"].shape == (2048,)
    monkeypatch.setattr(weights_file, "MAX_WEIGHTS_BYTES", 4096)  # the size cap, scaled down
    with pytest.raises(ValueError, match=r"plain.pt: 9,\d+ bytes, above the 4,096 bytes a weight file may have"):
        weights_file.read_state_dict(tmp_path / "plain.pt")


# ----- sweep state: Ray Tune's pickles in a sweep directory are signed, and a resume refuses any it cannot verify

import pickle  # noqa: E402
import re  # noqa: E402

from rayssl.tune import seal as tune_seal  # noqa: E402

SWEEP_KEY = "k" * 32


class _Payload:
    """Unpickling it writes ``marker``: what a planted pickle could do instead (the issue's ran ``os.system``)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def _signed_sweep(tmp_path, monkeypatch):
    """A sweep directory as a run leaves it: Tune's state files, signed with the sweep key."""
    monkeypatch.setenv(tune_seal.KEY_ENV, SWEEP_KEY)
    sweep = tmp_path / "runs" / "s"
    sweep.mkdir(parents=True)
    (sweep / "tuner.pkl").write_bytes(pickle.dumps({"tune_config": None}))
    (sweep / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_data": [], "runner_data": {}}')
    (sweep / "searcher-state-2026-01-01_00-00-00.pkl").write_bytes(pickle.dumps({"study": []}))
    (sweep / "search_gen_state-2026-01-01_00-00-00.json").write_bytes(pickle.dumps({"counter": 2}))
    tune_seal.seal(sweep)
    return sweep


def _plant(sweep, marker, case):
    payload = pickle.dumps(_Payload(marker))
    cloudpickled = json.dumps({"trial_data": [],
                               "runner_data": {"_type": "CLOUDPICKLE_FALLBACK", "value": payload.hex()}})
    if case == "fifo_named_tuner_pkl":  # reading it would block forever
        (sweep / "tuner.pkl").unlink()
        os.mkfifo(sweep / "tuner.pkl")
        return "tuner.pkl", "not a regular file"
    if case == "tuner_pkl_linked_out":
        (sweep.parent / "elsewhere.pkl").write_bytes(payload)
        (sweep / "tuner.pkl").unlink()
        (sweep / "tuner.pkl").symlink_to(sweep.parent / "elsewhere.pkl")
        return "tuner.pkl", "not a regular file"
    if case == "seal_removed":
        (sweep / tune_seal.SEAL).unlink()
        return "experiment_state-2026-01-01_00-00-00.json", "tune_state.seal is missing or unreadable"
    if case == "seal_forged":  # the seal rewritten with a signature made under another key
        (sweep / "tuner.pkl").write_bytes(payload)
        forged = json.loads((sweep / tune_seal.SEAL).read_text())
        forged["files"]["tuner.pkl"] = [tune_seal._mac(b"guess", "s", "tuner.pkl", sweep / "tuner.pkl")]
        (sweep / tune_seal.SEAL).write_text(json.dumps(forged))
        return "tuner.pkl", "it changed after rayssl signed it"
    name, content = {
        "tuner_pkl_replaced": ("tuner.pkl", payload),
        "newer_searcher_state": ("searcher-state-2099-01-01_00-00-00.pkl", payload),
        "experiment_state_with_cloudpickle": ("experiment_state-2099-01-01_00-00-00.json", cloudpickled.encode()),
        "search_gen_state_replaced": ("search_gen_state-2026-01-01_00-00-00.json", payload),
        "callback_states": ("callback-states-2099-01-01_00-00-00.pkl", payload),
        "any_other_pickle": ("anything.pkl", payload),
    }[case]
    (sweep / name).write_bytes(content)
    return name, "changed after rayssl signed it" if (name == "tuner.pkl" or "2026" in name) else "does not list it"


PLANTED = ["tuner_pkl_replaced", "newer_searcher_state", "experiment_state_with_cloudpickle",
           "search_gen_state_replaced", "callback_states", "any_other_pickle", "seal_removed", "seal_forged",
           "fifo_named_tuner_pkl", "tuner_pkl_linked_out"]


@pytest.mark.parametrize("case", PLANTED)
def test_a_tune_state_file_that_does_not_verify_stops_the_resume_unread(tmp_path, monkeypatch, case):
    from rayssl.config import SweepConfig, load_config
    from rayssl.tune.sweep import plan_sweep

    sweep = _signed_sweep(tmp_path, monkeypatch)
    cfg = load_config(SweepConfig, "tune", "tiny", overrides=["name=s", f"storage_path={sweep.parent}"])
    plan_sweep(cfg)  # the signed sweep verifies
    marker = tmp_path / "ran"
    name, why = _plant(sweep, marker, case)
    with pytest.raises(tune_seal.UntrustedSweepState, match=re.escape(f"{sweep / name}: Ray Tune would unpickle") +
                       f".*{re.escape(why)}.*set RAYSSL_SWEEP_KEY.*another name="):
        plan_sweep(cfg)
    assert not marker.exists()


def test_a_sweep_signed_with_another_key_is_not_resumed(tmp_path, monkeypatch):
    from rayssl.config import SweepConfig, load_config
    from rayssl.tune.sweep import plan_sweep

    sweep = _signed_sweep(tmp_path, monkeypatch)
    monkeypatch.setenv(tune_seal.KEY_ENV, "another key, 16+ characters")
    cfg = load_config(SweepConfig, "tune", "tiny", overrides=["name=s", f"storage_path={sweep.parent}"])
    with pytest.raises(tune_seal.UntrustedSweepState, match=r"changed after rayssl signed it \(key: RAYSSL_SWEEP_KEY"):
        plan_sweep(cfg)


def test_the_sweep_key_is_created_private_and_kept_out_of_the_storage_path(tmp_path, monkeypatch):
    monkeypatch.delenv(tune_seal.KEY_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    assert tune_seal.sweep_key(create=False) == (None, str(tmp_path / "config" / "rayssl" / "sweep.key"))
    key, where = tune_seal.sweep_key()
    assert len(key) == 64 and os.stat(where).st_mode & 0o777 == 0o600 and tune_seal.sweep_key() == (key, where)
    os.chmod(where, 0o644)
    with pytest.raises(ValueError, match=rf"sweep key {where} may be read or written by other users: chmod 600"):
        tune_seal.sweep_key()
    with pytest.raises(ValueError, match="lies inside storage_path"):
        tune_seal.check_key_outside(tmp_path)  # whoever writes the storage path could replace the key
    tune_seal.check_key_outside(tmp_path / "runs")
    monkeypatch.setenv(tune_seal.KEY_ENV, "short")
    with pytest.raises(ValueError, match="RAYSSL_SWEEP_KEY must hold at least 16 characters"):
        tune_seal.sweep_key()


def test_resuming_a_sweep_with_a_planted_tuner_pkl_exits_before_ray_and_runs_nothing(tmp_path):
    """The issue's case through the job: before, ``Tuner.restore`` unpickled the planted ``tuner.pkl``."""
    sweep = tmp_path / "runs" / "s"
    sweep.mkdir(parents=True)
    marker = tmp_path / "ran"
    (sweep / "tuner.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    env = {**os.environ, tune_seal.KEY_ENV: SWEEP_KEY}
    out = subprocess.run([sys.executable, os.path.join(ROOT, "jobs", "tune.py"), "--task", "tiny", "name=s",
                          f"storage_path={sweep.parent}", "num_samples=1", "baseline=false"], capture_output=True,
                         text=True, timeout=300, cwd=tmp_path, env=env)
    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stderr.startswith(f"error: {sweep / 'tuner.pkl'}: Ray Tune would unpickle this file"), out.stderr[-3000:]
    assert "tune_state.seal is missing or unreadable" in out.stderr
    assert "Started a local Ray instance" not in out.stdout + out.stderr and not marker.exists()
    pickle.loads((sweep / "tuner.pkl").read_bytes())  # the payload is live: unpickled, it does run
    assert marker.exists()


# ----- DICOM, special files and one-case sources (issue 26: items 2, 4 DICOM, 5, 6 DICOM, 11)

import socket  # noqa: E402
import struct  # noqa: E402
import zlib  # noqa: E402
from pathlib import Path  # noqa: E402

from test_dicom import write_series  # noqa: E402

from rayssl.config import PrepareConfig  # noqa: E402
from rayssl.data.cache import read_manifest, read_volumes  # noqa: E402
from rayssl.data.dicom import read_series  # noqa: E402
from rayssl.data.pipeline import prepare  # noqa: E402
from rayssl.data.synthetic import make_cxr_phantoms  # noqa: E402


def _series(folder, uid="1.2.9.50", patient="P1", slices=4, **kw):
    """A small CT series of ``slices`` slices (12 x 10 pixels of 1.5 x 1.2 mm, 3 mm apart) in ``folder``."""
    affine = np.diag([1.2, 1.5, 3.0, 1.0])
    hu = np.random.default_rng(0).normal(0, 100, (12, 10, slices)).round().astype(np.float32)
    write_series(folder, hu, affine, uid, patient=patient, **kw)
    return folder


def _edit_slices(folder, edit, only=None):
    """Apply ``edit(ds)`` to the series' slices (all, or the file named ``only``) and save them."""
    import pydicom

    for path in sorted(folder.glob("*.dcm")):
        if only is None or path.name == only:
            ds = pydicom.dcmread(str(path))
            edit(ds)
            ds.save_as(str(path))


@pytest.mark.parametrize("kind", ["dicom", "folder", "msd"])
def test_prepare_caches_a_source_of_one_case(ray_session, tmp_path, kind):
    """Item 2: caching needs no split; the one case lands in "val" and "train" is written empty."""
    if kind == "dicom":
        spec = f"dicom:{_series(tmp_path / 'src' / 'ct')}"
    else:
        nifti(tmp_path / "src" / "imagesTr" / "only.nii.gz")
        spec = f"folder:{tmp_path / 'src' / 'imagesTr'}"
        if kind == "msd":
            write_msd(tmp_path / "src", [{"image": "./imagesTr/only.nii.gz"}])
            spec = f"msd:{tmp_path / 'src'}"
    data = DataConfig(source=spec, recipe="none", splits=["train", "val"])
    out = prepare(PrepareConfig(data=data, out=str(tmp_path / "cache")), resolve_source(data), "none")
    manifest = read_manifest(out)
    assert manifest["splits"]["train"] == {"cases": 0, "listed": 0, "skipped": 0, "files": [], "bytes_written": 0}
    assert manifest["splits"]["val"]["cases"] == 1 and manifest["quarantined"] == []
    assert next(read_volumes(out, "val").epoch_rows(0, 1)())["image"].shape[0] == 1
    with pytest.raises(ValueError, match="split 'train' has no cases"):  # training keeps its own check
        read_volumes(out, "train")


def _fifo(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


@pytest.mark.timeout(60)
def test_fifos_devices_and_sockets_are_never_opened_by_any_source(tmp_path, layout):
    """Item 5: a FIFO blocks whoever opens it; every source skips or refuses special files unopened."""
    folder = _series(tmp_path / "dicom" / "ct")
    _fifo(tmp_path / "dicom" / "ct" / "fifo.dcm")
    _fifo(tmp_path / "dicom" / "ct" / "IM0001")  # DICOM files often have no extension
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "dicom" / "ct" / "sock.dcm"))
    try:
        src = resolve_source(DataConfig(source=f"dicom:{tmp_path / 'dicom'}", folds=2))
    finally:
        sock.close()
    reasons = {os.path.basename(p): r for p, r in src.missing}
    assert reasons == {"fifo.dcm": "not a regular file (a FIFO): never opened", "sock.dcm":
                       "not a regular file (a socket): never opened", "IM0001": "not a regular file (a FIFO): never opened"}
    assert [len(c.image) for c in src.cases] == [4]
    (folder / "slice_002.dcm").unlink()  # a slice that became a FIFO after the listing
    _fifo(folder / "slice_002.dcm")
    with pytest.raises(BadInput, match=r"not a regular file \(a FIFO\)") as e:
        load_case(src.cases[0], "none")
    assert e.value.path == str(folder / "slice_002.dcm")

    root, _ = layout
    _fifo(root / "imagesTr" / "fifo.nii.gz")
    for make in (_msd, _csv):  # a listed image that is a FIFO, and a device with the opt-in
        src = resolve_source(DataConfig(source=make(root, "./imagesTr/fifo.nii.gz"), folds=2))
        assert [(os.path.basename(p), r) for p, r in src.missing] == [("fifo.nii.gz", "not a regular file (a FIFO): never opened")]
        src = resolve_source(DataConfig(source=make(root, "/dev/zero"), folds=2, allow_outside_root=True))
        assert src.missing == [("/dev/zero", "not a regular file (a character device): never opened")]
    src = resolve_source(DataConfig(source=f"folder:{root / 'imagesTr'}", folds=2))  # a folder skips it
    assert sorted(c.case_id for c in src.cases) == ["good_0", "good_1"]

    (root / "dataset.json").unlink()  # the manifests themselves
    _fifo(root / "dataset.json")
    with pytest.raises(ValueError, match=f"{root / 'dataset.json'}: not a file"):
        resolve_source(DataConfig(source=f"msd:{root}"))
    with pytest.raises(ValueError, match=f"'{_fifo(tmp_path / 'cases.csv')}' is a FIFO, not a file or folder"):
        resolve_source(DataConfig(source=f"csv:{tmp_path / 'cases.csv'}"))
    cxr = Path(make_cxr_phantoms(tmp_path / "cxr", n=4, seed=0, size=32))
    (cxr / "train_val_list.txt").unlink()
    _fifo(cxr / "train_val_list.txt")
    with pytest.raises(ValueError, match="train_val_list.txt: not a file"):  # before: taken for an absent list
        resolve_source(DataConfig(source=f"cxr14:{cxr}"))


def test_a_symlinked_dcm_out_of_the_folder_is_never_opened(tmp_path):
    """Item 6: the DICOM listing checks where a symlink leads before reading the header."""
    _series(tmp_path / "dicom" / "ct")
    outside = _series(tmp_path / "secret" / "ct", uid="1.2.9.51", patient="P2") / "slice_000.dcm"
    (tmp_path / "dicom" / "ct" / "evil.dcm").symlink_to(outside)
    src, opened = opened_during(lambda: resolve_source(DataConfig(source=f"dicom:{tmp_path / 'dicom'}", folds=2)))
    assert [c.case_id for c in src.cases] == ["P1_3"]
    (path, reason), = src.missing
    assert path.endswith("evil.dcm") and reason.startswith(f"outside the dataset root ({tmp_path / 'dicom'})")
    assert not leaked(opened, outside), opened
    src = resolve_source(DataConfig(source=f"dicom:{tmp_path / 'dicom'}", folds=2, allow_outside_root=True))
    assert [c.case_id for c in src.cases] == ["P1_3", "P2_3"] and not src.missing


def _deflated(path, pixels: int, header_bomb: int = 0):
    """A Deflated Explicit VR Little Endian CT slice of 8 x 8 pixels whose deflate stream holds ``pixels``
    bytes of pixel data (an 8 x 8 slice needs 128), after a private element of ``header_bomb`` bytes."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.PatientID, ds.Modality = generate_uid(), "P9", "CT"
    ds.ImageOrientationPatient, ds.ImagePositionPatient, ds.PixelSpacing = [1, 0, 0, 0, 1, 0], [0, 0, 0], [1, 1]
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    raw = path.read_bytes()
    end = 144 + struct.unpack("<I", raw[140:144])[0]  # the file meta group, then the deflated dataset
    head = zlib.decompress(raw[end:], -zlib.MAX_WBITS)
    z = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [z.compress(struct.pack("<HH2sHI", 0x0009, 0x1001, b"OB", 0, header_bomb))] if header_bomb else []
    parts += [z.compress(head), z.compress(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixels))]
    zeros = b"\0" * 2**22
    for i in range(0, header_bomb + pixels, len(zeros)):
        parts.append(z.compress(zeros[: min(len(zeros), header_bomb + pixels - i)]))
    path.write_bytes(raw[:end] + b"".join(parts) + z.flush())
    return path


def test_a_deflated_dicom_bomb_is_refused_in_bounded_memory(tmp_path):
    """Item 4: a 2 MB Deflated file inflating to 512 MiB costs megabytes; so does a header that never ends."""
    pixels = _deflated(tmp_path / "d" / "pixels.dcm", pixels=512 * 2**20)
    header = _deflated(tmp_path / "d" / "header.dcm", pixels=128, header_bomb=64 * 2**20)
    assert pixels.stat().st_size < 4 * 2**20
    probe = (
        "import resource, sys\n"
        "from rayssl.config import DataConfig\n"
        "from rayssl.data.io import BadInput\n"
        "from rayssl.data.preprocess import load_case\n"
        "from rayssl.data.sources import resolve_source\n"
        "import pydicom.filereader, pydicom.dataset\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "src = resolve_source(DataConfig(source='dicom:' + sys.argv[1], folds=2))\n"
        "print([c.case_id for c in src.cases], [(p.rsplit('/', 1)[-1], r) for p, r in src.missing])\n"
        "try:\n    load_case(src.cases[0], 'none')\nexcept BadInput as e:\n    print(e.path.rsplit('/', 1)[-1], e)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "d")], capture_output=True, text=True, timeout=120)
    listed, refused, grown_mb = out.stdout.strip().splitlines()[-3:]
    assert listed == ("['P9'] [('header.dcm', 'Deflated data inflates past 16 MiB, without reaching its pixel data "
                      "(a header may take 16 MiB)')]"), out.stdout + out.stderr[-2000:]
    assert refused == ("pixels.dcm Deflated data inflates past 16 MiB, more than a header and the 128 pixel bytes it "
                       "declares may take (a header may take 16 MiB)")
    assert int(grown_mb) < 100, out.stdout  # before: the whole 512 MiB inflated while listing headers
    assert pixels.exists() and header.exists()


def test_a_good_deflated_series_reads(tmp_path):
    """The bounded inflation still reads a Deflated slice: its header at listing, its pixels at loading."""
    path = _deflated(tmp_path / "d" / "one.dcm", pixels=128)
    data = path.read_bytes()
    src = resolve_source(DataConfig(source=f"dicom:{tmp_path / 'd'}", folds=2))
    assert [c.case_id for c in src.cases] == ["P9"] and not src.missing
    volume, affine = read_series(src.cases[0].image)
    assert volume.shape == (1, 8, 8, 1) and not volume.any() and path.read_bytes() == data
    np.testing.assert_allclose(affine, np.diag([-1.0, -1.0, 1.0, 1.0]))  # LPS -> RAS, 1 mm


def _jpeg(syntax):
    def edit(ds):
        from pydicom.encaps import encapsulate

        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51 not a codestream"])
        ds["PixelData"].VR = "OB"
    return edit


GEOMETRY = {  # defect: (edit of every slice, or of slice_001.dcm only, reason)
    "no_orientation": (lambda ds: delattr(ds, "ImageOrientationPatient"), "slice_001.dcm",
                       "slice has no ImageOrientationPatient"),
    "no_position": (lambda ds: delattr(ds, "ImagePositionPatient"), "slice_001.dcm", "slice has no ImagePositionPatient"),
    "zero_spacing": (lambda ds: setattr(ds, "PixelSpacing", [0.0, 0.0]), None, r"PixelSpacing must be positive, got \[0.0, 0.0\]"),
    "nan_spacing": (lambda ds: setattr(ds, "PixelSpacing", ["NaN", "1.0"]), None, "PixelSpacing must be 2 finite numbers"),
    "one_spacing": (lambda ds: setattr(ds, "PixelSpacing", [1.0]), None, "PixelSpacing must be 2 finite numbers"),
    "collinear": (lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 1, 0, 0]), None,
                  "row and column directions are collinear"),
    "oblique_axes": (lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0.5, 0.866, 0]), None,
                     r"not perpendicular \(60.0 degrees apart\)"),
    "zero_direction": (lambda ds: setattr(ds, "ImageOrientationPatient", [0, 0, 0, 0, 1, 0]), None, "a zero direction"),
    "nan_slope": (lambda ds: setattr(ds, "RescaleSlope", "NaN"), "slice_001.dcm", "RescaleSlope / RescaleIntercept"),
    "rgb": (lambda ds: setattr(ds, "SamplesPerPixel", 3), "slice_001.dcm", "1 frame\\(s\\) of 3 sample\\(s\\) per pixel"),
    "huge_grid": (lambda ds: setattr(ds, "Rows", 65535) or setattr(ds, "Columns", 65535), "slice_001.dcm",
                  r"declares 65535 x 65535 pixels of 16 bits \(8192 MiB\), above the 256 MiB"),
    "jpeg_ls_no_decoder": (_jpeg("1.2.840.10008.1.2.4.80"), "slice_001.dcm",
                           r"cannot decode the pixel data \(JPEG-LS Lossless Image Compression\): "),
    "jpeg_2000_broken": (_jpeg("1.2.840.10008.1.2.4.90"), "slice_001.dcm",
                         r"cannot decode the pixel data \(JPEG 2000 Image Compression \(Lossless Only\)\): "),
}


def test_a_dicom_series_is_sized_from_its_headers_before_decoding(tmp_path, monkeypatch):
    """Item 4: the float32 volume a series needs is checked against the decoded-volume budget first."""
    from rayssl.data import io as rio

    folder = _series(tmp_path / "d")
    monkeypatch.setattr(rio, "MAX_DECODED_BYTES", 1000)
    with pytest.raises(BadInput, match=r"series of 4 slices of 10 x 12 needs 0.0 GiB as float32, above the 0 GiB budget") as e:
        read_series(sorted(str(p) for p in folder.glob("*.dcm")))
    assert e.value.path == str(folder)


@pytest.mark.parametrize("defect", sorted(GEOMETRY))
def test_bad_dicom_geometry_is_refused_with_a_reason_naming_the_file(tmp_path, defect):
    """Item 11: each slice's geometry and pixel encoding is checked, with the element and the file named."""
    import warnings

    edit, only, reason = GEOMETRY[defect]
    folder = _series(tmp_path / "d")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid values written on purpose
        _edit_slices(folder, edit, only)
    case = resolve_source(DataConfig(source=f"dicom:{folder}", folds=2)).cases[0]
    with pytest.raises(BadInput, match=reason) as e:
        load_case(case, "none")
    assert e.value.path == str(folder / (only or "slice_000.dcm")) or (only is None and e.value.path.startswith(str(folder)))

from collections import Counter

import pytest

from rayssl.config import DataConfig
from rayssl.data.sources import CXR14_CLASSES, Case, assign_splits, resolve_source

from conftest import write_msd


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _msd(root, n=6, test=2, modality=None):
    training = []
    for i in range(n):
        _touch(root / "imagesTr" / f"case_{i}.nii.gz")
        _touch(root / "labelsTr" / f"case_{i}.nii.gz")
        training.append({"image": f"./imagesTr/case_{i}.nii.gz", "label": f"./labelsTr/case_{i}.nii.gz"})
    tests = [f"./imagesTs/t_{i}.nii.gz" for i in range(test)]
    for t in tests:
        _touch(root / t)
    return write_msd(root, training, modality, labels={"0": "background", "1": "liver"}, name="X", numTraining=n,
                     test=tests)


def test_msd_listing(tmp_path):
    root = _msd(tmp_path / "ds", n=6, test=2)
    src = resolve_source(DataConfig(source=f"msd:{root}", folds=3))
    assert src.kind == "msd" and src.root == str(root) and src.recipe == "ct_btcv"
    assert src.labels == {0: "background", 1: "liver"} and src.modality == {0: "CT"} and src.channels == 1
    assert [c.case_id for c in src.cases] == [f"case_{i}" for i in range(6)] + ["t_0", "t_1"]
    c0 = src.cases[0]
    assert c0.image == [str(root / "imagesTr/case_0.nii.gz")] and c0.label == str(root / "labelsTr/case_0.nii.gz")
    assert c0.subject == "case_0" and c0.target is None
    splits = Counter(c.split for c in src.cases[:6])
    assert splits == {"train": 4, "val": 2}  # 6 subjects dealt into 3 folds, fold 0 -> val
    assert all(c.split == "test" and c.label is None for c in src.cases[6:])
    # the json file itself works too, and a bare folder is auto-detected
    assert len(resolve_source(DataConfig(source=f"msd:{root / 'dataset.json'}")).cases) == 8
    assert resolve_source(DataConfig(source=str(root))).kind == "msd"


def test_msd_missing_files_are_reported(tmp_path):
    root = _msd(tmp_path / "ds", n=4, test=1)
    (root / "labelsTr" / "case_1.nii.gz").unlink()
    (root / "imagesTs" / "t_0.nii.gz").unlink()
    src = resolve_source(DataConfig(source=f"msd:{root}"))
    assert [c.case_id for c in src.cases] == ["case_0", "case_2", "case_3"]
    assert sorted(src.missing) == sorted([(str(root / "labelsTr/case_1.nii.gz"), "file not found"),
                                          (str(root / "imagesTs/t_0.nii.gz"), "file not found")])  # fmt: skip


def test_msd_mri_modality_picks_brats_recipe(tmp_path):
    root = _msd(tmp_path / "ds", modality={"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"})
    src = resolve_source(DataConfig(source=f"msd:{root}"))
    assert src.recipe == "mri_brats" and src.channels == 4 and src.modality[2] == "t1gd"


def test_msd_bad_json(tmp_path):
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(ValueError, match="dataset.json: not valid JSON"):
        resolve_source(DataConfig(source=f"msd:{tmp_path}"))


def _cases(n_subjects, per_subject=1):
    return [Case(f"s{s}_{k}", [f"/x/s{s}_{k}.nii"], subject=f"s{s}", split="")
            for s in range(n_subjects) for k in range(per_subject)]  # fmt: skip


def test_kfold_by_subject_is_seeded():
    a, b, c = _cases(40, 3), _cases(40, 3), _cases(40, 3)
    assign_splits(a, folds=5, val_fold=0, test_fold=None, seed=1)
    assign_splits(b, folds=5, val_fold=0, test_fold=None, seed=1)
    assign_splits(c, folds=5, val_fold=0, test_fold=None, seed=2)
    assert [x.split for x in a] == [x.split for x in b]
    assert [x.split for x in a] != [x.split for x in c]
    assert Counter(x.split for x in a) == {"train": 96, "val": 24}  # 8 of 40 subjects, 3 cases each
    by_subject = {}
    for x in a:
        by_subject.setdefault(x.subject, set()).add(x.split)
    assert all(len(s) == 1 for s in by_subject.values())  # a subject never straddles splits
    d = _cases(40)
    assign_splits(d, folds=5, val_fold=1, test_fold=3, seed=0)
    assert Counter(x.split for x in d) == {"train": 24, "val": 8, "test": 8}


def test_explicit_splits_win():
    cases = _cases(10)
    cases[0].split, cases[1].split = "test", "val"
    assign_splits(cases, folds=2, val_fold=0, test_fold=None, seed=0)
    assert cases[0].split == "test" and cases[1].split == "val"
    assert Counter(c.split for c in cases[2:]) == {"train": 4, "val": 4}


def test_folder_source(tmp_path):
    for name in ("b.nii.gz", "a.nii", "._a.nii", "notes.txt"):
        _touch(tmp_path / "img" / name)
    _touch(tmp_path / "lab" / "a.nii")
    src = resolve_source(DataConfig(source=f"folder:{tmp_path / 'img'},{tmp_path / 'lab'}", folds=2))
    assert src.kind == "folder" and src.spatial_dims == 3
    assert [c.case_id for c in src.cases] == ["a"]  # macOS "._" files and non-NIfTI files are ignored
    assert src.cases[0].label == str(tmp_path / "lab" / "a.nii")
    assert src.missing == [(str(tmp_path / "lab" / "b.nii.gz"), "file not found")]
    # without labels, and auto-detected from the bare folder
    src = resolve_source(DataConfig(source=str(tmp_path / "img")))
    assert src.kind == "folder" and [c.case_id for c in src.cases] == ["a", "b"] and src.cases[0].label is None


def test_csv_source(tmp_path):
    _touch(tmp_path / "data" / "v1.nii.gz")
    _touch(tmp_path / "data" / "l1.nii.gz")
    _touch(tmp_path / "data" / "v2.nii.gz")
    absolute = _touch(tmp_path / "elsewhere" / "v3.nii.gz")
    (tmp_path / "list.csv").write_text(
        "image,label,split,subject\n"
        "data/v1.nii.gz,data/l1.nii.gz,test,p1\n"
        f"data/v2.nii.gz,,,p2\n"
        f"{absolute},,,p2\n"
        "data/gone.nii.gz,,,p3\n"
    )
    src = resolve_source(DataConfig(source=f"csv:{tmp_path / 'list.csv'}", folds=2))
    assert src.kind == "csv" and src.spatial_dims == 3
    by_id = {c.case_id: c for c in src.cases}
    assert by_id["v1"].image == [str(tmp_path / "data" / "v1.nii.gz")] and by_id["v1"].split == "test"
    assert by_id["v1"].label == str(tmp_path / "data" / "l1.nii.gz")
    assert by_id["v3"].image == [str(absolute)]
    assert by_id["v2"].subject == by_id["v3"].subject == "p2" and by_id["v2"].split == by_id["v3"].split
    assert src.missing == [(str(tmp_path / "data" / "gone.nii.gz"), "file not found")]
    assert resolve_source(DataConfig(source=str(tmp_path / "list.csv"))).kind == "csv"  # auto-detected


def test_csv_errors(tmp_path):
    (tmp_path / "bad.csv").write_text("path,label\nx.nii,\n")
    with pytest.raises(ValueError, match=r"bad.csv: CSV needs an 'image' column"):
        resolve_source(DataConfig(source=f"csv:{tmp_path / 'bad.csv'}"))
    (tmp_path / "split.csv").write_text("image,split\nx.nii,training\n")
    with pytest.raises(ValueError, match=r"split.csv: line 2: split must be train, val or test"):
        resolve_source(DataConfig(source=f"csv:{tmp_path / 'split.csv'}"))


def test_cxr14_source(tmp_path):
    entries = [
        ("00000001_000.png", "Cardiomegaly|Effusion", 1),
        ("00000001_001.png", "No Finding", 1),
        ("00000002_000.png", "Hernia", 2),
        ("00000003_000.png", "Mass|Broken Leg", 3),
        ("00000004_000.png", "Nodule", 4),
    ]
    lines = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
             "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"]  # fmt: skip
    for name, found, pid in entries:
        lines.append(f"{name},{found},0,{pid},50,M,PA,2500,2048,0.143,0.143,")
        if pid != 4:
            _touch(tmp_path / "images" / name)
    (tmp_path / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "train_val_list.txt").write_text("00000001_000.png\n00000001_001.png\n00000003_000.png\n")
    (tmp_path / "test_list.txt").write_text("00000002_000.png\n00000004_000.png\n")
    src = resolve_source(DataConfig(source=str(tmp_path), folds=2))  # auto-detected
    assert src.kind == "cxr14" and src.recipe == "cxr" and src.class_names == CXR14_CLASSES
    assert CXR14_CLASSES[:3] == ["Atelectasis", "Cardiomegaly", "Effusion"] and CXR14_CLASSES[-1] == "Hernia"
    by_id = {c.case_id: c for c in src.cases}
    assert sorted(by_id) == ["00000001_000", "00000001_001", "00000002_000"]
    assert by_id["00000001_000"].target == [0, 1, 1] + [0] * 11
    assert by_id["00000001_001"].target == [0.0] * 14  # "No Finding"
    assert by_id["00000002_000"].target[13] == 1 and by_id["00000002_000"].split == "test"
    assert by_id["00000001_000"].subject == "1" and by_id["00000001_000"].split == by_id["00000001_001"].split
    assert by_id["00000001_000"].split in ("train", "val")
    assert (str(tmp_path / "images" / "00000003_000.png"), "unknown finding Broken Leg") in src.missing
    assert (str(tmp_path / "images" / "00000004_000.png"), "file not found") in src.missing


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("nifti:/data", "unknown source type 'nifti'"),
        ("synthetic:pet", "unknown synthetic kind 'pet'"),
        ("synthetic:ct:many", "N must be an integer"),
        ("msd:/no/such/folder", "path '/no/such/folder' does not exist"),
        ("/no/such/folder", "path does not exist"),
    ],
)
def test_bad_specs(spec, why):
    with pytest.raises(ValueError, match=why) as e:
        resolve_source(DataConfig(source=spec))
    assert repr(spec) in str(e.value) and "accepted forms" in str(e.value) and "cxr14:PATH" in str(e.value)


def test_synthetic_spec(tmp_path):
    cfg = DataConfig(source="synthetic:cxr:6", synthetic_dir=str(tmp_path), seed=3, folds=2)
    src = resolve_source(cfg)
    assert src.kind == "cxr14" and src.root == str(tmp_path / "cxr-n6-s3") and len(src.cases) == 6
    assert {c.split for c in src.cases} <= {"train", "val", "test"} and "test" in {c.split for c in src.cases}
    again = resolve_source(cfg)
    assert [(c.case_id, c.split, c.target) for c in again.cases] == [(c.case_id, c.split, c.target) for c in src.cases]


def test_synthetic_spec_seed_generates_another_dataset(tmp_path):
    own = resolve_source(DataConfig(source="synthetic:cxr:4", synthetic_dir=str(tmp_path), seed=3, folds=2))
    other = resolve_source(DataConfig(source="synthetic:cxr:4:11", synthetic_dir=str(tmp_path), seed=3, folds=2))
    assert own.root == str(tmp_path / "cxr-n4-s3") and other.root == str(tmp_path / "cxr-n4-s11")
    assert {open(c.image[0], "rb").read()
            for c in own.cases}.isdisjoint(open(c.image[0], "rb").read() for c in other.cases)
    with pytest.raises(ValueError, match="SEED must be an integer"):
        resolve_source(DataConfig(source="synthetic:ct:4:x", synthetic_dir=str(tmp_path)))


def test_cxr14_kaggle_layout(tmp_path):
    lines = ["Image Index,Finding Labels,Follow-up #,Patient ID", "a.png,Mass,0,1", "b.png,No Finding,0,2"]
    (tmp_path / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    _touch(tmp_path / "images_001" / "images" / "a.png")
    _touch(tmp_path / "images_002" / "images" / "b.png")
    src = resolve_source(DataConfig(source=f"cxr14:{tmp_path}", folds=2))
    assert {c.case_id: c.image[0] for c in src.cases} == {
        "a": str(tmp_path / "images_001" / "images" / "a.png"),
        "b": str(tmp_path / "images_002" / "images" / "b.png"),
    }
    assert {c.split for c in src.cases} == {"train", "val"} and not src.missing  # no list files: k-fold


def test_train_cases_keeps_a_seeded_subset_of_training_cases_only(tmp_path):
    root = _msd(tmp_path / "ds", n=12, test=2)
    full = resolve_source(DataConfig(source=f"msd:{root}", folds=4))
    train = {c.case_id for c in full.split("train")}
    subsets = []
    for subset_seed in (0, 0, 1):
        src = resolve_source(DataConfig(source=f"msd:{root}", folds=4, train_cases=3, subset_seed=subset_seed))
        kept = {c.case_id for c in src.split("train")}
        assert len(kept) == 3 and kept <= train
        # validation and test are untouched: every run of a label-efficiency study scores the same cases
        assert [c.case_id for c in src.cases if c.split != "train"] == [c.case_id for c in full.cases if c.split != "train"]
        subsets.append(kept)
    assert subsets[0] == subsets[1] and subsets[0] != subsets[2]
    # growing the subset keeps the smaller one (the same permutation, cut longer)
    four = {c.case_id for c in resolve_source(DataConfig(source=f"msd:{root}", folds=4, train_cases=4)).split("train")}
    assert subsets[0] < four
    with pytest.raises(ValueError, match="data.train_cases=10 but source .* has only 9 training cases"):
        resolve_source(DataConfig(source=f"msd:{root}", folds=4, train_cases=10))

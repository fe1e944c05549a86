"""Pools of sources for pre-training: the list and pool-file forms, names, limits, recipes per case, the common
space, sampling weights, no test case in a pool, single sources elsewhere; one end-to-end run on Ray."""

import dataclasses
import json
import logging
import re
import shutil
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from rayssl.config import ConfigError, DataConfig, FinetuneConfig, PrepareConfig, PretrainConfig, load_config
from rayssl.config.loader import parse_override
from rayssl.data.crops import case_crops
from rayssl.data.pool_shares import case_repeats, crop_shares, epoch_items
from rayssl.data.sources import Case, PoolEntry, Source, resolve_pool, resolve_source
from rayssl.data.sources.pool_file import read_pool_file

from conftest import read_metrics, write_msd, write_nifti

LIST = "[msd:/data/Task03_Liver,folder:/archive/ct,dicom:/pacs/export]"


def msd(root, n: int, seed: int = 0, shape=(12, 10, 8)) -> Path:
    """An MSD CT folder of ``n`` small labelled volumes of random HU (each file's bytes differ by ``seed``)."""
    rng = np.random.default_rng(seed)
    training = []
    for i in range(n):
        write_nifti(Path(root) / "imagesTr" / f"case_{i}.nii.gz", rng.uniform(-1000, 1000, shape).astype(np.float32))
        write_nifti(Path(root) / "labelsTr" / f"case_{i}.nii.gz", (rng.random(shape) > 0.5).astype(np.uint8))
        training.append({"image": f"./imagesTr/case_{i}.nii.gz", "label": f"./labelsTr/case_{i}.nii.gz"})
    return write_msd(root, training)


def pool_data(*source, **fields) -> DataConfig:
    return DataConfig(source=list(source), **fields)


def names(src: Source, split: str = "train") -> list[str]:
    return [c.case_id for c in src.split(split)]


# --------------------------------------------------------------------------- the forms


def test_a_list_override_is_a_pool_and_one_spec_stays_one_source():
    assert parse_override(f"data.source={LIST}") == {
        "data": {"source": ["msd:/data/Task03_Liver", "folder:/archive/ct", "dicom:/pacs/export"]}}
    # a bracketed value YAML cannot read is split at its commas, every item a string
    parsed = parse_override("data.source=[folder:/a/{x},msd:/b #1]")
    assert parsed == {"data": {"source": ["folder:/a/{x}", "msd:/b #1"]}}
    cfg = load_config(PretrainConfig, "pretrain", "tiny", overrides=[f"data.source={LIST}"])
    assert cfg.data.is_pool and cfg.data.source[2] == "dicom:/pacs/export"
    one = load_config(PretrainConfig, "pretrain", "tiny", overrides=["data.source=msd:/data/Task03_Liver"])
    assert one.data.source == "msd:/data/Task03_Liver" and not one.data.is_pool
    assert DataConfig(source="pool:/p/pool.yaml").is_pool and DataConfig(source="/p/pool.yml").is_pool
    assert not DataConfig(source="msd:/p/dataset.yaml").is_pool


def test_a_yaml_config_lists_the_sources(tmp_path):
    (tmp_path / "run.yaml").write_text("data:\n  source:\n    - synthetic:ct:8\n    - folder:/archive/ct\n")
    cfg = load_config(PretrainConfig, "pretrain", "tiny", file=tmp_path / "run.yaml")
    assert cfg.data.source == ["synthetic:ct:8", "folder:/archive/ct"]


@pytest.mark.parametrize("source, match", [
    ([], r"data.source=\[\]: a pool lists at least one SPEC"),
    (["msd:/a", " "], r"data.source\[1\] is empty"),
    (["msd:/a", "pool:/b.yaml"], r"data.source\[1\]='pool:/b.yaml' is a pool file"),
])
def test_a_malformed_list_is_a_config_error(source, match):
    with pytest.raises(ValueError, match=match):
        DataConfig(source=source)


def test_a_pool_file_resolves_relative_paths_against_its_folder(tmp_path):
    pools = tmp_path / "pools"
    pools.mkdir()
    (pools / "pool.yaml").write_text(
        "sources:\n"
        "  - source: msd:../liver\n    recipe: ct_genesis\n    weight: 2\n    limit: 3\n    name: liver\n"
        "  - source: folder:ct/images,ct/labels\n    weight: 0.5\n"
        "  - source: dicom:/pacs/export\n    weight: 1e-1\n"
        "  - source: synthetic:ct:4\n    weight: 1\n"
        "  - source: s3://bucket/archive\n    weight: 1\n")
    entries = read_pool_file(str(pools / "pool.yaml"))
    assert entries[0] == PoolEntry(f"msd:{tmp_path}/liver", "ct_genesis", 2.0, 3, "liver")
    assert entries[1].source == f"folder:{pools}/ct/images,{pools}/ct/labels" and entries[1].name is None
    assert [e.source for e in entries[2:]] == ["dicom:/pacs/export", "synthetic:ct:4", "s3://bucket/archive"]
    assert entries[2].weight == pytest.approx(0.1)  # YAML 1.1 reads 1e-1 as text: taken as the number


@pytest.mark.parametrize("body, match", [
    ("sources:\n  - source: msd:/a\n    wieght: 2\n", r"sources\[0\]: unknown key 'wieght'; expected source, recipe"),
    ("pool:\n  - msd:/a\n", "unknown key 'pool' at the top level"),
    ("sources:\n  - recipe: ct_btcv\n", r"sources\[0\]: 'source' must be a SPEC"),
    ("sources:\n  - source: msd:/a\n    weight: 0\n", r"sources\[0\]: weight must be a number > 0, got 0"),
    ("sources:\n  - source: msd:/a\n    weight: -1.5\n", "weight must be a number > 0, got -1.5"),
    ("sources:\n  - source: msd:/a\n    weight: lots\n", "weight must be a number > 0, got 'lots'"),
    ("sources:\n  - source: msd:/a\n    weight: true\n", "weight must be a number > 0, got True"),
    ("sources:\n  - source: msd:/a\n    limit: 0\n", "limit must be an integer >= 1, got 0"),
    ("sources:\n  - source: msd:/a\n    recipe: ct_fancy\n", "recipe 'ct_fancy' is not one of"),
    ("sources:\n  - source: msd:/a\n    name: a.b\n", "name 'a.b' must be letters, digits"),
    ("sources:\n  - source: msd:/a\n    weight: 1\n  - msd:/b\n", r"sources\[1\]: no weight, but other entries have one"),
    ("sources: []\n", "expected 'sources:' with a list of entries"),
    ("sources: [a\n", "not valid YAML"),
])
def test_a_pool_file_breaking_the_schema_names_the_file_and_key(tmp_path, body, match):
    path = tmp_path / "pool.yaml"
    path.write_text(body)
    with pytest.raises(ValueError, match=match) as err:
        resolve_pool(DataConfig(source=f"pool:{path}"))
    assert str(path) in str(err.value)


def test_a_missing_pool_file_is_named(tmp_path):
    with pytest.raises(ValueError, match=f"pool file {tmp_path}/none.yaml: cannot be read"):
        resolve_pool(DataConfig(source=str(tmp_path / "none.yaml")))  # a bare .yaml path is a pool file


# --------------------------------------------------------------------------- names, limits, recipes


def test_case_ids_and_subjects_are_namespaced_and_names_unique(tmp_path):
    a, b = msd(tmp_path / "x" / "liver", 5), msd(tmp_path / "y" / "liver", 5, seed=1)
    src = resolve_pool(pool_data(f"msd:{a}", f"msd:{b}", f"msd:{a}/dataset.json", folds=5, test_fold=1))
    assert [e.name for e in src.pool] == ["liver", "liver-2", "liver-3"]
    assert src.kind == "pool" and len(src.split("train")) == 3 * 3  # 5 cases: 3 train, 1 val, 1 test each
    assert len(src.split("val")) == 3 and not src.split("test")
    assert {c.case_id.partition(".")[0] for c in src.cases} == {"liver", "liver-2", "liver-3"}
    assert all(c.subject.startswith(c.case_id.partition(".")[0] + ".") for c in src.cases)
    assert len({c.case_id for c in src.cases}) == len(src.cases)
    assert [n.partition(".")[0] for n in names(src)[:3]] == ["liver", "liver-2", "liver-3"]  # sources interleaved
    path = tmp_path / "pool.yaml"
    path.write_text(f"sources:\n  - source: msd:{a}\n    name: ct\n  - source: msd:{b}\n    name: ct\n")
    with pytest.raises(ValueError, match=f"pool {path}: two entries are named 'ct'"):
        resolve_pool(DataConfig(source=f"pool:{path}"))


def test_limit_keeps_a_seeded_draw_of_the_training_cases(tmp_path):
    a = msd(tmp_path / "a", 10)
    path = tmp_path / "pool.yaml"
    path.write_text(f"sources:\n  - source: msd:{a}\n    limit: 3\n    name: a\n"
                    f"  - source: msd:{a}\n    limit: 50\n    name: all\n")
    full = resolve_source(DataConfig(source=f"msd:{a}"))
    picks = [names(resolve_pool(DataConfig(source=str(path), seed=s))) for s in (0, 0, 1)]
    for pick, seed in zip(picks, (0, 0, 1)):
        assert len([n for n in pick if n.startswith("a.")]) == 3  # of the source's training cases
        alone = resolve_source(DataConfig(source=f"msd:{a}", seed=seed))
        assert len([n for n in pick if n.startswith("all.")]) == len(alone.split("train"))  # a limit above: all
    assert picks[0] == picks[1]
    train = {f"a.{c.case_id}" for c in full.split("train")}
    assert {n for n in picks[0] if n.startswith("a.")} <= train


def test_each_case_carries_its_recipe_entry_over_data_over_source(tmp_path):
    a, b = msd(tmp_path / "a", 5), msd(tmp_path / "b", 5, seed=1)
    path = tmp_path / "pool.yaml"
    path.write_text(f"sources:\n  - source: msd:{a}\n    recipe: ct_genesis\n  - source: msd:{b}\n")
    by_source = lambda src: {c.case_id.partition(".")[0]: c.recipe for c in src.cases}  # noqa: E731
    src = resolve_pool(DataConfig(source=str(path), spacing=[2.0, 2.0, 2.0]))
    assert by_source(src) == {"a": "ct_genesis", "b": "ct_btcv"}
    src = resolve_pool(DataConfig(source=str(path), recipe="ct_genesis"))
    assert by_source(src) == {"a": "ct_genesis", "b": "ct_genesis"} and src.recipe == "ct_genesis"
    assert [e.recipe for e in src.pool] == ["ct_genesis", "ct_genesis"]
    # load_case preprocesses a case with its own recipe, else the run's
    from rayssl.data.preprocess import load_case

    case = resolve_source(DataConfig(source=f"msd:{a}")).cases[0]
    raw = load_case(case, "none")["image"]
    assert raw.min() < -100  # HU
    windowed = load_case(dataclasses.replace(case, recipe="ct_genesis"), "none")["image"]
    assert 0.0 <= windowed.min() and windowed.max() <= 1.0


# --------------------------------------------------------------------------- the common space


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("synthetic"))


def test_a_source_with_other_channels_is_named_before_ray(synthetic_dir):
    with pytest.raises(ValueError, match=r"source mri-1 \(synthetic:mri:1\) has 4 channels, the pool 1 \(its first "
                                         r"source, ct-2\)"):
        resolve_pool(pool_data("synthetic:ct:2", "synthetic:mri:1", synthetic_dir=synthetic_dir))


def test_other_dims_intensities_or_spacings_are_named(tmp_path, synthetic_dir):
    a = msd(tmp_path / "liver", 5)
    folder = tmp_path / "ct"
    shutil.copytree(msd(tmp_path / "other", 5, seed=3) / "imagesTr", folder)
    with pytest.raises(ValueError, match=rf"source ct \(folder:{re.escape(str(folder))}\) is preprocessed with recipe "
                                         r"'none' \(intensities: raw values\), the pool with 'ct_btcv' \(\[0, 1\]\)"):
        resolve_pool(pool_data(f"msd:{a}", f"folder:{folder}"))
    path = tmp_path / "pool.yaml"
    path.write_text(f"sources:\n  - msd:{a}\n  - source: folder:{folder}\n    recipe: ct_genesis\n")
    with pytest.raises(ValueError, match=r"source ct .*: recipe 'ct_genesis' resamples to the native spacing, recipe "
                                         r"'ct_btcv' of liver to 1.5 x 1.5 x 2 mm; set data.spacing"):
        resolve_pool(DataConfig(source=str(path)))
    assert resolve_pool(DataConfig(source=str(path), spacing=[2.0, 2.0, 2.0])).channels == 1  # one spacing: fine
    with pytest.raises(ValueError, match=r"source cxr-2 \(synthetic:cxr:2\) holds 2D images, the pool 3D"):
        resolve_pool(pool_data(f"msd:{a}", "synthetic:cxr:2", synthetic_dir=synthetic_dir))


# --------------------------------------------------------------------------- weights


def weighted_pool(sizes: dict[str, int], weights: dict[str, float] | None) -> tuple[Source, list[Case]]:
    """A pool source of ``sizes[name]`` training cases per entry (no files: what the shares read)."""
    cases = [Case(f"{name}.c{i}", [f"/{name}/{i}.nii.gz"]) for name, n in sizes.items() for i in range(n)]
    pool = [PoolEntry(f"msd:/{name}", "ct_btcv", (weights or {}).get(name), None, name) for name in sizes]
    return Source("pool", "pool.yaml", cases, 3, 1, "ct_btcv", pool=pool), cases


def by_entry(cases: list[Case], values) -> dict[str, list]:
    out: dict[str, list] = {}
    for c, v in zip(cases, values):
        out.setdefault(c.case_id.partition(".")[0], []).append(v)
    return out


def test_without_weights_each_case_once_and_shares_follow_the_cases():
    src, cases = weighted_pool({"liver": 6, "ct": 2, "pacs": 2}, None)
    assert case_repeats(src, cases, 0) == [1] * 10 and epoch_items(src, cases, 0) is None
    assert crop_shares(src, cases, 0) == {"liver": 0.6, "ct": 0.2, "pacs": 0.2}


def test_weights_repeat_cases_to_the_hand_computed_counts():
    # k = max(n / w) = max(6/1, 2/1, 3/2) = 6: liver 6 volumes (1 each), ct 6 (3 each), pacs 2 * 6 = 12 (4 each)
    src, cases = weighted_pool({"liver": 6, "ct": 2, "pacs": 3}, {"liver": 1, "ct": 1, "pacs": 2})
    assert by_entry(cases, case_repeats(src, cases, 0)) == {"liver": [1] * 6, "ct": [3, 3], "pacs": [4, 4, 4]}
    assert crop_shares(src, cases, 0) == {"liver": 0.25, "ct": 0.25, "pacs": 0.5}
    items = epoch_items(src, cases, 0)
    assert len(items) == len(set(items)) == 24  # (case, repeat) pairs, each once
    repeats_listed = [sorted(r for i, r in items if i == k) for k in range(len(cases))]
    assert by_entry(cases, repeats_listed)["pacs"] == [[0, 1, 2, 3]] * 3
    first_half = by_entry([cases[i] for i, _ in items[:12]], [1] * 12)
    assert {k: len(v) for k, v in first_half.items()} == {"liver": 3, "ct": 3, "pacs": 6}  # spread over the epoch
    # rounding: k = max(4/1, 3/1, 3/0.7) = 4.29; liver round(4.29) = 4 volumes (1 each), ct 4 (one of its 3 cases
    # twice, drawn with data.seed), pacs round(0.7 * 4.29) = 3 (1 each): shares 4/11, 4/11, 3/11 for weights
    # 1/2.7, 1/2.7, 0.7/2.7 (37%, 37%, 26%)
    src, cases = weighted_pool({"liver": 4, "ct": 3, "pacs": 3}, {"liver": 1, "ct": 1, "pacs": 0.7})
    repeats = by_entry(cases, case_repeats(src, cases, 0))
    assert repeats["liver"] == [1] * 4 and sorted(repeats["ct"]) == [1, 1, 2] and repeats["pacs"] == [1, 1, 1]
    assert case_repeats(src, cases, 0) == case_repeats(src, cases, 0)
    assert crop_shares(src, cases, 0) == pytest.approx({"liver": 4 / 11, "ct": 4 / 11, "pacs": 3 / 11})


def test_kept_volumes_stream_the_repeats_equally_to_every_worker(monkeypatch):
    import rayssl.data.kept as kept

    monkeypatch.setattr(kept.ray, "get", lambda x: x)  # the "refs" are the rows themselves
    src, cases = weighted_pool({"a": 2, "b": 1}, {"a": 1, "b": 1})  # b's one case twice: 4 volumes an epoch
    items = epoch_items(src, cases, 0)
    volumes = tuple({"case_id": c.case_id, "image": np.zeros((1, 4, 4, 4), np.float32)} for c in cases)
    kv = kept.KeptVolumes(volumes, (1, 1, 1), items)
    assert kv.cases() == 4
    streams = [[(r["case_id"], r.get("repeat", 0)) for r in kv.epoch_rows(rank, 2)()] for rank in (0, 1)]
    assert len(streams[0]) == len(streams[1]) == 2
    assert sorted(streams[0] + streams[1]) == [("a.c0", 0), ("a.c1", 0), ("b.c0", 0), ("b.c0", 1)]
    unusable = kept.KeptVolumes(volumes, (1, 1, 0), items)  # b's case quarantined: its repeats go with it
    assert unusable.cases() == 2
    # a repeat cuts other crops than the first pass, the same ones every run
    data = DataConfig(roi=[2, 2, 2], patches_per_volume=2)
    vol = {"case_id": "b.c0", "image": np.random.default_rng(0).random((1, 8, 8, 8), np.float32)}
    origins = lambda v: [tuple(p["origin"]) for p in case_crops(v, data, 0)]  # noqa: E731
    again = {**vol, "repeat": 1}
    assert origins(vol) != origins(again) and origins(again) == origins(dict(again))


def test_the_plan_logs_the_shares_and_counts_the_repeated_volumes(tmp_path, caplog):
    from rayssl.pretrain.driver import plan_pretrain

    a, b = msd(tmp_path / "liver", 10), msd(tmp_path / "ct", 5, seed=1)
    path = tmp_path / "pool.yaml"
    path.write_text(f"sources:\n  - source: msd:{a}\n    weight: 1\n  - source: msd:{b}\n    weight: 1\n")
    common = ["data.roi=[8,8,8]", "data.spacing=[2.0,2.0,2.0]", "data.folds=5", "data.test_fold=1",
              f"run.storage_path={tmp_path}"]
    cfg = load_config(PretrainConfig, "pretrain", "tiny", overrides=[f"data.source=pool:{path}", *common])
    with caplog.at_level(logging.INFO, logger="rayssl.pretrain.driver"):
        plan = plan_pretrain(cfg)
    assert plan.num_cases == 12  # liver 6 training cases once, ct's 3 twice each
    assert "pool: 2 sources, 9 training cases; crop shares liver 50%, ct 50% (weights: each case streamed 1-2x an " \
           "epoch, 12 volumes an epoch)" in caplog.text
    cfg = load_config(PretrainConfig, "pretrain", "tiny", overrides=[f"data.source=pool:{path}", *common,
                                                                     "data.keep_volumes=false"])
    with pytest.raises(ValueError, match="set data.keep_volumes=auto or drop the weights"):
        plan_pretrain(cfg)


# --------------------------------------------------------------------------- no test case in a pool


@pytest.mark.parametrize("val_fold", [0, "all"])
def test_no_test_case_of_the_downstream_source_enters_the_pool(tmp_path, val_fold, caplog):
    down = msd(tmp_path / "task", 10)
    meta = (down / "dataset.json").read_text().replace('"training"', '"test": ["./imagesTs/t0.nii.gz"], "training"')
    (down / "dataset.json").write_text(meta)
    write_nifti(down / "imagesTs" / "t0.nii.gz", np.random.default_rng(9).uniform(-1000, 1000, (12, 10, 8)))
    archive = tmp_path / "archive"  # an unlabelled folder that holds a copy of a downstream test image
    shutil.copytree(msd(tmp_path / "other", 4, seed=5) / "imagesTr", archive)
    split = dict(folds=5, val_fold=val_fold, test_fold=1, recipe="ct_btcv")
    held_out = resolve_source(DataConfig(source=f"msd:{down}", folds=5, val_fold=0, test_fold=1))
    test_images = {c.image[0] for c in held_out.split("test")}
    assert len(test_images) == 3  # fold 1 (2 cases) and the source's own test list
    copy = archive / "case_1.nii.gz"  # a training case of the archive under its own split
    shutil.copy(sorted(test_images)[0], copy)
    with caplog.at_level(logging.WARNING, logger="rayssl.data.sources.pool"):
        pool = resolve_pool(pool_data(f"msd:{down}", f"folder:{archive}", **split))
    assert "source archive" in caplog.text and "1 training case(s) left out, copies of another source's" in caplog.text
    assert not {p for c in pool.cases for p in c.image} & test_images and not pool.split("test")
    training = {c.image[0] for c in pool.split("train")}
    assert not training & test_images and str(copy) not in training
    pooled = {c.image[0] for c in pool.split("train") if c.case_id.startswith("task.")}
    if val_fold == 0:  # the training split a fine-tuning run on the task uses, nothing else
        assert pooled == {c.image[0] for c in held_out.split("train")}
    else:  # cross-validation: every case outside test_fold and the test list
        assert pooled == {c.image[0] for c in held_out.cases if c.split != "test"} and len(pooled) == 8
    # the archive: its own split under the same folds, less the copy of the task's test case
    own = resolve_source(DataConfig(source=f"folder:{archive}", folds=5, val_fold=0, test_fold=1))
    kept = {c.image[0] for c in own.cases if c.split == "train" or (val_fold == "all" and c.split == "val")}
    assert str(copy) in kept and training - pooled == kept - {str(copy)}


# --------------------------------------------------------------------------- one source elsewhere


def test_fine_tuning_and_resolve_source_refuse_a_pool_and_prepare_takes_one(tmp_path):
    for source in (LIST, "pool:/data/pool.yaml"):
        with pytest.raises(ConfigError, match=r"data.source=.* is a pool of sources, and pools are for "
                                               r"pre-training \(jobs/pretrain.py\)"):
            load_config(FinetuneConfig, "finetune", overrides=[f"data.source={source}"])
        assert load_config(PrepareConfig, "prepare", overrides=[f"data.source={source}"]).data.is_pool
    with pytest.raises(ValueError, match="pools are for pre-training"):
        resolve_source(DataConfig(source=["synthetic:ct:8"]))
    with pytest.raises(ValueError, match="data.train_cases=2 draws the labelled cases of one source"):
        DataConfig(source=["synthetic:ct:8"], train_cases=2)
    with pytest.raises(ValueError, match="a pool .* is read from its sources"):
        DataConfig(source="pool:p.yaml", cache_dir=str(tmp_path))


def test_a_sweeps_pool_that_lists_the_task_takes_its_folds():
    from rayssl.config import SweepConfig
    from rayssl.tune.space import trial_configs

    cfg = load_config(SweepConfig, "tune", "tiny", overrides=[
        "finetune.data.folds=5", "finetune.data.test_fold=2", "pretrain.data.source=[synthetic:ct:8,synthetic:ct:8:7]"])
    pre, ft = trial_configs(cfg, {})
    assert pre.data.source == ["synthetic:ct:8", "synthetic:ct:8:7"] and ft.data.source == "synthetic:ct:8"
    assert (pre.data.folds, pre.data.val_fold, pre.data.test_fold) == (5, 0, 2)


def test_the_pool_ct_preset_loads_and_its_pool_resolves(synthetic_dir):
    cfg = load_config(PretrainConfig, "pretrain", "pool_ct", overrides=[f"data.synthetic_dir={synthetic_dir}"])
    assert cfg.data.source == ["synthetic:ct:8", "synthetic:ct:8:7", "synthetic:ct:6:11"]
    assert cfg.model.method == "mae" and cfg.model.size == "tiny" and cfg.data.recipe == "ct_btcv"
    src = resolve_pool(cfg.data)
    assert [e.name for e in src.pool] == ["ct-8", "ct-8-7", "ct-6-11"] and len(src.split("train")) == 10
    assert 10 * cfg.data.patches_per_volume // cfg.batch_size * cfg.epochs == 480  # tiny's budget in steps


# --------------------------------------------------------------------------- end to end (Ray)


def test_pool_end_to_end_msd_folder_and_dicom_pretrain(ray_session, tmp_path):
    """A pool file of an MSD folder, a folder of NIfTI and a DICOM export, generated here, pre-trains with the tiny
    MAE preset for a few steps and exports its encoder."""
    from rayssl.data.synthetic import make_ct_phantoms
    from rayssl.pretrain.driver import pretrain

    from test_dicom import write_series

    shape, spacing = (64, 64, 32), (2.4, 2.4, 3.0)  # larger than the 32^3 ROI at 3 mm: 4 crops each
    make_ct_phantoms(tmp_path / "data" / "liver", n=4, seed=0, shape=shape, spacing=spacing)
    shutil.copytree(make_ct_phantoms(tmp_path / "gen", n=4, seed=1, shape=shape, spacing=spacing) / "imagesTr",
                    tmp_path / "data" / "archive")
    phantoms = make_ct_phantoms(tmp_path / "gen2", n=4, seed=2, shape=shape, spacing=spacing)
    for i, path in enumerate(sorted((phantoms / "imagesTr").glob("*.nii.gz"))):
        img = nib.load(str(path))
        write_series(tmp_path / "data" / "pacs" / f"p{i}", np.asarray(img.dataobj, np.float32), img.affine,
                     f"1.2.9.{i}", patient=f"P{i}")
    (tmp_path / "data" / "pool.yaml").write_text(
        "sources:\n"
        "  - source: msd:liver\n    weight: 2\n"
        "  - source: folder:archive\n    weight: 1\n"
        "  - source: dicom:pacs\n    weight: 1\n    name: pacs\n")
    cfg = load_config(PretrainConfig, "pretrain", "tiny", overrides=[
        f"data.source=pool:{tmp_path / 'data' / 'pool.yaml'}", "data.folds=4", "data.val_fold=0", "data.test_fold=null",
        "data.patches_per_volume=4", "batch_size=4", "max_steps=3", "scale.cpus_per_worker=0.5",
        f"run.storage_path={tmp_path / 'runs'}", "run.name=pool", "run.log_every=1", "run.preview_every=0"])
    run_dir = Path(pretrain(cfg))  # 9 training cases, 12 volumes an epoch (the liver's twice): 12 steps an epoch
    result = json.loads((run_dir / "result.json").read_text())
    assert result["steps"] == 3 and 0 < result["final_loss"] < 10
    losses = [r["loss"] for r in read_metrics(run_dir)]
    assert len(losses) == 3 and all(0 < v < 10 for v in losses)
    assert result["weights"].endswith("export/encoder.safetensors")
    assert (run_dir / "export" / "encoder.safetensors").is_file() and (run_dir / "export" / "encoder.json").is_file()
    from rayssl.models.weights_file import load_export

    state, meta = load_export(result["weights"])
    assert meta["method"] == "mae" and meta["in_channels"] == 1 and state


def test_a_pool_is_prepared_resumably_with_its_quarantine_by_source_and_streamed_past_the_budget(
        ray_session, tmp_path, monkeypatch, caplog):
    """prepare over a pool (MSD + folder, weights 2:1, a corrupt file, a listed file missing): one file per usable
    case, the quarantine kept by source, the weights' repeats in the manifest; a re-run recomputes nothing; a run whose volumes exceed
    its kept budget (0 here) streams from that cache and trains."""
    from rayssl.data.cache import read_manifest, read_volumes
    from rayssl.data.pipeline import default_out, prepare, resolve_recipe
    from rayssl.data.synthetic import make_ct_phantoms
    from rayssl.pretrain.driver import pretrain

    monkeypatch.chdir(tmp_path)  # prepare's default_out, ./runs/data/..., is the run's below (run.storage_path=./runs)
    caplog.set_level("INFO", logger="rayssl")
    shape, spacing = (64, 64, 32), (2.4, 2.4, 3.0)
    make_ct_phantoms(tmp_path / "liver", n=4, seed=0, shape=shape, spacing=spacing)
    shutil.copytree(make_ct_phantoms(tmp_path / "gen", n=3, seed=1, shape=shape, spacing=spacing) / "imagesTr",
                    tmp_path / "archive")
    (tmp_path / "archive" / "broken.nii.gz").write_bytes(b"not a NIfTI file")
    meta = json.loads((tmp_path / "liver" / "dataset.json").read_text())
    meta["training"].append({"image": "./imagesTr/gone.nii.gz", "label": meta["training"][0]["label"]})
    (tmp_path / "liver" / "dataset.json").write_text(json.dumps(meta))  # listed, missing: the liver's quarantine
    (tmp_path / "pool.yaml").write_text("sources:\n  - source: msd:liver\n    weight: 2\n"
                                        "  - source: folder:archive\n    weight: 1\n")
    overrides = [f"data.source=pool:{tmp_path / 'pool.yaml'}", "data.folds=4", "data.val_fold=0",
                 "data.test_fold=null", "data.recipe=ct_btcv", "data.spacing=[3.0,3.0,3.0]", "data.roi=[32,32,32]",
                 "data.splits=[train]"]
    cfg = load_config(PrepareConfig, "prepare", overrides=overrides)
    source = resolve_pool(cfg.data)
    train = source.split("train")  # 3 liver + 3 archive (the corrupt file among them, or in val)
    out = prepare(cfg, source, resolve_recipe(cfg.data, source))
    assert out == default_out(cfg.data)
    manifest = read_manifest(out)
    bad = [c for c in train if "broken" in c.case_id]
    split = manifest["splits"]["train"]
    assert split["listed"] == len(train) and split["cases"] == len(train) - len(bad) and split["skipped"] == 0
    assert manifest["quarantined_by_source"] == ({"archive": 1, "liver": 1} if bad else {"liver": 1})
    assert {(e["source"], e["path"].rsplit("/", 1)[-1]) for e in manifest["quarantined"]} == (
        {("liver", "gone.nii.gz")} | ({("archive", "broken.nii.gz")} if bad else set()))
    # the weights' repeats, worked out by hand: k = max(3 / 2, 3 / 1) = 3 volumes per unit of weight, so liver's 3
    # cases stream 2 x 3 = 6 volumes (twice each) and archive's 3 cases 3 (once each; the corrupt one's dropped)
    files = split["files"]
    volumes = read_volumes(out, "train", manifest, ["case_id"])
    per = Counter(files[i].partition(".")[0] for i, _ in volumes.items)
    assert per == {"liver": 6, "archive": 3 - len(bad)}
    assert sorted(r for i, r in volumes.items if files[i].startswith("liver.")) == [0, 0, 0, 1, 1, 1]

    caplog.clear()
    again = read_manifest(prepare(cfg, source, resolve_recipe(cfg.data, source)))
    assert again["splits"]["train"]["skipped"] == split["cases"] and again["splits"]["train"]["bytes_written"] == 0
    assert again["splits"]["train"]["files"] == files

    run = load_config(PretrainConfig, "pretrain", "tiny", overrides=overrides[:-1] + [
        "data.kept_budget=0", "data.patches_per_volume=4", "batch_size=4", "max_steps=2", "scale.cpus_per_worker=0.5",
        f"run.storage_path={tmp_path / 'runs'}", "run.name=streamed", "run.log_every=1", "run.preview_every=0"])
    caplog.clear()
    result = json.loads((Path(pretrain(run)) / "result.json").read_text())
    assert result["steps"] == 2
    lines = [m for m in caplog.messages if m.startswith("training volumes:")]
    assert len(lines) == 1 and f"streamed from the cache {out} (about " in lines[0]
    assert "against a budget of 0.00 GiB, data.kept_budget=0.0)" in lines[0]

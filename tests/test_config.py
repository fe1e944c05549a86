import pytest

from rayssl.config import ConfigError, DataConfig, PrepareConfig, PretrainConfig, load_config, parse_override


def test_override_parses_dotted_keys_and_yaml_values():
    assert parse_override("data.roi=[64,64,32]") == {"data": {"roi": [64, 64, 32]}}
    assert parse_override("data.strict=true") == {"data": {"strict": True}}
    assert parse_override("out=/tmp/x") == {"out": "/tmp/x"}


def test_load_config_merges_file_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("data:\n  roi: [32, 32, 16]\n  patches_per_volume: 2\n")
    cfg = load_config(PrepareConfig, "prepare", file=f, overrides=["data.patches_per_volume=3"])
    assert cfg.data.roi == (32, 32, 16)
    assert cfg.data.patches_per_volume == 3
    assert cfg.data.source == DataConfig().source


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.rio=[1,2,3]", "data.rio"),
        ("data.patches_per_volume=many", "data.patches_per_volume"),
        ("data.sampling=everywhere", "data.sampling"),
        ("data.roi=[0,4,4]", "data"),
        ("nonsense=1", "nonsense"),
    ],
)
def test_bad_key_or_value_names_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(PrepareConfig, "prepare", overrides=[override])
    assert key in str(err.value)


def test_unknown_preset_and_missing_file_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="unknown prepare preset 'nope'"):
        load_config(PrepareConfig, "prepare", preset="nope")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(PrepareConfig, "prepare", file=tmp_path / "missing.yaml")


def test_malformed_override():
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("data.roi")


def test_genesis_needs_a_unit_range_recipe():
    with pytest.raises(ConfigError, match=r"data\.recipe='mri_brats'.*mri_genesis"):
        load_config(PretrainConfig, "pretrain", overrides=["model.method=genesis", "data.recipe=mri_brats"])
    with pytest.raises(ValueError, match=r"data\.recipe='mri_brats'"):
        PretrainConfig(model={"method": "genesis"}, data={"recipe": "mri_brats"})
    cfg = load_config(PretrainConfig, "pretrain", overrides=["model.method=genesis", "data.recipe=mri_genesis"])
    assert cfg.data.recipe == "mri_genesis"
    PretrainConfig(model={"method": "genesis"})  # recipe None: the source picks it, the driver checks
    PretrainConfig(data={"recipe": "mri_brats"})  # MAE takes z-scores


def test_genesis_sampling_fields():
    chest = load_config(PretrainConfig, "pretrain", "genesis_chest_ct").data
    assert chest.sampling == "genesis" and chest.genesis_margin == (100, 100, 30)
    assert chest.genesis_hu == -150.0 and chest.genesis_max_fraction == 0.15
    assert load_config(PretrainConfig, "pretrain", "tiny_genesis").data.sampling == "tissue"
    with pytest.raises(ValueError, match="genesis_margin"):
        DataConfig(roi=(64, 64, 32), genesis_margin=(100, 30))
    # the -150 HU threshold needs an HU window: no recipe, or an MRI one, is an error unless given directly
    with pytest.raises(ValueError, match=r"data\.recipe.*data\.genesis_threshold"):
        DataConfig(sampling="genesis")
    with pytest.raises(ValueError, match="genesis_threshold"):
        DataConfig(sampling="genesis", recipe="mri_genesis")
    DataConfig(sampling="genesis", recipe="mri_genesis", genesis_threshold=0.5)
    DataConfig(sampling="tissue")

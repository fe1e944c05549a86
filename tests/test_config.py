import pytest

from rayssl.config import ConfigError, DataConfig, PrepareConfig, load_config, parse_override


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

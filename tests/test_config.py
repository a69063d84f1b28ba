import pytest
import yaml

from cellresponse.config import Config, load_config, parse_override
from cellresponse.errors import InputError
from tests.conftest import run_cli


def test_defaults_are_the_study_numbers():
    c = Config()
    assert c.segmentation.flow_threshold == 0.7
    assert c.segmentation.cellprob_threshold == -5.0
    assert c.segmentation.diameter is None  # estimated automatically
    assert c.segmentation.input.kind == "median" and c.segmentation.input.channels == [0, 1, 2]
    assert c.crops.size == 224 and c.crops.mean == 0.5 and c.crops.std == 0.5
    assert c.training.batch_size == 512
    assert (c.training.learning_rate, c.training.weight_decay) == (1e-4, 1e-4)
    assert (c.training.step_size, c.training.gamma) == (5, 0.5)
    assert c.split.test_fraction == 0.2 and c.split.stratify and c.split.downsample_control
    assert c.input.label == "Metadata_pert_iname"


def test_presets_layer_on_the_defaults():
    study, cpu = load_config(preset="study"), load_config(preset="cpu")
    # the study's protocol: image-level split, validation on the test side, majority vote
    assert (study.split.by, study.split.validation_fraction, study.evaluation.vote) == ("image", 0.0, "majority")
    assert Config().split.by == "well" and Config().evaluation.vote == "soft"  # honest defaults
    assert study.training == Config().training and study.crops == Config().crops
    # the study measured regionprops on the segmentation input only; the default adds the extended measurement
    assert (study.measurement.intensity_channels, study.measurement.extended) == ([], False)
    assert Config().measurement.extended
    assert cpu.crops.size < study.crops.size and cpu.training.batch_size < study.training.batch_size
    assert cpu.training.learning_rate == 1e-3  # from scratch on CPU (measured, README "Defaults")
    assert (cpu.training.weight_decay, cpu.training.step_size) == (study.training.weight_decay, 2)
    finetune = load_config(preset="finetune")
    assert (finetune.crops.recipe, finetune.model.pretrained) == ("fluorescence", "imagenet")
    # docs/results.md "Which model predicts"
    assert finetune.embedding.mode == "per_channel" and Config().embedding.mode == "rgb"


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"training": {"max_epochs": 7}, "seed": 3}))
    c = load_config(path, "cpu", ["training.max_epochs=2", "segmentation.backend=offline"])
    assert c.training.max_epochs == 2 and c.seed == 3 and c.segmentation.backend == "offline"
    assert c.crops.size == 32  # from the preset
    yaml_file = tmp_path / "round.yaml"
    yaml_file.write_text(c.to_yaml())
    assert load_config(yaml_file) == c


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("training.max_epoch=3", "unknown key 'training.max_epoch'"),
        ("segmentation.flow_threshold=-1", "'segmentation.flow_threshold'"),
        ("split.test_fraction=1.5", "'split.test_fraction'"),
        ("nonsense", "is not KEY=VALUE"),
    ],
)
def test_bad_config_values_are_clear_errors(override, message):
    with pytest.raises(InputError, match=message):
        load_config(overrides=[override])


def test_test_values_given_as_numbers_are_the_columns_values_as_text():
    # `--set split.test_values=[2]` (a YAML integer) must mean what `--test-values 2` means, not stop the run
    assert load_config(overrides=["split.test_values=[1, 2]"]).split.test_values == ["1", "2"]
    assert load_config(overrides=["split.test_values=2"]).split.test_values == ["2"]
    assert load_config(overrides=["split.test_values=[Week4_27521]"]).split.test_values == ["Week4_27521"]
    with pytest.raises(InputError, match=r"'split\.test_values\.0'"):
        load_config(overrides=["split.test_values=[{a: 1}]"])


def test_parse_override_types():
    assert parse_override("a.b=3") == {"a": {"b": 3}}
    assert parse_override("a=[1, 2]") == {"a": [1, 2]}
    assert parse_override("a.b=null") == {"a": {"b": None}}


def test_config_show_cli(tmp_path):
    out = run_cli("config", "show", "--preset", "cpu", "--set", "seed=5").stdout
    shown = yaml.safe_load(out)
    assert shown["seed"] == 5 and shown["crops"]["size"] == 32
    bad = run_cli("config", "show", "--set", "trainig.lr=1", check=False)
    assert bad.returncode == 2 and "unknown key 'trainig'" in bad.stderr

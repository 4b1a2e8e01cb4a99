import pytest

from palate.config import ConfigError, dump_yaml, load_config
from palate.recipes.sft import SFTConfig


def test_yaml_plus_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("run_dir: runs/x\ntrain:\n  lr: 1.0e-4\n  batch_size: 8\nlora:\n  enabled: true\n")
    cfg = load_config(SFTConfig, p, ["train.lr=3e-5", "data.max_length=128", "lora.target_modules=[q_proj,v_proj]"])
    assert cfg.train.lr == 3e-5 and cfg.train.batch_size == 8 and cfg.data.max_length == 128
    assert cfg.lora.enabled is True and cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.run_dir == "runs/x"
    # the saved form round-trips
    again = tmp_path / "again.yaml"
    again.write_text(dump_yaml(cfg))
    assert load_config(SFTConfig, again) == cfg


def test_frozen():
    cfg = load_config(SFTConfig)
    with pytest.raises(Exception):
        cfg.train.lr = 1.0


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=1", "unknown config key(s) train.lrr"),
        ("train.batch_size=four", "train.batch_size: expected an integer"),
        ("lora.enabled=maybe", "lora.enabled: expected true or false"),
        ("train.lr", "is not key=value"),
        ("train.adam_betas=[0.9]", "train.adam_betas: expected 2 values"),
    ],
)
def test_bad_config_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_config(SFTConfig, None, [override])


def test_renamed_keys_name_their_new_place():
    from palate.recipes.dpo import DPOConfig

    with pytest.raises(ConfigError, match=r"dpo.desirable_weight was renamed: use kto.desirable_weight"):
        load_config(DPOConfig, None, ["dpo.desirable_weight=2.0"])


def test_a_bad_dtype_is_named_by_its_key_everywhere():
    from palate.config import ConfigError, load_config
    from palate.eval.run import EvalConfig
    from palate.pipeline import PipelineConfig, check
    from palate.serve.config import ServeConfig, check_serve

    with pytest.raises(ConfigError, match=r"^dtype must be one of auto, fp32, bf16, fp16, got 'fp8'"):
        load_config(EvalConfig, None, ["dtype=fp8"])
    with pytest.raises(ConfigError, match=r"^dtype must be one of .* got 'int4'"):
        check_serve(load_config(ServeConfig, None, ["model=tiny", "dtype=int4"]))
    with pytest.raises(ConfigError, match=r"^eval.dtype must be one of .* got 'half'"):
        check(load_config(PipelineConfig, None, ["eval.dtype=half"]))

import pytest
import torch

from palate.infra import device
from palate.infra.device import keep_freed_memory, pick_device, pick_gradient_checkpointing, pick_precision
from palate.infra.logging import attach_sinks
from palate.config import LogConfig
from palate.models.load import inference_dtype


def test_auto_choices_on_cpu():
    cpu = torch.device("cpu")
    assert pick_precision("auto", cpu) == ("bf16" if device.cpu_has_fast_bf16() else "fp32")
    assert pick_precision("bf16", cpu) == "bf16"
    with pytest.raises(ValueError):
        pick_precision("fp8", cpu)
    assert pick_gradient_checkpointing(None, cpu) is False
    assert pick_gradient_checkpointing(True, cpu) is True
    if not torch.cuda.is_available():
        assert pick_device("auto").type == "cpu"
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            pick_device("cuda")


@pytest.mark.parametrize("amx, avx512_bf16, expected", [(True, True, "bf16"), (False, True, "fp32"),
                                                         (True, False, "fp32"), (None, None, "fp32")])
def test_auto_precision_on_cpu_follows_the_bf16_matrix_units(monkeypatch, amx, avx512_bf16, expected):
    """bf16 autocast only where the CPU multiplies bf16 natively (AMX tiles + AVX-512 BF16); a torch without
    the probes (None) means fp32. The log line says why."""
    for name, value in (("_is_amx_tile_supported", amx), ("_is_avx512_bf16_supported", avx512_bf16)):
        if value is None:
            monkeypatch.delattr(torch.cpu, name, raising=False)
        else:
            monkeypatch.setattr(torch.cpu, name, lambda v=value: v)
    cpu = torch.device("cpu")
    assert pick_precision("auto", cpu) == expected
    assert pick_precision("fp32", cpu) == "fp32"  # asked for: kept
    assert inference_dtype("auto", cpu) == expected  # generation and scoring: weights cast where it pays
    assert inference_dtype("fp32", cpu) == "fp32"
    assert ("AMX" in device.precision_reason("auto", cpu)) is True
    assert ("bf16 runs ~2x faster" in device.precision_reason("auto", cpu)) == (expected == "bf16")
    assert device.precision_reason("fp32", cpu) == ""


def test_allocator_setting_applies_on_glibc():
    assert keep_freed_memory() is True


@pytest.mark.parametrize("flag, extra", [("tensorboard", "tensorboard"), ("wandb", "wandb")])
def test_optional_sinks_fail_clearly_when_not_installed(tmp_path, flag, extra):
    pytest.importorskip("yaml")
    try:
        __import__(extra)
        pytest.skip(f"{extra} is installed here")
    except ImportError:
        pass

    class Run:
        path = tmp_path

        def add_sink(self, sink):
            raise AssertionError("no sink should be attached")

    with pytest.raises(RuntimeError, match=rf"pip install palate\[{extra}\]"):
        attach_sinks(Run(), LogConfig(**{flag: True}), {})


def test_inference_dtype_names_a_bad_dtype():
    with pytest.raises(ValueError, match="fp8"):
        inference_dtype("fp8", "cpu")

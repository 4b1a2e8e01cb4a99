import pytest
import torch

from palate.infra.device import keep_freed_memory, pick_device, pick_gradient_checkpointing, pick_precision
from palate.infra.logging import attach_sinks
from palate.config import LogConfig


def test_auto_choices_on_cpu():
    cpu = torch.device("cpu")
    assert pick_precision("auto", cpu) == "fp32"
    assert pick_precision("bf16", cpu) == "bf16"
    with pytest.raises(ValueError):
        pick_precision("fp8", cpu)
    assert pick_gradient_checkpointing(None, cpu) is False
    assert pick_gradient_checkpointing(True, cpu) is True
    if not torch.cuda.is_available():
        assert pick_device("auto").type == "cpu"
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            pick_device("cuda")


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

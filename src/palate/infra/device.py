"""Device, precision and memory choices, made from the hardware and said out loud."""

from __future__ import annotations

import contextlib
import ctypes
import os
import logging

import torch

from palate.errors import PalateError

log = logging.getLogger("palate.device")


class DeviceError(PalateError, RuntimeError):
    """A device that does not exist or is not available here."""


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(requested)
    except RuntimeError as e:
        raise DeviceError(f"device {requested!r}: {e}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {requested!r} requested but CUDA is not available")
    return dev


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (Intel AMX tiles with AVX-512 BF16: Sapphire Rapids and
    later). There oneDNN's bf16 GEMM runs several times faster than fp32 (measured on a 2-core Sapphire Rapids VM:
    ~2,900 vs ~420 GFLOP/s at 1024x576x1536, and a bf16-autocast training step of SmolLM2-135M 2.2x faster);
    without AMX, bf16 is emulated and slower than fp32."""
    probe = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    try:
        return all(f is not None and bool(f()) for f in probe)
    except Exception:  # noqa: BLE001 - a probe that cannot run means no
        return False


def pick_precision(requested: str, device: torch.device) -> str:
    """``auto``: bf16 autocast on GPUs that support it and on CPUs with native bf16 matrix units
    (:func:`cpu_has_fast_bf16`); fp32 elsewhere, where bf16 matmuls are emulated and slower."""
    if requested == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if device.type == "cpu" and cpu_has_fast_bf16() else "fp32"
    if requested not in ("fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {requested!r}")
    return requested


def precision_reason(requested: str, device: torch.device) -> str:
    """Why ``auto`` chose what it chose, for the run's log ('' when the precision was asked for)."""
    if requested != "auto":
        return ""
    if device.type == "cuda":
        return " (auto: bf16 where the GPU supports it)"
    if cpu_has_fast_bf16():
        return " (auto: this CPU has AMX bf16 matrix units, where bf16 runs ~2x faster than fp32)"
    return " (auto: fp32 on a CPU without AMX bf16, where bf16 is slower)"


def autocast(precision: str, device: torch.device):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def pick_gradient_checkpointing(requested: bool | None, device: torch.device) -> bool:
    """``None`` (auto): off. Checkpointing trades ~30% more compute for activation memory; on CPU memory is
    rarely the limit, and on GPU palate never turns it on silently: ask with ``true``."""
    return bool(requested)


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory instead of returning it to the OS after every step.

    Training frees and reallocates the same large activation buffers every step; by default glibc
    unmaps them each time and the kernel zero-fills fresh pages on the next touch (millions of page
    faults per run on CPU). Same effect as ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large>``.
    Returns whether the settings were applied (glibc only).
    """
    if os.environ.get("PALATE_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    ok = libc.mallopt(m_mmap_max, 0) == 1
    ok &= libc.mallopt(m_trim_threshold, 2**30) == 1
    return bool(ok)

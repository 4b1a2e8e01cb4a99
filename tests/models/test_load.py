import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from palate.models.load import load_model, load_tokenizer, resolve, resolve_dtype, tiny_model


def test_resolve_kinds(tmp_path):
    assert resolve("bundled") == ("bundled", "bundled")
    assert resolve("tiny") == ("tiny", "tiny")
    assert resolve("HuggingFaceTB/SmolLM2-135M-Instruct") == ("hub", "HuggingFaceTB/SmolLM2-135M-Instruct")
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    assert resolve(str(model_dir)) == ("dir", str(model_dir))
    run_dir = tmp_path / "run"
    (run_dir / "final").mkdir(parents=True)
    (run_dir / "final" / "config.json").write_text("{}")
    assert resolve(str(run_dir)) == ("run", str(run_dir / "final"))
    with pytest.raises(FileNotFoundError, match="holds no model"):
        resolve(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve("./no/such/model")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve("missing.gguf")


def test_dtype_choice():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("fp8")


def test_tiny_model_is_seeded_and_uses_the_tokenizer(tok):
    a, b, c = tiny_model(tok, seed=1), tiny_model(tok, seed=1), tiny_model(tok, seed=2)
    assert a.config.vocab_size == len(tok) and a.config.num_hidden_layers == 2 and a.config.hidden_size == 64
    assert torch.equal(a.model.embed_tokens.weight, b.model.embed_tokens.weight)
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)


def test_local_dir_roundtrip_and_remote_code_off(tmp_path, tok):
    m = tiny_model(tok)
    m.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    loaded = load_model(str(tmp_path / "m"))
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.allclose(loaded(ids).logits, m(ids).logits, atol=1e-6)
    assert load_tokenizer(str(tmp_path / "m")).pad_token is not None


def _as_hub_cache(model_dir: Path, cache: Path, repo: str) -> None:
    """Lay out a local directory the way huggingface_hub caches a downloaded repo."""
    commit = "0" * 40
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in model_dir.iterdir():
        (snap / f.name).symlink_to(f)


def test_hub_name_path_works_offline_from_the_hub_cache(tmp_path, tok):
    """The hub-name code path (from_pretrained("org/name")) is the real one; offline it reads the cache."""
    m = tiny_model(tok, seed=3)
    m.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    _as_hub_cache(tmp_path / "m", tmp_path / "hub", "palate-test/tiny-llama")
    code = (
        "import torch; from palate.models.load import load_model, load_tokenizer;"
        "m = load_model('palate-test/tiny-llama'); t = load_tokenizer('palate-test/tiny-llama');"
        "print(m.config.hidden_size, len(t), m.model.embed_tokens.weight[0, 0].item())"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    hidden, vocab, w = out.stdout.split()
    assert (int(hidden), int(vocab)) == (64, len(tok))
    assert float(w) == pytest.approx(m.model.embed_tokens.weight[0, 0].item(), abs=1e-7)


def test_unknown_hub_name_offline_fails_clearly():
    with pytest.raises(OSError):
        load_model("palate-test/does-not-exist")


@pytest.mark.slow
def test_gguf_conversion_gives_identical_logits(tmp_path, monkeypatch):
    """transformers refuses save_pretrained on a GGUF-loaded model; palate rebuilds it and must match exactly."""
    from transformers import AutoModelForCausalLM

    from palate.models.load import _bundled_gguf

    monkeypatch.setenv("PALATE_CACHE", str(tmp_path / "cache"))
    gguf = _bundled_gguf()
    converted = load_model(str(gguf))
    assert any((tmp_path / "cache" / "gguf").iterdir()), "the conversion is cached as safetensors"
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    ids = torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356, 5646]])
    with torch.no_grad():
        assert torch.equal(converted(ids).logits, direct(ids).logits)
    assert load_tokenizer(str(gguf)).chat_template

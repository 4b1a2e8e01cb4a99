"""Word-level text measures used below evaluation too (the repetition penalty of an RL reward): words are
whitespace-separated tokens, so two models with different tokenizers compare fairly. The evaluation
statistics built on them are in :mod:`palate.eval.text`."""

from __future__ import annotations


def words(text: str) -> list[str]:
    return text.split()


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def repeated_ngram_fraction(text: str, n: int = 3) -> float:
    """Fraction of word n-grams that already occurred earlier in the text (0 for short texts)."""
    grams = _ngrams(words(text), n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0

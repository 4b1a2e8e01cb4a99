"""``palate eval``: answer a prompt set with one or more policies and a baseline, judge each policy against
the baseline, and report win rates with CIs, length-controlled win rates, reward, length, diversity and
(over-)refusal.

    generate   :func:`palate.rollout.generate.sample`, greedy (temperature 0) or seeded sampling; every
               answer is cached in ``OUT/answers.jsonl`` under a hash of (model, prompt, settings), so a
               rerun with the same model, prompts and settings generates nothing (a sampled answer depends
               on the batch it was drawn in, so with temperature > 0 only the cached ones are reproducible)
    judge      ``panel``         the simulated labeler panel (:func:`palate.feedback.simulate.panel_preference`)
               ``reward:DIR``    a reward model: the higher reward wins, equal rewards (|Δ| ≤ 1e-6) tie
               ``local:MODEL``   a local AI judge, both orders, combined by :func:`palate.judges.debias.combine`
                                 (malformed verdicts are dropped and counted)
    report     :func:`palate.eval.winrate.compare_policies` (ties ½, bootstrap CIs, per category; the
               length-controlled win rates of all policies from one joint fit: shared length slope,
               per-prompt difficulty)
               → ``OUT/eval/winrates.json`` (what ``palate report OUT`` shows); :func:`palate.eval.text.text_stats`
               and :func:`palate.eval.text.refusal_rates` → ``OUT/eval_summary.json``
    safety     with ``safety_classifier`` (:func:`palate.eval.safety.load_safety_classifier`): per policy and
               baseline the mean P(unsafe) of its answers and the unsafe rate (P ≥ the classifier's
               threshold) with a 95% bootstrap CI
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from palate.data.records import Prompt
from palate.eval.prompts import EvalPrompt, export_alpaca, read_eval_prompts
from palate.eval.text import refusal_rates, text_stats, words
from palate.eval.winrate import compare_policies, write_winrates

ANSWERS = "answers.jsonl"
SUMMARY = "eval_summary.json"
_CHOICE = {"a": "win", "b": "loss", "tie": "tie"}


@dataclass(frozen=True)
class GenSettings:
    max_new_tokens: int = 128
    temperature: float = 0.0
    """0 = greedy"""
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0
    dtype: str = "auto"
    """weights the answers are generated in: auto (bf16 where the CPU has AMX bf16 units or the GPU has bf16,
    else fp32) | fp32 | bf16"""


def model_fingerprint(name: str) -> str:
    """The model's name, made specific for a local dir: its absolute path and its weights' mtime and size."""
    path = Path(name).expanduser()
    if not path.exists():
        return name
    root = path / "final" if (path / "final" / "config.json").exists() else path
    stamp = [(p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(root.glob("*.safetensors"))
             + sorted(root.glob("*.bin")) + sorted(root.glob("config.json"))]
    return json.dumps([str(root.resolve()), stamp])


def answer_key(fingerprint: str, prompt: Prompt, settings: GenSettings) -> str:
    """The cache key of an answer; ``settings.dtype`` resolved (an fp32 answer keeps the key it had before answers
    could be generated in another precision)."""
    fields = asdict(settings)
    if fields.pop("dtype") != "fp32":
        fields["dtype"] = settings.dtype
    blob = json.dumps([fingerprint, prompt, fields], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def label_of(name: str) -> str:
    path = Path(name).expanduser()
    return path.resolve().name if path.exists() else name


class AnswerCache:
    """Answers by key, read from and written back to ``answers.jsonl``; ``generated`` counts new answers."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.old: dict[str, dict] = {}
        if self.path.exists():
            for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
                if line.strip():
                    row = json.loads(line)
                    if "key" not in row or "answer" not in row:
                        raise ValueError(f"{self.path} line {n}: not an answers row (needs key and answer)")
                    self.old[row["key"]] = row
        self.rows: list[dict] = []  # this run's rows, one per (policy, prompt)
        self.generated = 0
        self.reused = 0

    def save(self) -> Path:
        used = {r["key"] for r in self.rows}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", encoding="utf-8") as f:
            for r in self.rows + [r for k, r in self.old.items() if k not in used]:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        return self.path


def is_endpoint(name: str) -> bool:
    """An OpenAI-compatible server's base URL (``http://HOST:PORT/v1``) rather than a model to load."""
    return name.startswith(("http://", "https://"))


def endpoint_answers(url: str, prompts: Sequence[Prompt], cache: AnswerCache, settings: GenSettings, *,
                     label: str, concurrency: int = 8) -> list[str]:
    """Greedy answers from a served model (``palate serve`` or any chat-completions server), ``concurrency``
    requests at a time so the server can batch them. Never read from the cache: what a server answers
    depends on how it is run (guardrails on or off), which its URL does not say."""
    from palate.data.records import prompt_text
    from palate.judges.http import HTTPJudge

    if settings.temperature > 0:
        raise ValueError(f"{url}: answers from an endpoint are greedy; use temperature 0")
    client = HTTPJudge(url, max_tokens=settings.max_new_tokens, concurrency=concurrency, name=label)
    answers = client.chat_many([prompt_text(p) for p in prompts])
    for i, (p, a) in enumerate(zip(prompts, answers)):
        cache.rows.append({"key": f"endpoint:{url}:{i}", "answer": a, "prompt": p, "policy": label, "model": url})
    cache.generated += len(answers)
    return answers


def generate_answers(model_name: str, prompts: Sequence[Prompt], cache: AnswerCache, settings: GenSettings, *,
                     label: str, device: str = "cpu", batch_size: int = 8) -> list[str]:
    """One answer per prompt from ``model_name`` (or the endpoint it names), generating only those not in
    ``cache``."""
    if is_endpoint(model_name):
        return endpoint_answers(model_name, prompts, cache, settings, label=label, concurrency=batch_size)
    from palate.models.load import inference_dtype

    settings = replace(settings, dtype=inference_dtype(settings.dtype, device))
    fp = model_fingerprint(model_name)
    keys = [answer_key(fp, p, settings) for p in prompts]
    missing: list[int] = []
    for i, k in enumerate(keys):
        if k not in cache.old and all(keys[j] != k for j in missing):
            missing.append(i)
    if missing:
        from palate.models.load import load_model, load_tokenizer
        from palate.rollout.generate import sample

        tok = load_tokenizer(model_name)
        model = load_model(model_name, tokenizer=tok, device=device, dtype=settings.dtype, seed=settings.seed).eval()
        samples = sample(model, tok, [prompts[i] for i in missing], n=1, max_new_tokens=settings.max_new_tokens,
                         temperature=settings.temperature, top_p=settings.top_p,
                         repetition_penalty=settings.repetition_penalty, seed=settings.seed, batch_size=batch_size)
        for i, s in zip(missing, samples):
            cache.old[keys[i]] = {"key": keys[i], "answer": s[0].text, "n_tokens": s[0].n_tokens,
                                  "finished": s[0].finished}
        cache.generated += len(missing)
        del model
    cache.reused += len(keys) - len(missing)
    for k, p in zip(keys, prompts):
        cache.rows.append({**cache.old[k], "prompt": p, "policy": label, "model": model_name})
    return [cache.old[k]["answer"] for k in keys]


def reward_judgments(reward_a: Sequence[float], reward_b: Sequence[float], tol: float = 1e-6) -> list[str]:
    """win / tie / loss of A by reward: the higher reward wins, rewards within ``tol`` tie; ``None`` (malformed,
    counted) when either is NaN (a prompt the reward model skips: its ``long_prompts`` rule)."""
    return [None if a != a or b != b else "tie" if abs(a - b) <= tol else "win" if a > b else "loss"
            for a, b in zip(reward_a, reward_b)]


Judge = Callable[[list[Prompt], list[str], list[str]], list[Any]]


def make_pair_judge(spec: str, *, device: str = "cpu", batch_size: int = 8) -> tuple[Judge, Any]:
    """A judge from ``panel``, ``reward:DIR`` or ``local:MODEL``: ``judge(prompts, a, b)`` → one judgment
    of A per prompt (win/tie/loss, or ``None`` when malformed); also the reward model for ``reward:``."""
    if spec == "panel":
        from palate.feedback.simulate import panel_preference

        return (lambda ps, a, b: [_CHOICE[panel_preference(p, x, y).choice] for p, x, y in zip(ps, a, b)]), None
    if spec.startswith("reward:"):
        from palate.models.heads import RewardModel

        rm = RewardModel.load(spec[len("reward:"):], device=device)

        def by_reward(ps, a, b):
            return reward_judgments(rm.score(ps, a, batch_size=batch_size).mean.tolist(),
                                    rm.score(ps, b, batch_size=batch_size).mean.tolist())
        return by_reward, rm
    if spec.startswith("local:"):
        from palate.judges import make_judge
        from palate.judges.debias import combine

        j = make_judge(spec[len("local:"):], device=device, batch_size=batch_size)

        def local(ps, a, b):
            first = j.compare_many(list(zip(ps, a, b)))
            second = j.compare_many(list(zip(ps, b, a)))
            prefs = [combine(f, s).preference for f, s in zip(first, second)]
            return [None if x is None else _CHOICE[x] for x in prefs]
        return local, None
    raise ValueError(f"--judge must be panel, reward:RUN_DIR or local:MODEL, got {spec!r}")


def answer_stats(answers: list[str], items: list[EvalPrompt]) -> dict[str, Any]:
    """Length, distinct-1/2, repetition, and refusal / over-refusal where prompts are labelled."""
    out = text_stats(answers)
    labelled = [(a, e.harmful) for a, e in zip(answers, items) if e.harmful is not None]
    if labelled:
        out.update(refusal_rates([a for a, _ in labelled], [h for _, h in labelled]))
    return out


def evaluate(policies: list[str], prompts: str, baseline: str, out: str | Path, *, judge: str = "panel",
             reward_model: str | None = None, limit: int | None = None, settings: GenSettings = GenSettings(),
             device: str = "cpu", batch_size: int = 8, alpaca_out: str | Path | None = None,
             n_resamples: int = 1000, safety_classifier: str | None = None) -> dict[str, Any]:
    """Run the evaluation (module docstring) and write answers.jsonl, eval/winrates.json, eval_summary.json."""
    out = Path(out)
    items = read_eval_prompts(prompts, limit=limit)
    ps = [e.prompt for e in items]
    cache = AnswerCache(out / ANSWERS)
    base_label = label_of(baseline)
    labels: list[str] = []
    for p in policies:
        lab = label_of(p)
        labels.append(lab if lab not in labels and lab != base_label else f"{lab}-{len(labels) + 1}")
    pair_judge, rm = make_pair_judge(judge, device=device, batch_size=batch_size)  # bad specs fail before generating
    if reward_model and not (judge.startswith("reward:") and judge[len("reward:"):] == reward_model):
        from palate.models.heads import RewardModel

        rm = RewardModel.load(reward_model, device=device)
    safety = None
    if safety_classifier:
        from palate.eval.safety import load_safety_classifier

        safety = load_safety_classifier(safety_classifier, device=device)
    gen = dict(cache=cache, settings=settings, device=device, batch_size=batch_size)
    base_answers = generate_answers(baseline, ps, label=base_label, **gen)
    answers = {lab: generate_answers(p, ps, label=lab, **gen) for lab, p in zip(labels, policies)}
    cache.save()

    def mean_reward(ans: list[str]) -> float | None:
        if rm is None:
            return None
        scores = rm.score(ps, ans, batch_size=batch_size).mean
        return float(scores.nanmean())  # over the prompts the reward model can read (its long_prompts rule)

    def safety_stats(ans: list[str]) -> dict[str, Any]:
        if safety is None:
            return {}
        from palate.eval.safety import answer_unsafe_probs, safety_summary

        return safety_summary(answer_unsafe_probs(safety, ps, ans), safety.threshold, seed=settings.seed)

    groups = [e.category or "none" for e in items] if any(e.category for e in items) else None
    summaries, judged = [], []
    verdicts, keeps = {}, {}
    for lab in labels:
        js = pair_judge(ps, answers[lab], base_answers)
        keep = [i for i, j in enumerate(js) if j is not None]
        if not keep:
            raise ValueError(f"judge {judge} gave no usable verdict for {lab} ({len(js)} malformed)")
        verdicts[lab], keeps[lab] = js, keep
    # one length-controlled fit over all policies (same prompts, same baseline): see compare_policies
    results = compare_policies({lab: [verdicts[lab][i] for i in keeps[lab]] for lab in labels},
                               {lab: [len(words(answers[lab][i])) for i in keeps[lab]] for lab in labels},
                               [len(words(a)) for a in base_answers], prompt_index=keeps,
                               groups={lab: [groups[i] for i in keeps[lab]] for lab in labels} if groups else None,
                               length_unit="words", n_resamples=n_resamples, seed=settings.seed)
    for lab, res in zip(labels, results):
        js, keep = verdicts[lab], keeps[lab]
        res["n_malformed"] = len(js) - len(keep)
        summaries.append({**{k: res[k] for k in ("policy", "n", "wins", "ties", "losses", "win_rate", "ci")},
                          "lc_win_rate": res.get("lc_win_rate"), "lc_ci": res.get("lc_ci"),
                          "n_malformed": res["n_malformed"], "mean_reward": mean_reward(answers[lab]),
                          **answer_stats(answers[lab], items), **safety_stats(answers[lab])})
        judged += [{"policy": lab, "prompt": ps[i], "response_a": answers[lab][i], "response_b": base_answers[i],
                    "judgment": js[i], "group": groups[i] if groups else None} for i in range(len(ps))]
    write_winrates(out / "eval", results, baseline=base_label, judge=judge)
    with open(out / "eval" / "judgments.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in judged)
    summary = {"prompts": str(prompts), "n_prompts": len(items), "baseline": base_label, "judge": judge,
               "reward_model": reward_model or (judge[len("reward:"):] if judge.startswith("reward:") else None),
               "safety_classifier": safety_classifier,
               "safety_threshold": safety.threshold if safety is not None else None,
               "generation": asdict(settings), "generated": cache.generated, "reused": cache.reused,
               "baseline_stats": {"mean_reward": mean_reward(base_answers), **answer_stats(base_answers, items),
                                  **safety_stats(base_answers)},
               "policies": summaries}
    (out / SUMMARY).write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    if alpaca_out:
        summary["alpaca_exports"] = _export(alpaca_out, cache.rows, labels)
    return summary


def _export(path: str | Path, rows: list[dict], labels: list[str]) -> list[str]:
    path = Path(path)
    if len(labels) == 1:
        return [str(export_alpaca(path, [r for r in rows if r["policy"] == labels[0]]))]
    return [str(export_alpaca(path.with_name(f"{path.stem}-{lab}{path.suffix or '.json'}"),
                              [r for r in rows if r["policy"] == lab])) for lab in labels]


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def format_table(summary: dict[str, Any]) -> str:
    """The printed table: one row per policy, then the baseline's own statistics."""
    safety = summary.get("safety_classifier")
    head = (f"{'policy':<24} {'n':>4} {'W/T/L':>10} {'win rate [95% CI]':>24} {'LC win':>7} {'reward':>8} "
            f"{'length':>7} {'dist-1':>6} {'dist-2':>6} {'refusal':>8} {'over-ref':>8}"
            + (f" {'P(unsafe)':>9} {'unsafe [95% CI]':>21}" if safety else ""))
    lines = [f"judge {summary['judge']} vs baseline {summary['baseline']} on {summary['n_prompts']} prompts "
             f"({summary['generated']} answers generated, {summary['reused']} reused)"
             + (f"; unsafe = P(unsafe) >= {summary['safety_threshold']:g} by {safety}" if safety else ""), head]

    def row(name: str, s: dict, wr: str) -> str:
        ref, over = s.get("refusal_rate"), s.get("over_refusal_rate")
        reward = "n/a" if s.get("mean_reward") is None else f"{s['mean_reward']:.3f}"
        length = s["length"]["mean"]
        unsafe = ""
        if safety:
            u = s.get("unsafe_rate")
            cell = f"{_pct(u['rate'])} [{_pct(u['ci'][0])}, {_pct(u['ci'][1])}]" if u else "n/a"
            mean = s.get("mean_unsafe_prob")
            unsafe = f" {'n/a' if mean is None else f'{mean:.3f}':>9} {cell:>21}"
        return (f"{name[:24]:<24} {wr} {reward:>8} {length if length is None else round(length, 1)!s:>7} "
                f"{s['distinct_1']:>6.3f} {s['distinct_2']:>6.3f} {_pct(ref and ref['rate']):>8} "
                f"{_pct(over and over['rate']):>8}{unsafe}")
    for s in summary["policies"]:
        wtl = f"{s['wins']}/{s['ties']}/{s['losses']}"
        ci = f"{_pct(s['win_rate'])} [{_pct(s['ci'][0])}, {_pct(s['ci'][1])}]"
        lines.append(row(s["policy"], s, f"{s['n']:>4} {wtl:>10} {ci:>24} {_pct(s['lc_win_rate']):>7}"))
    blank = " " * (4 + 1 + 10 + 1 + 24 + 1 + 7)
    lines.append(row(f"{summary['baseline']} (baseline)", summary["baseline_stats"], blank))
    return "\n".join(lines)

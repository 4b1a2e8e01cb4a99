"""``palate run pipeline.yaml``: the whole loop, each stage cached by a hash of its config and inputs.

    prompts   split the prompt source into training and held-out evaluation prompts (fixed for all rounds)
    sft       supervised fine-tuning of the base model (``sft: null``: the base model is the SFT policy)
    per round r = 1..rounds (round r samples from, and starts training at, round r−1's policy):
      samples   ``sample.n`` responses per training prompt from the current policy
      judgments pairs of those responses judged by the simulated labeler panel (each labeler draws a noisy
                choice; a pair's label is the majority, per labeler group too), or by any ``palate eval``
                judge (``reward:DIR``, ``local:MODEL``) → preferences.jsonl (+ preferences.GROUP.jsonl)
      reward    a reward model on those judgments (``reward: null``: none; needed by GRPO/PPO)
      policy    DPO on the judgments (its monitor: the reward model as proxy, the panel's rubric as gold), or
                GRPO/PPO on the reward model; ``per_group: true`` also trains one policy per labeler group
      eval      the policy against the SFT policy on the held-out prompts (:func:`palate.eval.policy.evaluate`):
                win rate by the gold panel with a CI, length-controlled, and the win rate by each group's
                labelers; a per-group policy is judged by its own group
    report    ``report/report.html`` over every round (:func:`palate.eval.report.write_report`)

A stage's key hashes its section of the config, the keys of the stages it reads and the identity of local
input files; a stage whose ``stage.json`` holds the same key is skipped, so a rerun with nothing changed
trains nothing, and a change reruns that stage and the ones downstream of it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from palate.config import ConfigError, build, check_dtype, dump_yaml

log = logging.getLogger("palate.pipeline")

STAGE_FILE = "stage.json"
PIPELINE_FILE = "pipeline.json"
METHODS = ("dpo", "grpo", "ppo")
PANEL_GOLD = "palate.feedback.simulate:panel_score"


@dataclass(frozen=True)
class PromptSplit:
    path: str = "bundled:preferences"
    eval_prompts: int = 48
    """held out, never trained on"""
    train_prompts: int = 96
    """sampled and judged each round (0: all the rest)"""
    seed: int = 0


@dataclass(frozen=True)
class SampleSpec:
    n: int = 2
    """responses per prompt; every pair among them is judged"""
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    batch_size: int = 16
    seed: int = 0
    dtype: str = "auto"
    """weights the policy samples in: auto (bf16 where the CPU has AMX bf16 units or the GPU bf16, else fp32) |
    fp32 | bf16"""


@dataclass(frozen=True)
class JudgeSpec:
    kind: str = "panel"
    """panel | reward:DIR | local:MODEL | feedback (people, in the labeling app)"""
    groups: list[str] = field(default_factory=lambda: ["concise", "thorough"])
    labelers: int = 6
    """simulated labelers, split over groups"""
    noise: float = 0.3
    """each labeler's choice temperature"""
    min_votes: int = 1
    """a pair needs a majority of at least this many votes more than the other side"""
    pairs: str = "all"
    """all: every judged pair is kept | best_worst: per prompt, only the pair of the response that won most of its
    pairs against the one that won fewest (ties: skipped)"""
    seed: int = 0
    db: str | None = None
    """kind=feedback: the pairs become project ``<project>-r<round>`` in the labeling app's database; the stage waits
    until ``min_complete`` of the items have ``overlap`` judgments (or fails after ``wait_seconds``, keeping the
    labels: rerun to go on waiting), then exports them aggregated by ``aggregate``."""
    project: str = "pipeline"
    overlap: int = 3
    min_complete: float = 1.0
    wait_seconds: float = 3600.0
    poll_seconds: float = 10.0
    aggregate: str = "majority"
    """majority | dawid-skene"""


@dataclass(frozen=True)
class EvalSpec:
    judge: str = "panel"
    """the gold judge: panel | reward:DIR | local:MODEL"""
    max_new_tokens: int = 96
    temperature: float = 0.0
    """greedy"""
    repetition_penalty: float = 1.1
    batch_size: int = 16
    n_resamples: int = 2000
    dtype: str = "auto"
    """weights the answers are generated in (as ``sample.dtype``)"""


@dataclass(frozen=True)
class PipelineConfig:
    run_dir: str = "runs/pipeline"
    model: str = "bundled"
    rounds: int = 1
    threads: int | None = None
    """torch threads for every stage"""
    prompts: PromptSplit = field(default_factory=PromptSplit)
    sft: dict[str, Any] | None = field(default_factory=dict)
    """SFTConfig overrides; null: no SFT"""
    sample: SampleSpec = field(default_factory=SampleSpec)
    judge: JudgeSpec = field(default_factory=JudgeSpec)
    reward: dict[str, Any] | None = None
    """RewardConfig overrides; null: no reward model"""
    method: str = "dpo"
    """dpo | grpo | ppo"""
    policy: dict[str, Any] = field(default_factory=dict)
    """overrides of the method's config"""
    per_group: bool = False
    """also train (and judge) one policy per labeler group"""
    eval: EvalSpec = field(default_factory=EvalSpec)


def check(cfg: PipelineConfig) -> None:
    if cfg.method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {cfg.method!r}")
    if cfg.method in ("grpo", "ppo") and cfg.reward is None:
        raise ConfigError(f"method {cfg.method} trains on a reward model: give a reward: section")
    if cfg.rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {cfg.rounds}")
    if cfg.sample.n < 2:
        raise ConfigError(f"sample.n must be >= 2 (pairs are judged), got {cfg.sample.n}")
    check_dtype("sample.dtype", cfg.sample.dtype)
    check_dtype("eval.dtype", cfg.eval.dtype)
    if cfg.per_group and cfg.judge.kind != "panel":
        raise ConfigError("per_group needs labeler groups: judge.kind must be panel")
    if cfg.judge.pairs not in ("all", "best_worst"):
        raise ConfigError(f"judge.pairs must be all or best_worst, got {cfg.judge.pairs!r}")
    if cfg.judge.kind == "feedback" and not cfg.judge.db:
        raise ConfigError("judge.kind=feedback needs judge.db (the labeling app's SQLite file or database URL)")
    for section in ("run_dir", "model"):
        for name, over in (("sft", cfg.sft), ("reward", cfg.reward), ("policy", cfg.policy)):
            if over and section in over:
                raise ConfigError(f"{name}.{section} is set by the pipeline; set the top-level {section} instead")


# ----------------------------------------------------------------------------- stages and their cache


@dataclass
class Stage:
    name: str
    dir: Path
    key: str
    ran: bool
    seconds: float


def source_identity(path: str) -> Any:
    """A local file's path, size and mtime (so an edited file changes the key); other sources as named."""
    p = Path(path).expanduser()
    if p.is_file():
        st = p.stat()
        return [str(p.resolve()), st.st_size, st.st_mtime_ns]
    return path


def stage_key(name: str, spec: Any, inputs: list[Stage]) -> str:
    blob = json.dumps({"stage": name, "spec": spec, "inputs": [s.key for s in inputs]}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_stage(root: Path, name: str, spec: Any, inputs: list[Stage], work: Callable[[Path], None],
              done: list[Stage]) -> Stage:
    """Run ``work(dir)`` unless ``dir/stage.json`` already holds this key (then it is reused as it is)."""
    d = root / name
    key = stage_key(name, spec, inputs)
    marker = d / STAGE_FILE
    if marker.exists() and json.loads(marker.read_text()).get("key") == key:
        log.info("stage %s: cached (key %s)", name, key)
        st = Stage(name, d, key, False, 0.0)
    else:
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        log.info("stage %s: running (key %s)", name, key)
        t = time.perf_counter()
        work(d)
        st = Stage(name, d, key, True, time.perf_counter() - t)
        marker.write_text(json.dumps({"key": key, "spec": spec, "inputs": [s.name for s in inputs],
                                      "seconds": st.seconds}, indent=1, default=str))
        log.info("stage %s: done in %.1f s", name, st.seconds)
    done.append(st)
    return st


def merged(base: dict, over: dict | None) -> dict:
    """``over`` laid onto ``base``, sections merged key by key."""
    out = dict(base)
    for k, v in (over or {}).items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def read_jsonl(path: Path) -> list[dict]:
    from palate.data.readers import jsonl_rows

    return [row for _, _, row in jsonl_rows(path)]


# ----------------------------------------------------------------------------- stage work


def split_prompts(cfg: PipelineConfig, out: Path) -> None:
    from palate.data.readers import read_prompts

    p = cfg.prompts
    prompts = read_prompts(p.path)
    need = p.eval_prompts + (p.train_prompts or 1)
    if len(prompts) < need:
        raise ConfigError(f"prompts.path {p.path} has {len(prompts)} distinct prompts; "
                          f"{p.eval_prompts} held out + {p.train_prompts} for training need {need}")
    order = list(range(len(prompts)))
    random.Random(p.seed).shuffle(order)
    held = [prompts[i] for i in order[:p.eval_prompts]]
    rest = [prompts[i] for i in order[p.eval_prompts:]]
    train = rest[:p.train_prompts] if p.train_prompts else rest
    write_jsonl(out / "eval_prompts.jsonl", [{"id": f"eval-{i}", "prompt": x} for i, x in enumerate(held)])
    write_jsonl(out / "train_prompts.jsonl", [{"id": f"train-{i}", "prompt": x} for i, x in enumerate(train)])


def sample_responses(model_name: str, prompts_file: Path, spec: SampleSpec, seed: int, out: Path) -> None:
    from palate.data.readers import read_prompts
    from palate.models.load import inference_dtype, load_model, load_tokenizer
    from palate.rollout.generate import sample

    prompts = read_prompts(prompts_file)
    tok = load_tokenizer(model_name)
    model = load_model(model_name, dtype=inference_dtype(spec.dtype)).eval()
    got = sample(model, tok, prompts, n=spec.n, max_new_tokens=spec.max_new_tokens, temperature=spec.temperature,
                 top_p=spec.top_p, repetition_penalty=spec.repetition_penalty, seed=seed, batch_size=spec.batch_size)
    write_jsonl(out / "samples.jsonl", [{"prompt": p, "responses": [s.text for s in ss],
                                         "finished": [s.finished for s in ss]} for p, ss in zip(prompts, got)])


def panel_of(spec: JudgeSpec):
    from palate.feedback.simulate import default_panel

    return default_panel(spec.labelers, tuple(spec.groups), spec.noise)


def vote(choices: list[str], min_votes: int) -> str:
    """``a``, ``b`` or ``tie`` from labelers' "A"/"B"/"tie" choices: the side with ``min_votes`` more votes."""
    a, b = choices.count("A"), choices.count("B")
    return "a" if a - b >= min_votes else "b" if b - a >= min_votes else "tie"


def preference_row(prompt, x: str, y: str, verdict: str, **meta) -> dict:
    if verdict == "tie":
        return {"prompt": prompt, "chosen": x, "rejected": y, "tie": True, **meta}
    chosen, rejected = (x, y) if verdict == "a" else (y, x)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **meta}


def judge_samples(samples_file: Path, spec: JudgeSpec, seed: int, round_no: int, out: Path) -> None:
    """Every distinct pair of a prompt's responses judged; the panel's labelers each draw a choice (both
    orders shown half the time each) and the majority labels the pair, overall and per group."""
    rows = read_jsonl(samples_file)
    pairs = [(r["prompt"], x, y) for r in rows for i, x in enumerate(r["responses"])
             for y in r["responses"][i + 1:] if x.strip() and y.strip() and x != y]
    if not pairs:
        raise ValueError(f"{samples_file}: no pair of distinct non-empty responses to judge")
    prefs: list[dict] = []
    by_group: dict[str, list[dict]] = {}
    if spec.kind == "feedback":
        prefs = labels_from_people(pairs, spec, round_no)
    elif spec.kind == "panel":
        rng = random.Random(seed)
        panel = panel_of(spec)
        for prompt, x, y in pairs:
            choices = {}
            for lab in panel:
                if rng.random() < 0.5:
                    choices[lab.name] = lab.pairwise(prompt, x, y, rng)
                else:
                    flipped = lab.pairwise(prompt, y, x, rng)
                    choices[lab.name] = {"A": "B", "B": "A"}.get(flipped, flipped)
            votes = list(choices.values())
            prefs.append(preference_row(prompt, x, y, vote(votes, spec.min_votes), votes=choices))
            for g in spec.groups:
                gv = [choices[lab.name] for lab in panel if lab.group == g]
                by_group.setdefault(g, []).append(
                    preference_row(prompt, x, y, vote(gv, spec.min_votes), labeler_group=g))
    else:
        from palate.eval.policy import make_pair_judge

        judge, _ = make_pair_judge(spec.kind)
        verdicts = judge([p for p, _, _ in pairs], [x for _, x, _ in pairs], [y for _, _, y in pairs])
        to = {"win": "a", "loss": "b", "tie": "tie"}
        prefs = [preference_row(p, x, y, to[v], judge=spec.kind) for (p, x, y), v in zip(pairs, verdicts)
                 if v is not None]
    if spec.pairs == "best_worst":
        prefs = best_vs_worst(prefs)
        by_group = {g: best_vs_worst(v) for g, v in by_group.items()}
    write_jsonl(out / "preferences.jsonl", prefs)
    for g, rows_g in by_group.items():
        write_jsonl(out / f"preferences.{g}.jsonl", rows_g)
    counts = {"pairs": len(pairs), "labeled": len(prefs), "ties": sum(bool(r.get("tie")) for r in prefs),
              "by_group": {g: {"ties": sum(bool(r.get("tie")) for r in v)} for g, v in by_group.items()}}
    (out / "judgments.json").write_text(json.dumps(counts, indent=1))
    log.info("judged %d pairs: %d ties", counts["pairs"], counts["ties"])


def best_vs_worst(rows: list[dict]) -> list[dict]:
    """Per prompt, the judged pair (most pairs won, fewest pairs won) by its own verdict; a prompt whose
    responses all won equally, or whose extreme pair tied, gives nothing."""
    by_prompt: dict[str, list[dict]] = {}
    for r in rows:
        by_prompt.setdefault(json.dumps(r["prompt"], sort_keys=True), []).append(r)
    out = []
    for group in by_prompt.values():
        wins: dict[str, float] = {}
        for r in group:
            for t in (r["chosen"], r["rejected"]):
                wins.setdefault(t, 0.0)
            if r.get("tie"):
                wins[r["chosen"]] += 0.5
                wins[r["rejected"]] += 0.5
            else:
                wins[r["chosen"]] += 1.0
        best, worst = max(wins, key=wins.get), min(wins, key=wins.get)
        if wins[best] == wins[worst]:
            continue
        pair = next(r for r in group if {r["chosen"], r["rejected"]} == {best, worst})
        if not pair.get("tie"):
            out.append(pair)
    return out


def labels_from_people(pairs: list[tuple], spec: JudgeSpec, round_no: int) -> list[dict]:
    """Put the pairs in a pairwise project of the labeling app, wait for people's judgments, export them."""
    from sqlalchemy import select

    from palate.feedback.db import Project, open_db
    from palate.feedback.export import export_rows
    from palate.feedback.importing import create_project, import_items
    from palate.feedback.stats import project_stats

    slug = f"{spec.project}-r{round_no}"
    _, make_session = open_db(spec.db)
    with make_session() as s:
        project = s.scalar(select(Project).where(Project.slug == slug))
        if project is None:
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                cands = Path(tmp) / "candidates.jsonl"
                write_jsonl(cands, [{"prompt": p, "responses": [x, y]} for p, x, y in pairs])
                project = create_project(s, slug, "pairwise", f"pipeline round {round_no}", overlap=spec.overlap)
                import_items(s, project, cands)
            s.commit()
            log.info("labeling project %r created in %s with %d pairs: people label it in the app "
                     "(palate label serve --db %s)", slug, spec.db, len(pairs), spec.db)
    deadline = time.monotonic() + spec.wait_seconds
    while True:
        with make_session() as s:
            project = s.scalar(select(Project).where(Project.slug == slug))
            st = project_stats(s, project)
            done = st["items_complete"] / max(st["items"], 1)
            if done >= spec.min_complete:
                rows, report = export_rows(s, project, spec.aggregate)
                break
        if time.monotonic() > deadline:
            raise TimeoutError(f"project {slug!r}: {st['items_complete']} of {st['items']} items have {spec.overlap} "
                               f"judgments after {spec.wait_seconds:.0f} s (need {spec.min_complete:.0%}); "
                               "the labels are kept: rerun the pipeline to go on waiting")
        log.info("project %r: %d of %d items fully labeled; waiting", slug, st["items_complete"], st["items"])
        time.sleep(spec.poll_seconds)
    log.info("project %r exported (%s): %s", slug, spec.aggregate, json.dumps(report))
    return rows


def train_reward(cfg: PipelineConfig, start: str, prefs: Path, out: Path) -> None:
    from palate.recipes.reward import RewardConfig, train

    base = {"run_dir": str(out), "model": {"name": start}, "data": {"path": str(prefs)},
            "train": {"threads": cfg.threads}}
    train(build(RewardConfig, merged(base, cfg.reward)), overwrite=True)


def train_policy(cfg: PipelineConfig, start: str, prefs: Path, prompts: Path, reward: Path | None, out: Path) -> None:
    base: dict[str, Any] = {"run_dir": str(out), "model": {"name": start}, "train": {"threads": cfg.threads}}
    gold = "panel" if cfg.judge.kind == "panel" else None
    if cfg.method == "dpo":
        from palate.recipes.dpo import DPOConfig as Config, train
        base["data"] = {"path": str(prefs)}
        base["dpo"] = {"reward_model": str(reward) if reward else None, "gold": gold}
    else:
        if cfg.method == "grpo":
            from palate.recipes.grpo import GRPOConfig as Config, train
        else:
            from palate.recipes.ppo import PPOConfig as Config, train
        base["prompts"] = {"path": str(prompts)}
        base["reward"] = {"model": str(reward)}
        if gold:
            base["gold"] = {"function": PANEL_GOLD}
    train(build(Config, merged(base, cfg.policy)), overwrite=True)


def evaluate_round(cfg: PipelineConfig, policies: dict[str, Path], baseline: Path, prompts: Path, out: Path) -> None:
    """Win rates of each policy over the SFT policy by the gold judge, then by each group's labelers."""
    from palate.eval.policy import GenSettings, evaluate
    from palate.eval.winrate import WINRATES, compare_policies, read_winrates, write_winrates

    e = cfg.eval
    settings = GenSettings(max_new_tokens=e.max_new_tokens, temperature=e.temperature,
                           repetition_penalty=e.repetition_penalty, dtype=e.dtype)
    names = list(policies)
    evaluate([str(policies[n]) for n in names], str(prompts), str(baseline), out, judge=e.judge, settings=settings,
             batch_size=e.batch_size, n_resamples=e.n_resamples)
    data = read_winrates(out / "eval" / WINRATES)
    if cfg.judge.kind == "panel":
        from palate.eval.text import words
        from palate.feedback.simulate import group_panel, panel_preference

        judged = read_jsonl(out / "eval" / "judgments.jsonl")
        panel = panel_of(cfg.judge)
        rows = {name: [j for j in judged if j["policy"] == res["policy"]]  # evaluate's label for this policy
                for name, res in zip(names, data["results"])}
        base_len = [len(words(j["response_b"])) for j in rows[names[0]]]  # every policy: the same prompts, in order
        by: dict[str, dict[str, dict]] = {name: {} for name in names}
        for g in cfg.judge.groups:
            members = group_panel(panel, g)
            js = {name: [{"a": "win", "b": "loss", "tie": "tie"}[panel_preference(
                j["prompt"], j["response_a"], j["response_b"], members).choice] for j in rows[name]] for name in names}
            # one joint length-controlled fit over the policies, as for the gold judge (compare_policies)
            for name, res in zip(names, compare_policies(js, {n: [len(words(j["response_a"])) for j in rows[n]]
                                                               for n in names}, base_len, n_resamples=e.n_resamples)):
                by[name][g] = res
        for name, res in zip(names, data["results"]):
            res["policy"] = name
            res["by_labeler_group"] = {g: {k: v[k] for k in ("win_rate", "ci", "n", "lc_win_rate", "lc_ci")}
                                       for g, v in by[name].items()}
    write_winrates(out / "eval" / WINRATES, data["results"], baseline="sft", judge=data.get("judge"))




# ----------------------------------------------------------------------------- the pipeline


def model_of(stage: Stage) -> Path:
    return stage.dir / "final"


def run_pipeline(cfg: PipelineConfig) -> dict[str, Any]:
    """Run (or reuse) every stage; writes ``pipeline.json`` and the report; returns the pipeline summary."""
    from palate.eval.report import write_report
    from palate.infra.logging import setup_logging

    check(cfg)
    setup_logging()
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    root = Path(cfg.run_dir)
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(dump_yaml(cfg))
    t0 = time.perf_counter()
    done: list[Stage] = []
    model_id = source_identity(cfg.model)

    prompts = run_stage(root, "prompts", {**asdict(cfg.prompts), "path": source_identity(cfg.prompts.path)}, [],
                        lambda d: split_prompts(cfg, d), done)
    if cfg.sft is not None:
        from palate.recipes.sft import SFTConfig, train as train_sft

        def sft_work(d: Path) -> None:
            base = {"run_dir": str(d), "model": {"name": cfg.model}, "train": {"threads": cfg.threads}}
            train_sft(build(SFTConfig, merged(base, cfg.sft)), overwrite=True)
        sft = run_stage(root, "sft", {"model": model_id, **cfg.sft}, [], sft_work, done)
        sft_model, sft_dir = model_of(sft), sft.dir
        start_inputs = [sft]
    else:
        sft_model, sft_dir, start_inputs = Path(cfg.model), Path(cfg.model), []
    train_prompts, eval_prompts = prompts.dir / "train_prompts.jsonl", prompts.dir / "eval_prompts.jsonl"

    current, current_inputs, rounds = sft_model, start_inputs, []
    for r in range(1, cfg.rounds + 1):
        rd = root / f"round-{r}"
        seed = cfg.sample.seed + 1000 * (r - 1)
        samples = run_stage(rd, "samples", {"model": source_identity(str(current)), **asdict(cfg.sample), "seed": seed},
                            [prompts, *current_inputs],
                            lambda d: sample_responses(str(current), train_prompts, cfg.sample, seed, d), done)
        judgments = run_stage(rd, "judgments", {**asdict(cfg.judge), "round": r}, [samples],
                              lambda d: judge_samples(samples.dir / "samples.jsonl", cfg.judge,
                                                    cfg.judge.seed + 1000 * (r - 1), r, d), done)
        prefs = judgments.dir / "preferences.jsonl"
        reward = None
        if cfg.reward is not None:
            reward = run_stage(rd, "reward", cfg.reward, [judgments, *current_inputs],
                               lambda d: train_reward(cfg, str(current), prefs, d), done)
        up = [judgments, *([reward] if reward else []), *current_inputs]
        pol_spec = {"method": cfg.method, **cfg.policy, "judge": cfg.judge.kind}
        rm_dir = reward.dir if reward else None
        policy = run_stage(rd, "policy", pol_spec, up,
                           lambda d: train_policy(cfg, str(current), prefs, train_prompts, rm_dir, d), done)
        policies = {"aligned": policy.dir}  # run dirs: models load from their final/, labels are the dir names
        group_stages = []
        if cfg.per_group:
            for g in cfg.judge.groups:
                gp = judgments.dir / f"preferences.{g}.jsonl"
                st = run_stage(rd, f"policy-{g}", {**pol_spec, "group": g}, up,
                               lambda d, gp=gp: train_policy(cfg, str(current), gp, train_prompts, rm_dir, d), done)
                group_stages.append(st)
                policies[f"aligned-{g}"] = st.dir
        ev = run_stage(rd, "eval", {**asdict(cfg.eval), "policies": sorted(policies)},
                       [prompts, policy, *group_stages, *start_inputs],
                       lambda d: evaluate_round(cfg, policies, sft_dir, eval_prompts, d), done)
        rounds.append({"round": r, "policy": str(model_of(policy)), "eval": str(ev.dir)})
        current, current_inputs = model_of(policy), [policy]

    summary = {"run_dir": str(root), "rounds": rounds, "seconds": time.perf_counter() - t0,
               "stages": [{"name": str(s.dir.relative_to(root)), "key": s.key, "ran": s.ran,
                           "seconds": round(s.seconds, 1)} for s in done]}
    summary["results"] = round_results(rounds)
    (root / PIPELINE_FILE).write_text(json.dumps(summary, indent=1))
    summary["report"] = str(write_report(root))
    log.info("pipeline finished in %.0f s: %d stages ran, %d cached; report %s", summary["seconds"],
             sum(s.ran for s in done), sum(not s.ran for s in done), summary["report"])
    return summary


def round_results(rounds: list[dict]) -> list[dict]:
    """Each round's win rates over SFT (from its eval stage), for the summary and the report."""
    from palate.eval.winrate import WINRATES, read_winrates

    out = []
    for rd in rounds:
        data = read_winrates(Path(rd["eval"]) / "eval" / WINRATES)
        for res in data["results"]:
            out.append({"round": rd["round"], "policy": res["policy"], "win_rate": res["win_rate"], "ci": res["ci"],
                        "lc_win_rate": res.get("lc_win_rate"), "lc_ci": res.get("lc_ci"), "n": res["n"],
                        "by_labeler_group": res.get("by_labeler_group", {})})
    return out


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"pipeline {summary['run_dir']}: {summary['seconds']:.0f} s"]
    for s in summary["stages"]:
        lines.append(f"  {s['name']:<24} {'ran' if s['ran'] else 'cached':<7} {s['seconds']:>7.1f} s")
    for r in summary["results"]:
        groups = ", ".join(f"{g} {v['win_rate']:.1%} [{v['ci'][0]:.1%}, {v['ci'][1]:.1%}]"
                           for g, v in r["by_labeler_group"].items())
        lines.append(f"round {r['round']} {r['policy']} vs SFT (gold panel, {r['n']} held-out prompts): "
                     f"win rate {r['win_rate']:.1%} [{r['ci'][0]:.1%}, {r['ci'][1]:.1%}]"
                     + (f"; by group: {groups}" if groups else ""))
    if "report" in summary:
        lines.append(f"report: {summary['report']}")
    return "\n".join(lines)


def load_pipeline(path: str | None, overrides: list[str] | None = None) -> PipelineConfig:
    from palate.config import load_config

    return load_config(PipelineConfig, path, overrides)


__all__ = ["PipelineConfig", "run_pipeline", "load_pipeline", "format_summary"]

DEMO_PIPELINE = Path(__file__).parent / "data" / "bundled" / "demo_pipeline.yaml"

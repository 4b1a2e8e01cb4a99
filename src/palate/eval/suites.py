"""``palate eval --suite NAME``: the benchmark suites beside the win-rate evaluation (:mod:`palate.eval.policy`).

    humaneval   :func:`palate.eval.humaneval.run_humaneval`   sandboxed pass@k, one run per policy
    tasks       :func:`palate.eval.tasks.run_tasks`           task success rate, ROUGE-L, BLEU (--tasks FILE)
    mtbench     :func:`palate.eval.mtbench.run_mtbench`       1-10 grades per turn/category, pairwise vs --baseline
                (--references FastChat's reference_answer/gpt-4.jsonl, --judge-prompts its judge_prompts.jsonl)
"""

from __future__ import annotations

from pathlib import Path

from palate.eval.policy import GenSettings, label_of


def _out_for(out: str | Path, policies: list[str], policy: str) -> Path:
    return Path(out) if len(policies) == 1 else Path(out) / label_of(policy)


def run_suite(suite: str, policies: list[str], out: str | Path, *, prompts: str | None = None,
              baseline: str | None = None, tasks: str | None = None, judge: str = "panel", n_samples: int = 1,
              ks: tuple[int, ...] = (1,), limit: int | None = None, settings: GenSettings | None = None,
              device: str = "cpu", batch_size: int = 8, references: str | None = None,
              judge_prompts: str | None = None) -> str:
    """Run ``suite`` for each policy (each into OUT, or OUT/<label> for several); returns the printed summary."""
    lines = []
    if suite == "humaneval":
        from palate.eval.humaneval import format_summary, run_humaneval

        for p in policies:
            s = run_humaneval(p, _out_for(out, policies, p), problems=prompts, n_samples=n_samples, ks=ks,
                              limit=limit, settings=settings, device=device, batch_size=batch_size)
            lines.append(format_summary(s))
        return "\n".join(lines)
    if suite == "tasks":
        from palate.eval.tasks import format_summary, run_tasks

        if not tasks:
            raise ValueError("--suite tasks needs --tasks FILE")
        for p in policies:
            s = run_tasks(p, tasks, _out_for(out, policies, p), settings=settings, limit=limit, device=device,
                          batch_size=batch_size)
            lines.append(format_summary(s))
        return "\n".join(lines)
    if suite == "mtbench":
        from palate.eval.mtbench import format_summary, run_mtbench

        if not prompts:
            raise ValueError("--suite mtbench needs --prompts question.jsonl (MT-Bench format)")
        return format_summary(run_mtbench(policies, prompts, out, judge=judge, baseline=baseline, limit=limit,
                                          references=references, judge_prompts=judge_prompts, settings=settings,
                                          device=device, batch_size=batch_size))
    raise ValueError(f"--suite must be winrate, humaneval, tasks or mtbench, got {suite!r}")

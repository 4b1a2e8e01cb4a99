"""AI judges: one interface over a local model and any OpenAI-compatible endpoint.

* ``judge.compare(prompt, a, b) -> Verdict`` — which of two answers is better, as the judge saw them
  (slot A first); ``judge.rate(prompt, response, rubric) -> Score`` — a single-answer grade.
  ``judge.compare_prompts`` / ``judge.rate_prompts`` take judge prompts already written out as
  ``(system, user)`` pairs (MT-Bench's, exactly as FastChat writes them: :mod:`palate.eval.mtbench_judge`).
* :mod:`palate.judges.debias` asks every pair in both orders and combines the two verdicts
  (inconsistent ones become ties or low weights); :mod:`palate.judges.stats` measures position,
  length and self-preference bias and agreement with human labels (accuracy, Cohen's κ).
* Templates (pairwise, single-answer, reference-guided, critique/revision, the default constitution)
  are plain files in ``judges/templates/`` that users copy and edit.
"""

from palate.judges.verdicts import Score, Verdict

__all__ = ["Score", "Verdict", "make_judge"]


def make_judge(spec: str, **kw):
    """A judge from a one-string spec: ``http://host:port/v1`` (or https) for an OpenAI-compatible
    endpoint (``model=`` picks its model), anything else a model name for :class:`LocalJudge`."""
    if spec.startswith(("http://", "https://")):
        from palate.judges.http import HTTPJudge

        return HTTPJudge(spec, **kw)
    from palate.judges.local import LocalJudge

    return LocalJudge.load(spec, **{k: v for k, v in kw.items() if v is not None})

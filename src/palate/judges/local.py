"""A local model as judge: the verdict is read from one forward's next-token distribution.

The judge prompt (a template from ``judges/templates``) is rendered as the user turn, the assistant turn
is opened with ``[[`` — the start of the verdict format the template asks for — and the model's
next-token probabilities are restricted to the verdict tokens: ``A``/``B`` for a pair, the grades for a
rating. That gives a calibrated probability instead of a parsed string, in one forward, batched with
left padding. A prompt longer than ``max_length`` tokens gives a malformed verdict (counted, not cut).
"""

from __future__ import annotations

import torch

from palate.data.records import Prompt, prompt_text
from palate.data.tokenize import encode_prompt, render_prompt, uses_chat_template
from palate.judges.templates import load_template, render
from palate.judges.verdicts import Score, Verdict, grade_from_probs, malformed, verdict_from_logits
from palate.rollout.generate import left_pad

VERDICT_PREFIX = "[["
DEFAULT_RUBRIC = "Consider the helpfulness, relevance, accuracy, depth and level of detail of the response."


class LocalJudge:
    def __init__(self, model, tokenizer, *, name: str = "local", template: str = "pairwise",
                 single_template: str = "single", batch_size: int = 8, min_mass: float = 0.0,
                 max_length: int = 2048):
        self.model, self.tok, self.name = model.eval(), tokenizer, name
        self.template, self.single_template = load_template(template), load_template(single_template)
        self.batch_size, self.min_mass, self.max_length = batch_size, min_mass, max_length
        self.use_template = uses_chat_template(tokenizer)
        self.verdict_ids = (self._single_token("A"), self._single_token("B"))
        self.forwards = 0  # batched forward passes run (for timing reports)

    @classmethod
    def load(cls, name: str, *, device: str = "cpu", dtype: str = "auto", seed: int = 0, **kw) -> "LocalJudge":
        from palate.models.load import load_model, load_tokenizer

        tok = load_tokenizer(name)
        return cls(load_model(name, tokenizer=tok, device=device, dtype=dtype, seed=seed), tok, name=name, **kw)

    def _single_token(self, text: str) -> int:
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"verdict {text!r} is {len(ids)} tokens for this tokenizer; a local judge needs one")
        return ids[0]

    def _encode(self, user_text: str, system: str | None = None) -> list[int]:
        """The judge prompt as the user turn (after ``system`` as the system message, or ahead of the text for a
        model without a chat template), then the opened verdict ``[[``."""
        messages = ([{"role": "system", "content": system}] if system is not None else []) + \
            [{"role": "user", "content": user_text}]
        plain = user_text if system is None else f"{system}\n\n{user_text}"
        head = render_prompt(self.tok, messages if self.use_template else plain, self.use_template)
        if not self.use_template:
            head += "\n\nVerdict: "
        return encode_prompt(self.tok, None, self.use_template, text=head + VERDICT_PREFIX)

    @torch.inference_mode()
    def next_token_logprobs(self, encoded: list[list[int]]) -> torch.Tensor:
        """``[len(encoded), vocab]`` float32 log-probabilities of the token after each sequence."""
        device = next(self.model.parameters()).device
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        out = []
        for s in range(0, len(encoded), self.batch_size):
            ids, mask = left_pad(encoded[s : s + self.batch_size], pad)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device),
                                position_ids=positions.to(device), logits_to_keep=1).logits[:, -1].float()
            out.append(torch.log_softmax(logits, -1).cpu())
            self.forwards += 1
        return torch.cat(out)

    def compare(self, prompt: Prompt, a: str, b: str, reference: str | None = None) -> Verdict:
        return self.compare_many([(prompt, a, b, reference)])[0]

    def compare_many(self, items: list[tuple]) -> list[Verdict]:
        """Verdicts for ``(prompt, a, b[, reference])`` items, A = a shown first."""
        return self._verdicts([self._encode(render(self.template, question=prompt_text(it[0]), answer_a=it[1],
                                                   answer_b=it[2], **({"reference": it[3]} if len(it) > 3 and it[3]
                                                                      is not None else {})))
                               for it in items])

    def compare_prompts(self, prompts: list[tuple[str | None, str]]) -> list[Verdict]:
        """Verdicts for judge prompts already written out as ``(system, user)`` (e.g. MT-Bench's)."""
        return self._verdicts([self._encode(user, system) for system, user in prompts])

    def _verdicts(self, encoded: list[list[int]]) -> list[Verdict]:
        ok = [i for i, e in enumerate(encoded) if len(e) <= self.max_length]
        out: list[Verdict] = [malformed("", f"judge prompt is {len(e)} tokens > max_length {self.max_length}")
                              for e in encoded]
        if ok:
            logp = self.next_token_logprobs([encoded[i] for i in ok])
            ia, ib = self.verdict_ids
            for row, i in enumerate(ok):
                la, lb = logp[row, ia].item(), logp[row, ib].item()
                mass = float(logp[row, [ia, ib]].exp().sum())
                out[i] = verdict_from_logits(la, lb, mass=mass, min_mass=self.min_mass)
        return out

    def rate(self, prompt: Prompt, response: str, rubric: str = DEFAULT_RUBRIC, scale: tuple[int, int] = (1, 10)) -> Score:
        """Expected grade under the judge's next-token distribution restricted to the grades of ``scale``.

        A grade spelled with two tokens (``10`` = ``1``,``0``) gets ``p(1)·p(0 | 1)``, taken out of ``p(1)``;
        a second forward (prefix + first token) gives the conditional."""
        lo, hi = scale
        text = render(self.single_template, question=prompt_text(prompt), answer=response, rubric=rubric,
                      low=str(lo), high=str(hi))
        return self._grade(self._encode(text), scale)

    def rate_prompts(self, prompts: list[tuple[str | None, str]], scale: tuple[int, int] = (1, 10)) -> list[Score]:
        """:meth:`rate` for judge prompts already written out as ``(system, user)``."""
        return [self._grade(self._encode(user, system), scale) for system, user in prompts]

    def _grade(self, head: list[int], scale: tuple[int, int]) -> Score:
        lo, hi = scale
        if len(head) > self.max_length:
            return Score(None, None, scale, rationale=f"judge prompt is {len(head)} tokens > max_length {self.max_length}")
        grades = {g: self.tok(str(g), add_special_tokens=False)["input_ids"] for g in range(lo, hi + 1)}
        if any(len(t) > 2 for t in grades.values()):
            raise ValueError(f"grades of scale {scale} need more than two tokens; use a smaller scale")
        firsts = sorted({t[0] for t in grades.values() if len(t) == 2})
        logps = self.next_token_logprobs([head] + [head + [f] for f in firsts]).exp()
        p_next, cond = logps[0], {f: logps[1 + k] for k, f in enumerate(firsts)}
        probs: dict[int, float] = {}
        for g, t in grades.items():
            probs[g] = float(p_next[t[0]] * cond[t[0]][t[1]]) if len(t) == 2 else float(p_next[t[0]])
        for g, t in grades.items():  # p(first token, then end) = p(first) − p(first, then a listed second token)
            if len(t) == 1 and t[0] in cond:
                probs[g] -= sum(probs[h] for h, u in grades.items() if len(u) == 2 and u[0] == t[0])
        mass = sum(probs.values())
        return grade_from_probs(probs, scale, mass=mass, min_mass=self.min_mass)

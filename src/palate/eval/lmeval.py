"""A palate model as an lm-evaluation-harness ``LM`` (``pip install lm-eval``, or ``palate[lmeval]``), from Python:

    import lm_eval
    from palate.eval.lmeval import PalateLM      # also registers the name "palate" in lm-eval's model registry
    lm_eval.simple_evaluate(model=PalateLM("runs/dpo", batch_size=8), tasks=["hellaswag"])

(the ``lm_eval`` command line does not import palate, so ``--model palate`` works only where this module
was imported first, e.g. from a script).

    loglikelihood           (context, continuation) → (Σ log p(continuation tokens | context), greedy?):
                            the pair is tokenised together and split where the context's tokens end
                            (a trailing space of the context moves to the continuation), so the
                            continuation's tokens are the ones the model would see; an empty context is
                            replaced by the BOS (or EOS) token. Batched with right padding; only the
                            continuation positions are projected onto the vocabulary
                            (:func:`palate.models.logprobs.token_logprobs`: logit[target] − logsumexp)
    loglikelihood_rolling   (text,) → Σ log p of every token of ``text`` after a BOS/EOS prefix, in disjoint
                            windows of the model's context (``lm_eval.utils.get_rolling_token_windows``)
    generate_until          (context, {until, max_gen_toks, do_sample, temperature}) → greedy (or sampled)
                            raw continuation of ``context`` (no chat template), cut at the first stop string

Contexts longer than the model's context keep their last tokens (as lm-eval's own HF model does).
"""

from __future__ import annotations

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from palate.models.logprobs import causal_lm_parts, project, token_logprobs
from palate.rollout.generate import decode


@register_model("palate")
class PalateLM(LM):
    def __init__(self, pretrained: str = "bundled", device: str = "cpu", batch_size: int | str = 8,
                 max_length: int | None = None, seed: int = 0, model=None, tokenizer=None, **_ignored):
        super().__init__()
        if model is None:
            from palate.models.load import load_model, load_tokenizer

            tokenizer = load_tokenizer(pretrained)
            model = load_model(pretrained, tokenizer=tokenizer, device=device, seed=seed)
        self.model, self.tok = model.eval(), tokenizer
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8
        self.max_length = int(max_length or getattr(model.config, "max_position_embeddings", 2048))
        self.prefix = self.tok.bos_token_id if self.tok.bos_token_id is not None else self.tok.eos_token_id
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        self.seed = seed

    @property
    def _dev(self):
        return next(self.model.parameters()).device

    def _encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _split(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        if not context:
            return [self.prefix], self._encode(continuation)
        whole, ctx = self._encode(context + continuation), self._encode(context)
        return whole[: len(ctx)], whole[len(ctx):]

    @torch.inference_mode()
    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(Σ log p, all greedy) of each continuation after its context, batched with right padding."""
        decoder, _ = causal_lm_parts(self.model)
        out: list[tuple[float, bool]] = []
        for s in range(0, len(pairs), self.batch_size):
            chunk = pairs[s : s + self.batch_size]
            seqs = [(ctx + cont)[-(self.max_length + 1):] for ctx, cont in chunk]
            inputs = [q[:-1] for q in seqs]
            width = max(len(x) for x in inputs)
            ids = torch.full((len(inputs), width), self.pad, dtype=torch.long)
            mask = torch.zeros((len(inputs), width), dtype=torch.long)
            for i, x in enumerate(inputs):
                ids[i, : len(x)] = torch.tensor(x)
                mask[i, : len(x)] = 1
            hidden = decoder(input_ids=ids.to(self._dev), attention_mask=mask.to(self._dev)).last_hidden_state
            rows, pos, targets, sizes = [], [], [], []
            for i, ((_, cont), q) in enumerate(zip(chunk, seqs)):
                n = min(len(cont), len(q) - 1)
                rows += [i] * n
                pos += list(range(len(q) - 1 - n, len(q) - 1))
                targets += q[len(q) - n:]
                sizes.append(n)
            h = hidden[torch.tensor(rows), torch.tensor(pos)]
            t = torch.tensor(targets, device=h.device)
            lp = token_logprobs(lambda x: project(self.model, x), h, t)
            greedy = project(self.model, h).argmax(-1) == t
            k = 0
            for n in sizes:
                out.append((float(lp[k : k + n].sum()), bool(greedy[k : k + n].all())))
                k += n
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return self._score([self._split(*r.args) for r in requests])

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for r in requests:
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                self._encode(r.args[0]), self.prefix, self.max_length, 1)]
            out.append(sum(lp for lp, _ in self._score(windows)))
        return out

    @torch.inference_mode()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for r in requests:
            context, kw = r.args[0], dict(r.args[1]) if len(r.args) > 1 else {}
            until = kw.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kw.get("max_gen_toks", 256))
            ids = (self._encode(context) or [self.prefix])[-(self.max_length - max_new):]
            sampling = bool(kw.get("do_sample")) and float(kw.get("temperature", 0) or 0) > 0
            x = torch.tensor([ids])
            d = decode(self.model, x, torch.ones_like(x), max_new_tokens=max_new,
                       temperature=float(kw["temperature"]) if sampling else 0.0, eos={self.tok.eos_token_id},
                       pad=self.pad, tokenizer=self.tok, stop=tuple(u for u in until if u),
                       generator=torch.Generator().manual_seed(self.seed))
            text = self.tok.decode(d.tokens[0, : d.length[0]], skip_special_tokens=True)
            cuts = [text.find(u) for u in until if u and u in text]
            out.append(text[: min(cuts)] if cuts else text)
        return out

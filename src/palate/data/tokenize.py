"""Turn records into token ids with completion-only loss masks, using the tokenizer's chat template.

The prompt is rendered exactly as generation will see it (chat template with the generation prompt
appended), and the completion is the rest of the rendered conversation up to and including the
end-of-turn token. Training therefore teaches the model to continue precisely the text it is given
at inference time, and to stop.

Long prompts follow one rule everywhere (training, reward-model scoring and evaluation, DPO, RL), chosen
with ``data.long_prompts``:

* ``skip`` (default): a prompt that leaves no room for its response within ``max_length`` is skipped, and
  counted with its file and row;
* ``truncate_left``: the prompt is cut from the left until its responses have room (as much as the
  longest response needs, at most half of ``max_length``): whole earliest turns go first (a system
  message stays, and the kept conversation starts at a user turn), then the oldest tokens of the first
  kept message. The prompt's end, the question being answered, is kept. Counted as a truncation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from palate.data.errors import DataError, SkipLog
from palate.data.records import Demonstration, Prompt, Ranking, prompt_messages

LONG_PROMPTS = ("skip", "truncate_left")


@dataclass(frozen=True)
class Example:
    """One tokenised sequence. Tokens ``input_ids[completion_start:]`` are trained on."""

    input_ids: tuple[int, ...]
    completion_start: int
    index: int
    """position of the record this came from"""
    prompt: Prompt | None = field(default=None, compare=False)
    """the prompt as cut (truncate_left), else None"""

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_targets(self) -> int:
        return len(self.input_ids) - self.completion_start


def uses_chat_template(tokenizer, chat_template: bool | None = None) -> bool:
    """``chat_template=None`` means: use it when the tokenizer has one."""
    has = bool(getattr(tokenizer, "chat_template", None))
    if chat_template and not has:
        raise ValueError("chat_template=True but the tokenizer has no chat template")
    return has if chat_template is None else chat_template


def render_prompt(tokenizer, prompt: Prompt, chat_template: bool) -> str:
    """The exact text a model sees before it starts answering."""
    if chat_template:
        return tokenizer.apply_chat_template(prompt_messages(prompt), tokenize=False, add_generation_prompt=True)
    if not isinstance(prompt, str):
        raise ValueError("chat-message prompts need a tokenizer with a chat template")
    return prompt


def render_completion(tokenizer, prompt: Prompt, response: str, chat_template: bool, head: str | None = None) -> str:
    """The text after :func:`render_prompt` (``head``, if already rendered) that a good model would
    produce, ending with its stop token."""
    if not chat_template:
        return response + (tokenizer.eos_token or "")
    messages = prompt_messages(prompt)
    head = head if head is not None else render_prompt(tokenizer, prompt, chat_template)
    full = tokenizer.apply_chat_template(
        messages + [{"role": "assistant", "content": response}], tokenize=False
    )
    if not full.startswith(head):
        raise ValueError(
            "the chat template renders the conversation differently from its generation prompt; "
            "palate cannot separate prompt from completion with this template"
        )
    tail = full[len(head):]
    eos = tokenizer.eos_token
    if eos and eos in tail:  # drop what follows the end-of-turn token (usually a newline)
        tail = tail[: tail.rindex(eos) + len(eos)]
    return tail


def encode_prompt(tokenizer, prompt: Prompt, chat_template: bool, text: str | None = None) -> list[int]:
    text = text if text is not None else render_prompt(tokenizer, prompt, chat_template)
    # A chat template writes its own special tokens; plain text gets the tokenizer's (e.g. BOS).
    return tokenizer(text, add_special_tokens=not chat_template)["input_ids"]


def check_long_prompts(mode: str) -> None:
    if mode not in LONG_PROMPTS:
        raise ValueError(f"long_prompts must be one of {', '.join(LONG_PROMPTS)}, got {mode!r}")


def fit_prompt(tokenizer, prompt: Prompt, budget: int, use_template: bool) -> tuple[Prompt, list[int], str] | None:
    """``prompt`` cut from the left until it renders to at most ``budget`` tokens: ``(prompt, ids, how)``.

    Whole earliest turns go first (a leading system message stays; the kept conversation starts at a user
    turn), then the oldest tokens of the first kept message (of the text, for a plain-text prompt). The
    prompt keeps its type (text stays text). ``None`` when even that cannot fit (e.g. a system message
    alone fills the budget). ``how`` says what was cut (empty when nothing was).
    """
    ids = encode_prompt(tokenizer, prompt, use_template)
    if len(ids) <= budget:
        return prompt, ids, ""
    if not use_template:
        if not isinstance(prompt, str):
            raise ValueError("chat-message prompts need a tokenizer with a chat template")
        return _cut_text(tokenizer, prompt, budget, lambda text: (text, encode_prompt(tokenizer, text, False)), "")
    msgs = prompt_messages(prompt)
    system = msgs[:1] if msgs[0]["role"] == "system" else []
    turns = msgs[len(system):]
    dropped = 0
    while len(turns) > 1 and len(ids) > budget:
        turns = turns[1:]
        dropped += 1
        while len(turns) > 1 and turns[0]["role"] != "user":
            turns = turns[1:]
            dropped += 1
        ids = encode_prompt(tokenizer, system + turns, True)
    how = f"{dropped} earlier message{'' if dropped == 1 else 's'} dropped" if dropped else ""
    if len(ids) <= budget:
        return system + turns, ids, how

    def rebuild(text: str) -> tuple[Prompt, list[int]]:
        kept = system + [{**turns[0], "content": text}] + turns[1:]
        return (text if isinstance(prompt, str) else kept), encode_prompt(tokenizer, kept, True)

    return _cut_text(tokenizer, turns[0]["content"], budget, rebuild, how)


def _cut_text(tokenizer, text: str, budget: int, rebuild, how: str) -> tuple[Prompt, list[int], str] | None:
    """Drop the oldest tokens of ``text`` until ``rebuild(text)``'s ids fit ``budget`` (re-measured each time:
    decoded text can tokenise a little differently)."""
    tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
    _, ids = rebuild(text)
    keep = len(tokens)
    for _ in range(16):
        keep -= len(ids) - budget
        if keep <= 0:
            return None
        prompt, ids = rebuild(tokenizer.decode(tokens[-keep:]))
        if len(ids) <= budget:
            cut = f"first {len(tokens) - keep} tokens of a message cut"
            return prompt, ids, f"{how}, {cut}" if how else cut
    return None


def encode_responses(
    tokenizer,
    prompt: Prompt,
    responses: list[str],
    max_length: int,
    *,
    skips: SkipLog,
    where: tuple[str, int],
    index: int,
    use_template: bool,
    truncate_completion: bool = True,
    fields: list[str] | None = None,
    long_prompts: str = "skip",
) -> list[Example] | None:
    """Tokenise one prompt (once) with each of its responses: one :class:`Example` per response.

    A long prompt is skipped or cut from the left (``long_prompts``, see the module docstring; a cut
    prompt is kept in each example's ``prompt``). Returns ``None`` when the record cannot fit (prompt
    skipped, or a completion is too long and ``truncate_completion`` is off); every skip and truncation
    is counted in ``skips`` with its row.
    """
    check_long_prompts(long_prompts)
    src, row = where
    try:
        head = render_prompt(tokenizer, prompt, use_template)
        prompt_ids = encode_prompt(tokenizer, prompt, use_template, text=head)
        completions = [render_completion(tokenizer, prompt, r, use_template, head=head) for r in responses]
    except ValueError as e:
        raise DataError(src, row, "prompt", str(e)) from None
    completion_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in completions]
    cut_prompt = None
    if long_prompts == "truncate_left":
        budget = max_length - min(max(len(c) for c in completion_ids), max_length // 2)
        if len(prompt_ids) > budget:
            fitted = fit_prompt(tokenizer, prompt, budget, use_template)
            if fitted is None:
                skips.skip(src, row, "prompt", f"prompt cannot be cut to fit max_length ({len(prompt_ids)} tokens, "
                           f"{budget} available)")
                return None
            cut_prompt, new_ids, how = fitted
            skips.truncate(src, row, "prompt", f"prompt cut from the left ({len(prompt_ids)} -> {len(new_ids)} "
                           f"tokens: {how})")
            head = render_prompt(tokenizer, cut_prompt, use_template)
            prompt_ids = new_ids
            completion_ids = [tokenizer(render_completion(tokenizer, cut_prompt, r, use_template, head=head),
                                        add_special_tokens=False)["input_ids"] for r in responses]
    elif len(prompt_ids) >= max_length:
        skips.skip(src, row, "prompt", f"prompt longer than max_length ({len(prompt_ids)} >= {max_length} tokens)")
        return None
    room = max_length - len(prompt_ids)
    out = []
    for j, ids in enumerate(completion_ids):
        if len(ids) > room:
            name = fields[j] if fields else "response"
            reason = f"completion longer than room left by max_length ({len(ids)} > {room} tokens)"
            if not truncate_completion:
                skips.skip(src, row, name, reason)
                return None
            skips.truncate(src, row, name, reason)
            ids = ids[:room]
        out.append(Example(tuple(prompt_ids) + tuple(ids), len(prompt_ids), index, cut_prompt))
    return out


def fit_prompts(
    tokenizer,
    prompts: list[Prompt],
    max_length: int,
    *,
    room: int,
    long_prompts: str,
    skips: SkipLog,
    where: list[tuple[str, int]],
    chat_template: bool | None = None,
) -> list[tuple[int, Prompt]]:
    """Prompts to generate answers to (RL), by the same rule: a prompt is too long when it leaves fewer than
    ``room`` tokens (the longest answer) of ``max_length``; it is then skipped or cut from the left to
    ``max_length - room`` tokens, counted in ``skips`` under ``where[i]``. Returns ``(i, prompt)`` of each
    prompt kept, as cut."""
    check_long_prompts(long_prompts)
    if room >= max_length:
        raise ValueError(f"answers of up to {room} tokens leave no room for a prompt in max_length {max_length}")
    use_template = uses_chat_template(tokenizer, chat_template)
    out = []
    for i, prompt in enumerate(prompts):
        src, row = where[i]
        n = len(encode_prompt(tokenizer, prompt, use_template))
        if n + room <= max_length:
            out.append((i, prompt))
            continue
        if long_prompts == "skip":
            skips.skip(src, row, "prompt", f"prompt longer than max_length leaves for the answer ({n} + {room} > "
                       f"{max_length} tokens)")
            continue
        fitted = fit_prompt(tokenizer, prompt, max_length - room, use_template)
        if fitted is None:
            skips.skip(src, row, "prompt", f"prompt cannot be cut to fit max_length ({n} tokens, "
                       f"{max_length - room} available)")
            continue
        skips.truncate(src, row, "prompt", f"prompt cut from the left ({n} -> {len(fitted[1])} tokens: {fitted[2]})")
        out.append((i, fitted[0]))
    return out


def _where(rec, i: int) -> tuple[str, int]:
    return rec.meta.get("source", "<records>"), rec.meta.get("row", i + 1)


def encode_demonstrations(
    tokenizer,
    records: list[Demonstration],
    max_length: int,
    *,
    skips: SkipLog,
    chat_template: bool | None = None,
    truncate_completion: bool = True,
    long_prompts: str = "skip",
) -> list[Example]:
    """Tokenise demonstrations into :class:`Example` s no longer than ``max_length``.

    A prompt that leaves no room for a completion token is skipped or cut from the left
    (``long_prompts``); an over-long completion is cut to fit (``truncate_completion``) or skipped. Each
    case is counted in ``skips`` with its row.
    """
    use_template = uses_chat_template(tokenizer, chat_template)
    out = []
    for i, rec in enumerate(records):
        encoded = encode_responses(tokenizer, rec.prompt, [rec.response], max_length, skips=skips, where=_where(rec, i),
                                   index=i, use_template=use_template, truncate_completion=truncate_completion,
                                   long_prompts=long_prompts)
        if encoded:
            out.extend(encoded)
    return out


def encode_groups(
    tokenizer,
    records: list,
    max_length: int,
    *,
    skips: SkipLog,
    chat_template: bool | None = None,
    truncate_completion: bool = True,
    long_prompts: str = "skip",
) -> list[list[Example]]:
    """Tokenise comparison records into groups of examples sharing one prompt.

    A :class:`Preference` becomes ``[chosen, rejected]``; a :class:`Ranking` its responses best first.
    Each example's ``index`` is the record's position in ``records``.
    """
    use_template = uses_chat_template(tokenizer, chat_template)
    out = []
    for i, rec in enumerate(records):
        if isinstance(rec, Ranking):
            responses = [rec.responses[j] for j in rec.order]
            fields = [f"responses[{j}]" for j in rec.order]
        else:
            responses, fields = [rec.chosen, rec.rejected], ["chosen", "rejected"]
        encoded = encode_responses(tokenizer, rec.prompt, responses, max_length, skips=skips, where=_where(rec, i),
                                   index=i, use_template=use_template, truncate_completion=truncate_completion,
                                   fields=fields, long_prompts=long_prompts)
        if encoded:
            out.append(encoded)
    return out

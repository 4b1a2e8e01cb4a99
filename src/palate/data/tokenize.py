"""Turn records into token ids with completion-only loss masks, using the tokenizer's chat template.

The prompt is rendered exactly as generation will see it (chat template with the generation prompt
appended), and the completion is the rest of the rendered conversation up to and including the
end-of-turn token. Training therefore teaches the model to continue precisely the text it is given
at inference time, and to stop.
"""

from __future__ import annotations

from dataclasses import dataclass

from palate.data.errors import DataError, SkipLog
from palate.data.records import Demonstration, Prompt, Ranking, prompt_messages


@dataclass(frozen=True)
class Example:
    """One tokenised sequence. Tokens ``input_ids[completion_start:]`` are trained on."""

    input_ids: tuple[int, ...]
    completion_start: int
    index: int  # position of the record this came from

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
) -> list[Example] | None:
    """Tokenise one prompt (once) with each of its responses: one :class:`Example` per response.

    Returns ``None`` when the record cannot fit (prompt leaves no room, or a completion is too long and
    ``truncate_completion`` is off); every skip and truncation is counted in ``skips`` with its row.
    """
    src, row = where
    try:
        head = render_prompt(tokenizer, prompt, use_template)
        prompt_ids = encode_prompt(tokenizer, prompt, use_template, text=head)
        completions = [render_completion(tokenizer, prompt, r, use_template, head=head) for r in responses]
    except ValueError as e:
        raise DataError(src, row, "prompt", str(e)) from None
    if len(prompt_ids) >= max_length:
        skips.skip(src, row, "prompt", f"prompt longer than max_length ({len(prompt_ids)} >= {max_length} tokens)")
        return None
    room = max_length - len(prompt_ids)
    out = []
    for j, completion in enumerate(completions):
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        if len(completion_ids) > room:
            name = fields[j] if fields else "response"
            reason = f"completion longer than room left by max_length ({len(completion_ids)} > {room} tokens)"
            if not truncate_completion:
                skips.skip(src, row, name, reason)
                return None
            skips.truncate(src, row, name, reason)
            completion_ids = completion_ids[:room]
        out.append(Example(tuple(prompt_ids) + tuple(completion_ids), len(prompt_ids), index))
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
) -> list[Example]:
    """Tokenise demonstrations into :class:`Example` s no longer than ``max_length``.

    A prompt that leaves no room for a completion token is skipped; an over-long completion is cut
    to fit (``truncate_completion``) or skipped. Each case is counted in ``skips`` with its row.
    """
    use_template = uses_chat_template(tokenizer, chat_template)
    out = []
    for i, rec in enumerate(records):
        encoded = encode_responses(tokenizer, rec.prompt, [rec.response], max_length, skips=skips, where=_where(rec, i),
                                   index=i, use_template=use_template, truncate_completion=truncate_completion)
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
                                   fields=fields)
        if encoded:
            out.append(encoded)
    return out

"""Tokenisation with the real SmolLM2 tokenizer: exact prompt/completion split, loss mask, truncation."""

import pytest

from palate.data.batching import IGNORE, collate
from palate.data.errors import DataError, Skip, SkipLog
from palate.data.readers import read_demonstrations
from palate.data.records import Demonstration
from palate.data.tokenize import encode_demonstrations, render_completion, render_prompt
from tests.conftest import write_jsonl

SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


def generation_prompt(user: str) -> str:
    """SmolLM2's chat template with the generation prompt, written out by hand."""
    return f"{SYSTEM}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def decode(tok, token_ids) -> str:
    return tok.decode(list(token_ids), skip_special_tokens=False)


def test_tokenizer_facts_these_tests_rely_on(tok):
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token_id == tok.eos_token_id == 2
    assert tok("abc")["input_ids"] == ids(tok, "abc")  # no BOS added to plain text


def test_prompt_and_completion_decode_to_the_chat_template(tok):
    rec = Demonstration("What is 2+2?", "2+2 is 4.")
    skips = SkipLog()
    (ex,) = encode_demonstrations(tok, [rec], max_length=256, skips=skips)
    assert decode(tok, ex.input_ids[: ex.completion_start]) == generation_prompt("What is 2+2?")
    assert decode(tok, ex.input_ids[ex.completion_start:]) == "2+2 is 4.<|im_end|>"  # no trailing newline
    assert ex.input_ids[-1] == tok.eos_token_id
    assert ex.index == 0
    assert skips.skips == [] and skips.truncations == []


def test_completion_start_is_the_prompt_token_count(tok):
    (ex,) = encode_demonstrations(tok, [Demonstration("Hi", "Hello!")], max_length=256, skips=SkipLog())
    prompt_ids = ids(tok, generation_prompt("Hi"))
    completion_ids = ids(tok, "Hello!<|im_end|>")
    assert ex.completion_start == len(prompt_ids)
    assert ex.input_ids == tuple(prompt_ids + completion_ids)
    assert ex.n_targets == len(completion_ids) == len(ex) - len(prompt_ids)
    # "Hello!<|im_end|>" is "Hello", "!", "<|im_end|>" in SmolLM2's vocabulary
    assert [decode(tok, [t]) for t in completion_ids] == ["Hello", "!", "<|im_end|>"]


def test_collate_labels_mask_exactly_prompt_and_padding(tok):
    recs = [Demonstration("Hi", "Hello!"), Demonstration("Tell me a long story please", "Once upon a time, the end.")]
    e0, e1 = encode_demonstrations(tok, recs, max_length=256, skips=SkipLog())
    assert len(e0) < len(e1)
    batch = collate([e0, e1], pad_id=tok.pad_token_id)
    width = len(e1)
    assert batch.labels.shape == (2, width)
    for row, ex in enumerate((e0, e1)):
        labels = batch.labels[row].tolist()
        expected = [IGNORE] * ex.completion_start + list(ex.input_ids[ex.completion_start:]) + [IGNORE] * (width - len(ex))
        assert labels == expected
        assert [i for i, v in enumerate(labels) if v != IGNORE] == list(range(ex.completion_start, len(ex)))
    # the trained tokens of row 0 decode to exactly the reply and its stop token
    kept = [t for t in batch.labels[0].tolist() if t != IGNORE]
    assert decode(tok, kept) == "Hello!<|im_end|>"


def test_chat_message_prompt(tok):
    prompt = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}]
    (ex,) = encode_demonstrations(tok, [Demonstration(prompt, "Yo.")], max_length=256, skips=SkipLog())
    expected = "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert decode(tok, ex.input_ids[: ex.completion_start]) == expected
    assert decode(tok, ex.input_ids[ex.completion_start:]) == "Yo.<|im_end|>"


def test_render_helpers(tok):
    assert render_prompt(tok, "Hi", chat_template=True) == generation_prompt("Hi")
    assert render_completion(tok, "Hi", "Yo", chat_template=True) == "Yo<|im_end|>"
    assert render_prompt(tok, "Hi", chat_template=False) == "Hi"
    assert render_completion(tok, "Hi", "Yo", chat_template=False) == "Yo<|im_end|>"


# ----------------------------------------------------------------------------- truncation


def _records(tmp_path, rows):
    return read_demonstrations(write_jsonl(tmp_path / "d.jsonl", rows))


def test_prompt_longer_than_max_length_is_a_counted_skip(tmp_path, tok):
    recs = _records(tmp_path, [{"prompt": "Hi", "response": "Hello!"}, {"prompt": "word " * 200, "response": "ok"}])
    skips = SkipLog()
    out = encode_demonstrations(tok, recs, max_length=64, skips=skips)
    assert [e.index for e in out] == [0]
    assert len(skips.skips) == 1
    s = skips.skips[0]
    assert (s.source, s.row, s.field) == (str(tmp_path / "d.jsonl"), 2, "prompt")
    n_prompt = len(ids(tok, generation_prompt("word " * 200)))
    assert s.reason == f"prompt longer than max_length ({n_prompt} >= 64 tokens)"


def test_prompt_filling_max_length_exactly_is_skipped_and_one_less_keeps_one_token(tok):
    n_prompt = len(ids(tok, generation_prompt("Hi")))
    rec = Demonstration("Hi", "Hello there, friend.", meta={"source": "mem", "row": 1})
    skips = SkipLog()
    assert encode_demonstrations(tok, [rec], max_length=n_prompt, skips=skips) == []
    assert [(s.row, s.field) for s in skips.skips] == [(1, "prompt")]

    skips = SkipLog()
    (ex,) = encode_demonstrations(tok, [rec], max_length=n_prompt + 1, skips=skips)
    assert len(ex) == n_prompt + 1 and ex.n_targets == 1
    assert decode(tok, ex.input_ids[ex.completion_start:]) == "Hello"
    assert len(skips.truncations) == 1


def test_long_completion_is_truncated_to_exactly_max_length(tmp_path, tok):
    response = " ".join(f"item{i}" for i in range(100))
    recs = _records(tmp_path, [{"prompt": "List items", "response": response}])
    full_prompt = ids(tok, generation_prompt("List items"))
    full_completion = ids(tok, response + "<|im_end|>")
    skips = SkipLog()
    (ex,) = encode_demonstrations(tok, recs, max_length=48, skips=skips)
    assert len(ex) == 48
    assert ex.input_ids == tuple(full_prompt + full_completion)[:48]
    assert ex.completion_start == len(full_prompt)
    assert skips.skips == []
    room = 48 - len(full_prompt)
    assert skips.truncations == [Skip(str(tmp_path / "d.jsonl"), 1, "response",
                                      f"completion longer than room left by max_length ({len(full_completion)} > {room} tokens)")]
    assert "truncated 1 of" in skips.summary() and "completion longer than room left by max_length" in skips.summary()


def test_long_completion_is_skipped_without_truncate_completion(tmp_path, tok):
    response = " ".join(f"item{i}" for i in range(100))
    recs = _records(tmp_path, [{"prompt": "List items", "response": response}, {"prompt": "Hi", "response": "Yo"}])
    skips = SkipLog()
    out = encode_demonstrations(tok, recs, max_length=48, skips=skips, truncate_completion=False)
    assert [e.index for e in out] == [1]
    assert skips.truncations == []
    assert [(s.row, s.field) for s in skips.skips] == [(1, "response")]
    assert skips.skips[0].reason.startswith("completion longer than room left by max_length")


def test_completion_exactly_fitting_is_not_truncated(tok):
    n = len(ids(tok, generation_prompt("Hi"))) + len(ids(tok, "Hello!<|im_end|>"))
    skips = SkipLog()
    (ex,) = encode_demonstrations(tok, [Demonstration("Hi", "Hello!")], max_length=n, skips=skips)
    assert len(ex) == n and ex.input_ids[-1] == tok.eos_token_id
    assert skips.truncations == [] and skips.skips == []


def test_skip_without_meta_uses_record_position(tok):
    skips = SkipLog()
    encode_demonstrations(tok, [Demonstration("Hi", "Yo"), Demonstration("word " * 100, "x")], max_length=32, skips=skips)
    assert [(s.source, s.row, s.field) for s in skips.skips] == [("<records>", 2, "prompt")]


def test_skip_names_the_file_even_if_rows_have_a_source_column(tmp_path, tok):
    recs = _records(tmp_path, [{"prompt": "word " * 100, "response": "x", "source": "sharegpt"},
                               {"prompt": "Hi", "response": "Yo"}])
    skips = SkipLog()
    encode_demonstrations(tok, recs, max_length=32, skips=skips)
    assert [(s.source, s.row) for s in skips.skips] == [(str(tmp_path / "d.jsonl"), 1)]


# ----------------------------------------------------------------------------- plain text


def test_plain_text_mode_is_prompt_then_response_and_eos(tok):
    rec = Demonstration("Question: 2+2?\nAnswer:", " 4")
    (ex,) = encode_demonstrations(tok, [rec], max_length=64, skips=SkipLog(), chat_template=False)
    prompt_ids = tok("Question: 2+2?\nAnswer:")["input_ids"]
    completion_ids = ids(tok, " 4<|im_end|>")
    assert ex.input_ids == tuple(prompt_ids + completion_ids)
    assert ex.completion_start == len(prompt_ids)
    assert decode(tok, ex.input_ids[: ex.completion_start]) == "Question: 2+2?\nAnswer:"
    assert decode(tok, ex.input_ids[ex.completion_start:]) == " 4<|im_end|>"
    assert "<|im_start|>" not in decode(tok, ex.input_ids)


def test_plain_text_mode_rejects_chat_message_prompts(tok):
    rec = Demonstration([{"role": "user", "content": "Hi"}], "Yo", meta={"source": "f.jsonl", "row": 3})
    with pytest.raises(DataError) as ei:
        encode_demonstrations(tok, [rec], max_length=64, skips=SkipLog(), chat_template=False)
    assert (ei.value.source, ei.value.row, ei.value.field) == ("f.jsonl", 3, "prompt")
    assert "chat template" in ei.value.message


# ----------------------------------------------------------------------------- long prompts: truncate_left


def test_fit_prompt_drops_earliest_turns_whole_keeping_the_system_message(tok):
    from palate.data.tokenize import fit_prompt

    system = {"role": "system", "content": "Be terse."}
    turns = [{"role": "user", "content": "one " * 30}, {"role": "assistant", "content": "two " * 30},
             {"role": "user", "content": "three " * 30}, {"role": "assistant", "content": "four"},
             {"role": "user", "content": "And five?"}]
    last_two = "<|im_start|>assistant\nfour<|im_end|>\n<|im_start|>user\nAnd five?<|im_end|>\n<|im_start|>assistant\n"
    head = "<|im_start|>system\nBe terse.<|im_end|>\n"
    budget = len(ids(tok, head + "<|im_start|>user\n" + "three " * 30 + "<|im_end|>\n" + last_two))
    prompt, got, how = fit_prompt(tok, [system, *turns], budget, True)
    # "two" (an assistant turn) cannot open the kept conversation: it goes with "one"
    assert prompt == [system, *turns[2:]] and how == "2 earlier messages dropped" and len(got) == budget
    prompt, got, how = fit_prompt(tok, [system, *turns], budget - 1, True)
    assert prompt == [system, *turns[4:]] and how == "4 earlier messages dropped"
    assert decode(tok, got) == head + "<|im_start|>user\nAnd five?<|im_end|>\n<|im_start|>assistant\n"


def test_fit_prompt_cuts_the_oldest_tokens_of_a_single_turn_and_keeps_text_as_text(tok):
    from palate.data.tokenize import fit_prompt

    text = " ".join(f"w{i}" for i in range(200))
    prompt, got, how = fit_prompt(tok, text, 64, True)
    assert isinstance(prompt, str) and text.endswith(prompt) and len(prompt) < len(text)
    assert len(got) <= 64 and decode(tok, got) == generation_prompt(prompt)
    assert how.startswith("first ") and how.endswith(" tokens of a message cut")
    # plain-text mode: the text itself is cut, its last tokens kept
    prompt, got, _ = fit_prompt(tok, text, 40, False)
    assert text.endswith(prompt) and len(got) <= 40 and decode(tok, got) == prompt
    # a system message alone longer than the budget cannot fit: None, the caller skips the row
    assert fit_prompt(tok, [{"role": "system", "content": "rule " * 100}, {"role": "user", "content": "Hi"}], 50, True) is None


def test_truncate_left_cuts_the_prompt_to_leave_the_answers_room_counted(tmp_path, tok):
    question = "Which of these is the longest river?"
    earlier = [{"role": "user", "content": "rivers " * 80}, {"role": "assistant", "content": "Noted."}]
    recs = _records(tmp_path, [{"prompt": earlier + [{"role": "user", "content": question}], "response": "The Nile."},
                               {"prompt": "Hi", "response": "Hello!"}])
    n_prompt = len(ids(tok, tok.apply_chat_template(recs[0].prompt, tokenize=False, add_generation_prompt=True)))
    assert n_prompt > 64
    skips = SkipLog()
    assert [e.index for e in encode_demonstrations(tok, recs, max_length=64, skips=skips)] == [1]  # skip: the default
    assert [(s.row, s.reason) for s in skips.skips] == [(1, f"prompt longer than max_length ({n_prompt} >= 64 tokens)")]
    skips = SkipLog()
    first, second = encode_demonstrations(tok, recs, max_length=64, skips=skips, long_prompts="truncate_left")
    assert decode(tok, first.input_ids[: first.completion_start]) == generation_prompt(question)
    assert decode(tok, first.input_ids[first.completion_start:]) == "The Nile.<|im_end|>"
    assert first.prompt == [{"role": "user", "content": question}] and second.prompt is None
    (s,) = skips.truncations
    assert (s.row, s.field) == (1, "prompt")
    assert s.reason == f"prompt cut from the left ({n_prompt} -> {first.completion_start} tokens: 2 earlier messages dropped)"
    with pytest.raises(ValueError, match="long_prompts must be one of skip, truncate_left, got 'cut'"):
        encode_demonstrations(tok, recs, max_length=64, skips=SkipLog(), long_prompts="cut")

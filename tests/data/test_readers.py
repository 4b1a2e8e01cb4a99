"""Readers: every row shape, every source kind, and every malformed case naming file, line and field."""

import json
import re

import pytest

from palate.data.errors import DataError, Skip, SkipLog
from palate.data.readers import read_demonstrations, read_preferences, read_prompts, read_rankings, read_ratings
from palate.data.records import Demonstration, Preference
from tests.conftest import write_jsonl

# A 2-turn HH conversation: the prompt is everything before the last "\n\nAssistant:" turn.
HH_HEAD = "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: What is 2+2?"
HH_CHOSEN = HH_HEAD + "\n\nAssistant: 2+2 is 4."
HH_REJECTED = HH_HEAD + "\n\nAssistant: I don't know."
HH_PROMPT = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "What is 2+2?"},
]


def _err(excinfo) -> DataError:
    return excinfo.value


# ----------------------------------------------------------------------------- demonstrations: shapes


def test_prompt_response_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"prompt": "What is 1+1?", "response": "2"},
        {"prompt": "Capital of France?", "response": "Paris."},
    ])
    recs = read_demonstrations(path)
    assert recs == [Demonstration("What is 1+1?", "2"), Demonstration("Capital of France?", "Paris.")]
    assert [r.meta["row"] for r in recs] == [1, 2]
    assert all(r.meta["source"] == str(path) for r in recs)


def test_completion_is_an_alias_of_response(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Say hi", "completion": "hi"}])
    (rec,) = read_demonstrations(path)
    assert (rec.prompt, rec.response) == ("Say hi", "hi")
    assert "completion" not in rec.meta  # the alias is a used field, not an extra


def test_response_wins_over_completion_when_both_present(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "response": "from response", "completion": "from completion"}])
    (rec,) = read_demonstrations(path)
    assert rec.response == "from response"


def test_chat_messages_prompt_is_all_but_last_assistant_message(tmp_path):
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
    ]
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": msgs}])
    (rec,) = read_demonstrations(path)
    assert rec.prompt == msgs[:4]
    assert rec.response == "Blue."


def test_messages_not_ending_with_assistant_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "user", "content": "Hi"}]}])
    with pytest.raises(DataError) as ei:
        read_demonstrations(path)
    assert (ei.value.source, ei.value.row, ei.value.field) == (str(path), 1, "messages")
    assert "end with an assistant turn" in str(ei.value)


def test_message_without_content_names_the_message(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}])
    with pytest.raises(DataError) as ei:
        read_demonstrations(path)
    assert str(ei.value).startswith(f"{path} line 1 field 'messages[0]': ")


def test_hh_transcript_in_chosen_as_demonstration(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}])
    (rec,) = read_demonstrations(path)
    assert rec.prompt == HH_PROMPT
    assert rec.response == "2+2 is 4."
    assert "rejected" not in rec.meta


def test_row_with_no_recognisable_shape_lists_fields(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError) as ei:
        read_demonstrations(path)
    assert ei.value.row == 1
    assert "fields present: answer, question" in str(ei.value)
    assert "columns=" in str(ei.value)


# ----------------------------------------------------------------------------- preferences: shapes


def test_hh_preference_split_at_last_assistant_turn(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}])
    (rec,) = read_preferences(path)
    assert rec.prompt == HH_PROMPT
    assert rec.chosen == "2+2 is 4."
    assert rec.rejected == "I don't know."
    assert (rec.weight, rec.margin) == (1.0, None)
    assert (rec.meta["source"], rec.meta["row"]) == (str(path), 1)


def test_hh_preference_with_different_prompts_is_a_counted_skip(tmp_path):
    other = "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: What is 3+3?\n\nAssistant: 6."
    path = write_jsonl(tmp_path / "hh.jsonl", [
        {"chosen": HH_CHOSEN, "rejected": HH_REJECTED},
        {"chosen": HH_CHOSEN, "rejected": other},
    ])
    skips = SkipLog()
    recs = read_preferences(path, skips=skips)
    assert len(recs) == 1 and recs[0].meta["row"] == 1
    assert skips.skips == [Skip(str(path), 2, "rejected", "chosen and rejected transcripts have different prompts")]
    assert skips.seen == 2


def test_not_an_hh_transcript_is_an_error(tmp_path):
    # starts with "Human:" but has no Assistant turn to split at
    path = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": "Human: hello", "rejected": "Human: hello"}])
    with pytest.raises(DataError) as ei:
        read_preferences(path)
    assert (ei.value.row, ei.value.field) == (1, "chosen")


def test_preferences_prompt_chosen_rejected_text(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Best fruit?", "chosen": "Mango.", "rejected": "Rocks."}])
    (rec,) = read_preferences(path)
    assert rec == Preference("Best fruit?", "Mango.", "Rocks.")
    assert (rec.weight, rec.margin) == (1.0, None)


def test_preferences_trl_conversational_lists(tmp_path):
    prompt = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Rate my poem."}]
    path = write_jsonl(tmp_path / "p.jsonl", [{
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": "It is lovely."}],
        "rejected": [{"role": "assistant", "content": "Bad."}],
    }])
    (rec,) = read_preferences(path)
    assert rec.prompt == prompt
    assert (rec.chosen, rec.rejected) == ("It is lovely.", "Bad.")


def test_trl_completion_list_must_end_with_assistant(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{
        "prompt": "p", "chosen": [{"role": "user", "content": "x"}], "rejected": "y",
    }])
    with pytest.raises(DataError) as ei:
        read_preferences(path)
    assert (ei.value.row, ei.value.field) == (1, "chosen")
    assert "assistant" in ei.value.message


def test_weight_and_margin(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "a", "chosen": "x", "rejected": "y", "weight": 2, "margin": 0.5},
        {"prompt": "b", "chosen": "x", "rejected": "y", "weight": None},
    ])
    r1, r2 = read_preferences(path)
    assert (r1.weight, r1.margin) == (2.0, 0.5)
    assert isinstance(r1.weight, float)
    assert (r2.weight, r2.margin) == (1.0, None)


@pytest.mark.parametrize("name,value,got", [("weight", "heavy", "str"), ("margin", True, "bool")])
def test_weight_or_margin_of_wrong_type(tmp_path, name, value, got):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "a", "chosen": "x", "rejected": "y"},
        {"prompt": "a", "chosen": "x", "rejected": "y", name: value},
    ])
    with pytest.raises(DataError) as ei:
        read_preferences(path)
    assert str(ei.value) == f"{path} line 2 field '{name}': expected a number, got {got}"


def test_preference_empty_rejected_is_a_counted_skip(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "a", "chosen": "x", "rejected": " "},
        {"prompt": "b", "chosen": "x", "rejected": "y"},
    ])
    skips = SkipLog()
    recs = read_preferences(path, skips=skips)
    assert [r.prompt for r in recs] == ["b"]
    assert skips.skips == [Skip(str(path), 1, "rejected", "empty completion")]


# ----------------------------------------------------------------------------- columns mapping


def test_columns_mapping_for_demonstrations(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "Why?", "answer": "Because.", "id": 7}])
    (rec,) = read_demonstrations(path, columns={"prompt": "question", "response": "answer"})
    assert (rec.prompt, rec.response) == ("Why?", "Because.")
    assert rec.meta == {"source": str(path), "row": 1, "id": 7}


def test_columns_mapping_for_messages(tmp_path):
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}]
    path = write_jsonl(tmp_path / "d.jsonl", [{"conversation": conv}])
    (rec,) = read_demonstrations(path, columns={"messages": "conversation"})
    assert (rec.prompt, rec.response) == (conv[:1], "Hey")


def test_columns_mapping_for_preferences(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"q": "Best?", "good": "A", "bad": "B", "w": 3}])
    (rec,) = read_preferences(path, columns={"prompt": "q", "chosen": "good", "rejected": "bad", "weight": "w"})
    assert (rec.prompt, rec.chosen, rec.rejected, rec.weight) == ("Best?", "A", "B", 3.0)
    assert rec.meta == {"source": str(path), "row": 1}


def test_mapped_column_missing_names_the_file_column(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"q": "Best?", "good": "A", "worse": "B"}])
    with pytest.raises(DataError) as ei:
        read_preferences(path, columns={"prompt": "q", "chosen": "good", "rejected": "bad"})
    assert str(ei.value) == f"{path} line 1 field 'bad': missing field (fields present: good, q, worse)"


def test_unknown_column_name_and_bad_on_error_are_rejected(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "response": "r"}])
    with pytest.raises(ValueError, match="unknown column names \\['answer'\\]"):
        read_demonstrations(path, columns={"answer": "a"})
    with pytest.raises(ValueError, match="on_error"):
        read_demonstrations(path, on_error="ignore")


# ----------------------------------------------------------------------------- other source kinds

ROWS = [{"prompt": "one", "response": "1", "lang": "en"}, {"prompt": "two", "response": "2", "lang": "en"}]


def test_json_list_file(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(ROWS))
    recs = read_demonstrations(path)
    assert [(r.prompt, r.response) for r in recs] == [("one", "1"), ("two", "2")]
    assert [r.meta["row"] for r in recs] == [1, 2]
    assert recs[0].meta["source"] == str(path)


def test_json_object_holding_one_list(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"version": 2, "data": ROWS}))
    assert [r.response for r in read_demonstrations(path)] == ["1", "2"]


def test_json_list_with_a_non_object_names_the_row(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([ROWS[0], "oops"]))
    with pytest.raises(DataError) as ei:
        read_demonstrations(path)
    assert str(ei.value) == f"{path} row 2: expected a JSON object, got str"


def test_hf_dataset_saved_to_disk(tmp_path):
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    recs = read_demonstrations(tmp_path / "ds")
    assert [(r.prompt, r.response) for r in recs] == [("one", "1"), ("two", "2")]
    assert [(r.meta["source"], r.meta["row"], r.meta["lang"]) for r in recs] == [
        (str(tmp_path / "ds"), 1, "en"), (str(tmp_path / "ds"), 2, "en")]


def test_hf_dataset_dict_saved_to_disk_uses_split(tmp_path):
    import datasets

    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_list(ROWS),
        "test": datasets.Dataset.from_list([{"prompt": "three", "response": "3"}]),
    })
    dd.save_to_disk(str(tmp_path / "dd"))
    assert [r.response for r in read_demonstrations(tmp_path / "dd", split="test")] == ["3"]
    with pytest.raises(DataError, match="no split 'validation'; splits are \\['test', 'train'\\]"):
        read_demonstrations(tmp_path / "dd", split="validation")


def test_parquet_file(tmp_path):
    import datasets

    path = tmp_path / "p.parquet"
    datasets.Dataset.from_list([
        {"prompt": "Best fruit?", "chosen": "Mango.", "rejected": "Rocks.", "weight": 0.5},
    ]).to_parquet(str(path))
    (rec,) = read_preferences(path)
    assert (rec.prompt, rec.chosen, rec.rejected, rec.weight) == ("Best fruit?", "Mango.", "Rocks.", 0.5)
    assert (rec.meta["source"], rec.meta["row"]) == (str(path), 1)


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("hello")
    with pytest.raises(DataError, match="unsupported file type '.txt'"):
        read_demonstrations(path)


def test_bundled_unknown_name():
    with pytest.raises(FileNotFoundError, match="no bundled dataset 'no_such_set'; available:"):
        read_demonstrations("bundled:no_such_set")


def test_hub_name_not_available_offline_is_a_data_error():
    # conftest sets HF_HUB_OFFLINE=1, so this must fail quickly without reaching the network
    with pytest.raises(DataError) as ei:
        read_demonstrations("palate-tests-nobody/no-such-dataset")
    assert ei.value.source == "palate-tests-nobody/no-such-dataset"
    assert "Hub" in str(ei.value)
    assert "not a file or directory here" in str(ei.value)


# ----------------------------------------------------------------------------- malformed rows


def test_bad_json_names_line_counting_blank_lines(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"prompt": "a", "response": "b"},
        "",  # blank line 2 is skipped but still counted
        "   ",
        '{"prompt": "c", "response": ',  # line 4
    ])
    with pytest.raises(DataError) as ei:
        read_demonstrations(path)
    e = ei.value
    assert (e.source, e.row, e.field) == (str(path), 4, None)
    assert str(e).startswith(f"{path} line 4: invalid JSON (")


def test_blank_lines_do_not_shift_row_numbers(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ["", {"prompt": "a", "response": "b"}, "", "", {"prompt": "c", "response": "d"}])
    assert [r.meta["row"] for r in read_demonstrations(path)] == [2, 5]


def test_json_array_instead_of_object(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "response": "b"}, '["a", "b"]'])
    with pytest.raises(DataError) as ei:
        read_demonstrations(path)
    assert str(ei.value) == f"{path} line 2: expected a JSON object, got list"


def test_missing_field_lists_fields_present(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "c", "answer": "d", "id": 3}])
    with pytest.raises(DataError) as ei:
        read_demonstrations(path)
    assert str(ei.value) == f"{path} line 2 field 'response': missing field (fields present: answer, id, prompt)"


def test_null_field_counts_as_missing(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "c", "response": None}])
    with pytest.raises(DataError) as ei:
        read_demonstrations(path)
    assert (ei.value.row, ei.value.field) == (1, "response")
    assert "missing field" in ei.value.message


def test_wrong_type_response(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "response": 42}])
    with pytest.raises(DataError) as ei:
        read_demonstrations(path)
    assert str(ei.value) == f"{path} line 1 field 'response': expected text, got int"


def test_wrong_type_prompt(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": {"text": "a"}, "response": "b"}])
    with pytest.raises(DataError) as ei:
        read_demonstrations(path)
    assert str(ei.value) == f"{path} line 1 field 'prompt': expected text or a list of chat messages, got dict"


def test_empty_prompt_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "  \n", "response": "b"}])
    with pytest.raises(DataError) as ei:
        read_demonstrations(path)
    assert str(ei.value) == f"{path} line 2 field 'prompt': empty prompt"


def test_empty_completion_is_a_counted_skip(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"prompt": "a", "response": "b"},
        {"prompt": "c", "response": "   "},
        {"prompt": "e", "response": "f"},
    ])
    skips = SkipLog()
    recs = read_demonstrations(path, skips=skips)
    assert [r.prompt for r in recs] == ["a", "e"]
    assert skips.skips == [Skip(str(path), 2, "response", "empty completion")]
    assert skips.seen == 3
    summary = skips.summary()
    assert "skipped 1 of 3 rows: 1 empty completion" in summary
    assert f"{path} line 2 field 'response': empty completion" in summary
    assert skips.as_dict()["skipped_by_reason"] == {"empty completion": 1}


def test_empty_completion_via_alias_names_completion_field(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "completion": ""}, {"prompt": "b", "completion": "x"}])
    skips = SkipLog()
    read_demonstrations(path, skips=skips)
    assert skips.skips == [Skip(str(path), 1, "completion", "empty completion")]


def test_on_error_skip_counts_structural_errors_and_keeps_other_rows(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"prompt": "a", "response": "b"},
        {"prompt": "c"},
        {"prompt": "e", "response": 5},
        {"prompt": "g", "response": "h"},
    ])
    skips = SkipLog()
    recs = read_demonstrations(path, on_error="skip", skips=skips)
    assert [r.prompt for r in recs] == ["a", "g"]
    assert skips.skips == [
        Skip(str(path), 2, "response", "missing field (fields present: prompt)"),
        Skip(str(path), 3, "response", "expected text, got int"),
    ]
    assert "skipped 2 of 4 rows" in skips.summary()


def test_on_error_skip_still_raises_file_level_errors(tmp_path):
    """Bad JSON has a row and is skipped; a broken .json file has no row and cannot be skipped."""
    path = tmp_path / "d.json"
    path.write_text("[{")
    with pytest.raises(DataError, match="invalid JSON"):
        read_demonstrations(path, on_error="skip")


def test_every_row_unusable(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "response": ""}, {"prompt": "b", "response": " "}])
    skips = SkipLog()
    with pytest.raises(DataError) as ei:
        read_demonstrations(path, skips=skips)
    assert ei.value.source == str(path)
    assert "no usable rows (2 read)" in str(ei.value)
    assert "2 empty completion" in str(ei.value)
    assert len(skips.skips) == 2


def test_every_row_unusable_with_on_error_skip(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"x": 1}, {"y": 2}])
    with pytest.raises(DataError, match="no usable rows \\(2 read\\)"):
        read_demonstrations(path, on_error="skip")


# ----------------------------------------------------------------------------- meta


def test_meta_carries_provenance_and_scalar_extras(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{
        "prompt": "a", "response": "b",
        "id": "ex-1", "score": 0.5, "flag": True, "n": 3,
        "tags": ["x", "y"],  # not a scalar: dropped
        "meta": {"labeler": "L7", "group": "g2"},  # merged in
    }])
    (rec,) = read_demonstrations(path)
    assert rec.meta == {"source": str(path), "row": 1, "id": "ex-1", "score": 0.5, "flag": True, "n": 3,
                        "labeler": "L7", "group": "g2"}


def test_a_source_column_does_not_replace_provenance(tmp_path):
    """Many datasets have a 'source' column (e.g. which corpus a row came from); skips must still name the file."""
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"prompt": "a", "response": "b", "source": "sharegpt"},
        {"prompt": "c", "response": "d", "meta": {"row": 99}},
    ])
    r1, r2 = read_demonstrations(path)
    assert (r1.meta["source"], r1.meta["row"]) == (str(path), 1)
    assert (r2.meta["source"], r2.meta["row"]) == (str(path), 2)


def test_a_source_column_does_not_replace_provenance_in_preferences(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "chosen": "x", "rejected": "y", "source": "ultrachat", "row": 7}])
    (rec,) = read_preferences(path)
    assert (rec.meta["source"], rec.meta["row"]) == (str(path), 1)


# ----------------------------------------------------------------------------- compressed files (data as shipped)

_OPENERS = {".gz": "gzip", ".bz2": "bz2", ".xz": "lzma"}


def _compressed(path, rows_or_text, suffix):
    import importlib

    text = rows_or_text if isinstance(rows_or_text, str) else "".join(json.dumps(r) + "\n" for r in rows_or_text)
    target = path.with_name(path.name + suffix)
    with importlib.import_module(_OPENERS[suffix]).open(target, "wb") as f:
        f.write(text.encode("utf-8"))
    return target


HH_ROWS = [
    {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Best fruit?\n\nAssistant: Mango.",
     "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Best fruit?\n\nAssistant: Rocks."},
    {"chosen": "\n\nHuman: Capital of France?\n\nAssistant: Paris.",
     "rejected": "\n\nHuman: Capital of France?\n\nAssistant: Lyon."},
]


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz"])
def test_every_reader_reads_compressed_jsonl(tmp_path, suffix):
    prefs = read_preferences(_compressed(tmp_path / "train.jsonl", HH_ROWS, suffix))
    assert [(p.prompt[-1]["content"], p.chosen, p.rejected) for p in prefs] == [
        ("Best fruit?", "Mango.", "Rocks."), ("Capital of France?", "Paris.", "Lyon.")]
    assert prefs[1].meta == {"source": str(tmp_path / f"train.jsonl{suffix}"), "row": 2}
    demos = read_demonstrations(_compressed(tmp_path / "d.jsonl", [{"prompt": "a", "response": "b"}], suffix))
    assert [(d.prompt, d.response) for d in demos] == [("a", "b")]
    ranks = read_rankings(_compressed(tmp_path / "k.jsonl", [{"prompt": "p", "responses": ["x", "y"], "order": [1, 0]}],
                                      suffix))
    assert ranks[0].order == [1, 0]
    ratings = read_ratings(_compressed(tmp_path / "r.jsonl", [{"prompt": "p", "response": "x", "score": 1}], suffix))
    assert ratings[0].score == 1.0
    assert read_prompts(_compressed(tmp_path / "q.jsonl", [{"prompt": "p1"}, {"prompt": "p2"}], suffix)) == ["p1", "p2"]


@pytest.mark.parametrize("suffix", [".gz", ".xz"])
def test_compressed_json_list_file(tmp_path, suffix):
    path = _compressed(tmp_path / "d.json", json.dumps([{"prompt": "a", "response": "b"}]), suffix)
    assert [d.response for d in read_demonstrations(path)] == ["b"]


def test_compressed_jsonl_errors_name_the_file_and_line(tmp_path):
    path = _compressed(tmp_path / "train.jsonl", json.dumps(HH_ROWS[0]) + "\n" + '{"chosen": "x"}\n', ".gz")
    with pytest.raises(DataError) as ei:
        read_preferences(path)
    assert str(ei.value).startswith(f"{path} line 2 field 'rejected': missing field")


def test_truncated_gzip_is_a_data_error_naming_the_file(tmp_path):
    good = _compressed(tmp_path / "t.jsonl", HH_ROWS * 200, ".gz")
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match=rf"^{re.escape(str(cut))}: cannot decompress after line [0-9]+"):
        read_preferences(cut)


def test_compressed_csv_reads_through_datasets(tmp_path):
    path = _compressed(tmp_path / "d.csv", "prompt,response\nHi,Hello\n", ".gz")
    assert [(d.prompt, d.response) for d in read_demonstrations(path)] == [("Hi", "Hello")]


def test_unsupported_compressed_type_names_both_suffixes(tmp_path):
    path = _compressed(tmp_path / "d.txt", "hello", ".gz")
    with pytest.raises(DataError, match=r"unsupported file type '\.txt\.gz'"):
        read_demonstrations(path)


def test_zst_reads_with_zstandard_or_says_what_to_install(tmp_path):
    import importlib.util

    path = tmp_path / "d.jsonl.zst"
    if importlib.util.find_spec("zstandard") is None:
        path.write_bytes(b"\x28\xb5\x2f\xfd")  # a zstd frame's magic number: never decompressed here
        with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: a \.zst file needs the zstandard package"):
            read_demonstrations(path)
    else:
        import zstandard

        path.write_bytes(zstandard.ZstdCompressor().compress(b'{"prompt": "a", "response": "b"}\n'))
        assert [d.response for d in read_demonstrations(path)] == ["b"]

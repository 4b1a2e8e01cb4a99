"""Build train.jsonl.gz / test.jsonl.gz: multi-turn dialogues in Anthropic HH-RLHF's shipped format,
made from palate's own bundled data (see README.md). Deterministic: rerun it to get the same bytes.

    .venv/bin/python tests/data/hh-format/make.py
"""

import gzip
import json
import random
from pathlib import Path

HERE = Path(__file__).parent
BUNDLED = HERE.parents[2] / "src" / "palate" / "data" / "bundled"
SEED = 23
# earlier exchanges before the judged turn: 0 for 45% of the dialogues, 1 for 38%, 2 for 10%, 3 for 5%, 4 for 2%
EARLIER = [0] * 45 + [1] * 38 + [2] * 10 + [3] * 5 + [4] * 2


def read(name: str) -> list[dict]:
    rows = [json.loads(line) for line in (BUNDLED / f"{name}.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r["category"] != "refusal"]  # helpfulness only


def transcript(turns: list[tuple[str, str]]) -> str:
    return "".join(f"\n\nHuman: {h}\n\nAssistant: {a}" for h, a in turns)


def dialogues(prefs: list[dict], demos: list[dict], rng: random.Random) -> list[dict]:
    rows = []
    for p in prefs:
        earlier = [(d["prompt"], d["response"]) for d in (demos.pop() for _ in range(rng.choice(EARLIER)))]
        rows.append({"chosen": transcript(earlier + [(p["prompt"], p["chosen"])]),
                     "rejected": transcript(earlier + [(p["prompt"], p["rejected"])])})
    return rows


def write(path: Path, rows: list[dict]) -> None:
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows).encode("utf-8"))


def main() -> None:
    rng = random.Random(SEED)
    prefs, demos = read("preferences"), read("demonstrations")
    rng.shuffle(prefs)
    rng.shuffle(demos)
    train = dialogues(prefs[:98], demos, rng)
    test = dialogues(prefs[98:148], demos, rng)
    # Two rows with the quirks of real HH data, which the reader skips with a count:
    d = demos.pop()
    train.insert(40, {"chosen": transcript([(d["prompt"], d["response"])]),
                      "rejected": transcript([(d["prompt"], "")])})  # an empty final answer
    a, b, q = demos.pop(), demos.pop(), prefs[148]
    train.insert(70, {"chosen": transcript([(a["prompt"], a["response"]), (q["prompt"], q["chosen"])]),
                      "rejected": transcript([(b["prompt"], b["response"]), (q["prompt"], q["rejected"])])})  # prompts differ
    write(HERE / "train.jsonl.gz", train)
    write(HERE / "test.jsonl.gz", test)
    print(f"train {len(train)} rows, test {len(test)} rows")


if __name__ == "__main__":
    main()

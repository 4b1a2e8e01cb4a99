"""Every documented command runs, in the order a reader meets it.

The README, then the site's pages in their navigation order (mkdocs.yml): each ```bash block's lines are run as a
reader would type them, in one working directory (``examples/`` and ``src/`` of the repository are linked into
it), so a command that needs an earlier one's output (``runs/demo-rm`` for ``palate grpo``) finds it only if the
docs ran that earlier command first. Each ``palate`` line gets smoke-size overrides appended (fewer steps, prompts
and new tokens: :data:`SMOKE`); ``torchrun``/``accelerate launch`` lines run with their launcher and 2 processes.
Servers (``palate serve``, ``palate label serve``) start on a free port, must answer, then stop.

One substitution keeps the run short: palate's model cache (``$PALATE_CACHE``, where the bundled model's
safetensors copy lives) holds a tiny random model with the bundled tokenizer and chat template, so ``bundled``
names a 6M-parameter model here. The real 135M model runs end to end in tests/e2e.

Files a reader brings (their own ``pairs.jsonl``, ``my.jsonl`` ...) are written from the bundled data before the
run (:data:`READER_FILES`); a line that cannot run here says why in :data:`NOT_RUN`, and a line of the docs that
is neither run nor listed there fails the test, so a new documented command is run from the day it is written.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.feedback.helpers import postgres_url, reset_postgres

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.timeout(1800)


def reader_order() -> list[Path]:
    """README.md, then every page of mkdocs.yml's nav in order."""
    text = (REPO / "mkdocs.yml").read_text(encoding="utf-8")  # only its nav: other keys hold python tags
    nav = yaml.safe_load(re.search(r"^nav:\n(?:[ -].*\n)+", text, re.M).group(0))["nav"]
    pages: list[str] = []

    def walk(items):
        for item in items:
            for value in item.values() if isinstance(item, dict) else [item]:
                walk(value) if isinstance(value, list) else pages.append(value)

    walk(nav)
    return [REPO / "README.md"] + [REPO / "docs" / p for p in pages if (REPO / "docs" / p).exists()]


def documented_lines() -> list[tuple[str, str]]:
    """``(file, line)`` in reader order: every non-empty line of a ```bash block (continuation lines joined,
    comments dropped) and every ```python block whole, marked by a leading ``python:``."""
    out = []
    for path in reader_order():
        where = str(path.relative_to(REPO))
        for kind, block in re.findall(r"```(bash|python)\n(.*?)```", path.read_text(encoding="utf-8"), re.S):
            if kind == "python":
                out.append((where, "python:" + block))
                continue
            for line in block.replace("\\\n", " ").splitlines():
                line = re.sub(r"\s+", " ", re.split(r"(?:^|\s+)#\s", line, maxsplit=1)[0]).strip()
                if line:
                    out.append((where, line))
    return out


# Lines that are not run here, and why. Each must still be in the docs (a stale entry fails).
NOT_RUN = {
    "make demo": "the suite runs `palate demo` (docs/guides/pipeline.md); `make` itself would rebuild the venv",
    "make test": "this is the test suite",
    "make docs": "tests/docs/test_docs_site.py runs `mkdocs build --strict`",
    ".venv/bin/mkdocs serve": "a development server for the docs; the built site is tested",
    'pip install "psycopg[binary]"': "installed with palate's dev extras",
    'huggingface-cli download Anthropic/hh-rlhf --repo-type dataset --include "helpful-base/*" --local-dir hh-rlhf':
        "a download (no network here): the suite stands tests/data/hh-format's files in the same format in for them",
    "palate rm data.path=labeled.jsonl run_dir=runs/rm-rlaif":
        "needs a judge stronger than the bundled 135M model, whose verdicts on these pairs flip with the order "
        "(position bias), so every pair comes out a tie and the reward model has nothing to train on (the guide "
        "says so); judge -> preference JSONL is tested with a scripted HTTP judge (tests/judges/test_http_judge.py) "
        "and palate rm on preference JSONL throughout tests/recipes",
    "palate sft model.name=HuggingFaceTB/SmolLM2-360M-Instruct data.path=my.jsonl lora.enabled=true":
        "downloads a model from the Hugging Face Hub (no network here); Hub names are tested offline in "
        "tests/models/test_load.py",
}

# Appended to a documented line by its command: smoke size, never a change of what the line does.
TRAIN = ["train.max_steps=2", "train.save_every=-1", "train.eval_every=0"]
SMOKE = {
    "sft": TRAIN, "rm": TRAIN, "dpo": TRAIN, "kto": TRAIN,
    "grpo": ["train.max_steps=1", "train.save_every=-1", "rollout.max_new_tokens=8", "prompts.eval_max=2",
             "grpo.prompts_per_step=2"],
    "ppo": ["train.max_steps=1", "train.save_every=-1", "rollout.max_new_tokens=8", "prompts.eval_max=2",
            "ppo.prompts_per_step=2", "ppo.minibatches=1"],
    "best-of-n": ["max_prompts=2", "sampling.n=2", "sampling.max_new_tokens=8", "train.max_steps=1"],
    "constitutional": ["max_prompts=2", "max_new_tokens=8"],
    "run": ["sft.train.max_steps=1", "prompts.eval_prompts=4", "prompts.train_prompts=4", "sample.max_new_tokens=8"],
    "eval": ["--limit", "2", "--max-new-tokens", "8"],
    "redteam": ["--limit", "2", "--max-new-tokens", "8"],
    "judge": ["--limit", "2"],
    "chat": ["--max-new-tokens", "8"],
    "rl-eval": ["--samples", "2", "--max-new-tokens", "8"],
}
SERVERS = ("serve", "label serve")
# Lines run with the real bundled model: their output feeds a step that needs real text. Simulated labelers
# judge by relevance, length and structure, and a random model's candidates (always max_new_tokens of noise)
# tie on all three, so the labeling guide's export would hold only ties.
REAL_MODEL = ("palate label generate bundled ",)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_reader_files(ws: Path) -> None:
    """The files the docs assume a reader has: small slices of the bundled data in the documented formats."""
    pairs = [json.loads(x) for x in (REPO / "src/palate/data/bundled/preferences.jsonl").read_text().splitlines()[:24]]
    demos = [json.loads(x) for x in (REPO / "src/palate/data/bundled/demonstrations.jsonl").read_text().splitlines()[:24]]
    _write_jsonl(ws / "pairs.jsonl", [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
    _write_jsonl(ws / "rows.jsonl", [{"prompt": p["prompt"], "response": p["chosen"]} for p in pairs[:6]])
    _write_jsonl(ws / "ranks.jsonl", [{"prompt": p["prompt"], "responses": [p["rejected"], p["chosen"], "I don't know."],
                                       "order": [1, 0, 2]} for p in pairs])
    _write_jsonl(ws / "gold.jsonl", [{"prompt": p["prompt"], "responses": [p["chosen"], p["rejected"]], "answer": 0}
                                     for p in pairs[:3]])
    _write_jsonl(ws / "my.jsonl", demos)
    with gzip.open(ws / "my.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(d) + "\n" for d in demos)
    hh = ws / "hh-rlhf" / "helpful-base"  # what the tutorial downloads; the same file format, not HH-RLHF's rows
    hh.mkdir(parents=True)
    for name in ("train.jsonl.gz", "test.jsonl.gz"):
        shutil.copy(REPO / "tests" / "data" / "hh-format" / name, hh / name)
    (ws / "guide.txt").write_text("Prefer the answer that is correct, then the one that is shorter.\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(args: list[str]) -> str:
    """``palate label generate ...`` -> ``label generate``; ``palate sft ...`` -> ``sft``."""
    return " ".join(args[1:3]) if len(args) > 2 and args[1] == "label" else args[1]


class Reader:
    """One working directory and the servers started in it; runs documented lines in order."""

    def __init__(self, ws: Path, env: dict[str, str]):
        self.ws, self.env = ws, env
        self.ran: set[str] = set()
        self.served: dict[int, subprocess.Popen] = {}  # documented port -> the server answering for it here
        self.ports: dict[subprocess.Popen, int] = {}
        self.servers: list[subprocess.Popen] = []
        self.not_run: list[str] = []  # lines for a PostgreSQL server when none is configured

    def run(self, where: str, line: str) -> None:
        if line in self.ran:  # the reader ran this very line before; its output is there
            return
        line = self._substitute(line)
        if line is None:
            return
        if line.startswith("python:"):
            self._python(where, line[len("python:"):])
        elif not re.search(r"(?:^|-m )palate\b", line):
            self._shell(where, line)
        else:
            self._palate(where, line)
        self.ran.add(line)

    def _substitute(self, line: str) -> str | None:
        db = postgres_url()
        if "$DB" in line:
            if not db:  # CI sets it (.ci/run starts PostgreSQL); without it these lines alone are not run
                self.not_run.append(line)
                return None
            line = line.replace('"$DB"', shlex.quote(db)).replace("$DB", shlex.quote(db))
        for documented, proc in self.served.items():
            line = line.replace(f"127.0.0.1:{documented}", f"127.0.0.1:{self.ports[proc]}")
        return line.replace("--host 0.0.0.0", "--host 127.0.0.1")  # a test server listens on loopback only

    def _shell(self, where: str, line: str) -> None:
        if line.startswith("export "):
            name, _, value = line[len("export "):].partition("=")
            if name == "DB":  # the PostgreSQL URL: the suite's own server, emptied, stands in for db.internal
                url = postgres_url()
                if url:
                    reset_postgres(url)
                return
            self.env[name] = os.path.expandvars(value)
            return
        done = subprocess.run(["bash", "-c", line], cwd=self.ws, env=self.env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, f"{where}: {line!r} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"

    def _python(self, where: str, code: str) -> None:
        done = subprocess.run([sys.executable, "-c", code], cwd=self.ws, env=self.env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"{where}: python block failed:\n{code}\n{done.stderr[-4000:]}"

    def _palate(self, where: str, line: str) -> None:
        args = shlex.split(line)
        launcher: list[str] = []
        if args[0] in ("torchrun", "accelerate"):
            at = args.index("-m")
            launcher, args = args[:at], ["palate"] + args[at + 2:]
            launcher[0] = str(BIN / launcher[0])
            launcher += ["-m", "palate"]
        cmd = _command(args)
        if cmd in SERVERS:
            return self._serve(where, args)
        stdin = None
        if cmd == "chat" and len([a for a in args[2:] if not a.startswith("-")]) == 1:
            stdin = "What is tea?\n/quit\n"  # the interactive chat: one question, then leave
        full = (launcher or [str(BIN / "palate")]) + args[1:] + SMOKE.get(cmd, [])
        env = self.env
        if line.startswith(REAL_MODEL):
            env = {k: v for k, v in env.items() if k != "PALATE_CACHE"}
        done = subprocess.run(full, cwd=self.ws, env=env, input=stdin, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, (f"{where}: {line!r} exited {done.returncode}:\n"
                                      f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}")

    def _serve(self, where: str, args: list[str]) -> None:
        documented = int(args[args.index("--port") + 1]) if "--port" in args else 8000
        port = _free_port()
        rest = [a for i, a in enumerate(args[1:]) if a != "--port" and (i == 0 or args[i] != "--port")]
        with open(self.ws / f"server-{port}.log", "w") as log:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen([str(BIN / "palate"), *rest, "--port", str(port)], cwd=self.ws, env=self.env,
                                    stdout=log, stderr=subprocess.STDOUT)
        self.servers.append(proc)
        self.ports[proc] = port
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5):
                    break
            except urllib.error.HTTPError:  # it answered (e.g. 401/404): it is up
                break
            except OSError:
                pass
            assert proc.poll() is None, f"{where}: {' '.join(args)!r} exited {proc.returncode}:\n" + \
                (self.ws / f"server-{port}.log").read_text()[-4000:]
            assert time.monotonic() < deadline, f"{where}: {' '.join(args)!r} did not answer on port {port}"
            time.sleep(0.5)
        if _command(args) == "serve":  # later lines that call 127.0.0.1:<documented> reach this server, as a
            previous = self.served.get(documented)  # reader's would once the one before it on that port stopped
            if previous is not None:
                self._stop(previous)
            self.served[documented] = proc
        else:  # a labeling server: it answered; stop it so the next one may open the same database
            self._stop(proc)

    def _stop(self, proc: subprocess.Popen) -> None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        for proc in self.servers:
            if proc.poll() is None:
                self._stop(proc)


def tiny_cache(path: Path) -> Path:
    """A palate model cache whose bundled model is a tiny random one with the bundled tokenizer."""
    from palate.models.load import load_tokenizer, tiny_model

    target = path / "smollm2-135m-instruct"
    tok = load_tokenizer("tiny")
    tiny_model(tok).save_pretrained(target)
    tok.save_pretrained(target)
    return path


def test_not_run_entries_are_still_documented():
    lines = {line for _, line in documented_lines()}
    assert not set(NOT_RUN) - lines, f"NOT_RUN names lines the docs no longer have: {set(NOT_RUN) - lines}"


def test_every_example_is_run_by_a_documented_command():
    lines = " ".join(line for _, line in documented_lines())
    examples = [p.relative_to(REPO).as_posix() for p in (REPO / "examples").rglob("*") if p.is_file()]
    skipped = {"examples/accelerate/deepspeed_zero2.yaml": "DeepSpeed is not installed here",
               "examples/accelerate/deepspeed_zero3.yaml": "refused with its reason (tests/infra/test_distributed.py)",
               "examples/ray/grpo_ray.yaml": "needs the ray extra (tests/rollout/test_ray.py runs Ray when installed)",
               "examples/tasks_demo.jsonl": None, "examples/rewards.py": None}
    missing = [e for e in examples if e not in lines and e not in skipped]
    assert not missing, f"examples no documented command runs: {missing}"


def test_examples_say_what_they_need_first():
    """An example that reads another run's output names the command that writes it in its opening comment."""
    for path in sorted((REPO / "examples").glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
        body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
        for needed in sorted(set(re.findall(r"\b(runs/[\w.-]+)", body))):
            run_dir = yaml.safe_load(text).get("run_dir")
            if needed == run_dir:
                continue
            assert needed in header or "palate rm examples/rm_demo.yaml" in header, \
                f"{path.name} reads {needed} but its header does not say which command writes it"


def test_every_documented_line_runs(tmp_path):
    ws = tmp_path / "reader"
    ws.mkdir()
    for name in ("examples", "src"):
        (ws / name).symlink_to(REPO / name)
    write_reader_files(ws)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PALATE_CACHE": str(tiny_cache(tmp_path / "cache")),
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PALATE_TRACEBACK", None)
    reader = Reader(ws, env)
    ran, failed = 0, []
    try:
        for where, line in documented_lines():
            if line in NOT_RUN:
                continue
            try:  # go on after a failure: one report lists every line that does not run
                reader.run(where, line)
            except AssertionError as e:
                failed.append(str(e))
            ran += 1
    finally:
        reader.close()
    assert not failed, f"{len(failed)} of {ran} documented lines failed:\n\n" + "\n\n".join(failed)
    assert ran > 60
    shutil.rmtree(ws / "runs", ignore_errors=True)

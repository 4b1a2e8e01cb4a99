import json
import os
import re
import shutil
import xml.dom.minidom
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from palate.cli import app
from palate.eval.report import render, write_report
from palate.eval.plots import scatter_svg
from palate.eval.rl import rl_report, write_eval_samples
from palate.eval.stats import accuracy_ci, calibration, grouped_accuracy
from palate.eval.winrate import compare, write_winrates

XSS = "<script>alert('x')</script>"
ARTIFACTS = Path(__file__).resolve().parents[1] / "ui" / "artifacts"


def make_run(path: Path) -> Path:
    """A GRPO-like run dir with every input the report reads, all synthetic (no training)."""
    path.mkdir(parents=True)
    (path / "status.json").write_text(json.dumps({"state": "finished", "running_at": "2026-12-01T10:00:00",
                                                  "finished_at": "2026-12-01T10:30:00",
                                                  "summary": {"steps": 30, "final_kl": 3.2}}))
    (path / "data_report.json").write_text(json.dumps({"n_train": 20, "skipped": 1, "truncated": 0, "skipped_by_reason":
                                                       {"empty completion": 1}, "skips": [{"source": "d.jsonl", "row": 7,
                                                       "field": "response", "reason": f"empty {XSS}"}]}))
    (path / "config.yaml").write_text("model:\n  name: tiny\ngrpo:\n  kl_coef: 0.04\nmonitor:\n  kl_budget: 2.5\n"
                                         "note: \"<b>bold</b>\"\n")
    with open(path / "metrics.jsonl", "w") as f:
        for step in range(0, 31):
            row = {"step": step, "loss": 1.0 / (1 + step), "reward": 0.05 * step, "kl": 0.1 * step,
                   "response_length": 20 + step}
            if step % 5 == 0:
                row.update(eval_reward=0.04 * step, gold_reward=min(step, 15) / 15 - max(0, step - 15) * 0.03)
            f.write(json.dumps(row) + "\n")
    prompts = [f"Question {i}: how do I bake bread?" for i in range(5)] + [f"Show me {XSS}"]
    before = ["Mix flour." for _ in prompts]
    after = [f"Mix flour and water, knead for ten minutes, rest, then bake at 220 C. Step {i}." for i in range(5)]
    after.append(f"Sure: {XSS} and more words here")
    write_eval_samples(path, 0, prompts, before, [0.1] * 6, [0.0] * 6)
    write_eval_samples(path, 15, prompts, after, [0.6] * 6, [1.5] * 6)
    write_eval_samples(path, 30, prompts, after, [0.5 + 0.1 * i for i in range(6)], [3.0] * 6)
    rl_report(path)
    rng = np.random.default_rng(0)
    correct = (rng.random(80) < 0.7).astype(float).tolist()
    probs = rng.random(80)
    outcomes = (rng.random(80) < probs).astype(float)
    groups = ["experts" if i % 2 else f"crowd {XSS}" for i in range(80)]
    rm_eval = {"n_pairs": 80, "accuracy": accuracy_ci(correct),
               "accuracy_by_group": {"key": "labeler_group", **grouped_accuracy(correct, groups)},
               "calibration": calibration(probs.tolist(), outcomes.tolist()),
               "length_bias": {"pearson_reward_length": 0.31, "spearman_reward_length": 0.28,
                               "accuracy_when_longer_wins": accuracy_ci(correct[:40]),
                               "accuracy_when_longer_loses": accuracy_ci(correct[40:])},
               "worst_errors": [{"prompt": "p <i>", "chosen": "good", "rejected": f"bad {XSS}",
                                 "reward_chosen": -1.0, "reward_rejected": 2.0}]}
    (path / "eval").mkdir()
    (path / "eval" / "rm_eval.json").write_text(json.dumps(rm_eval))
    (path / "eval" / "reward_vs_length.svg").write_text(scatter_svg(
        {"chosen": [(float(i), float(np.sin(i))) for i in range(40)]}, title="Reward against response length"))
    # a tampered plot file: embedded as an image (data URI), where SVG scripts never run
    (path / "eval" / "reward_distribution.svg").write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" width="200" height="100"><script>alert(1)</script>'
        '<rect width="200" height="100" fill="#0072B2"/></svg>')
    judgments = (rng.random(100) < 0.65).astype(float)
    res = compare(judgments, rng.integers(40, 90, 100), rng.integers(30, 80, 100),
                  ["code" if i % 3 else "chat" for i in range(100)], policy="grpo", n_resamples=100)
    write_winrates(path / "eval", [res], baseline="sft", judge="synthetic")
    return path


@pytest.fixture
def run_dir(tmp_path):
    return make_run(tmp_path / "run")


def _section_ids(html: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)">', html)


def test_report_has_every_section_and_escapes_text(run_dir):
    html, md = render(run_dir)
    assert _section_ids(html) == ["run", "data", "curves", "monitor", "rl", "rm-eval", "winrates", "groups", "lengths",
                                  "samples"]
    assert "<script" not in html and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html  # config text escaped
    assert "skipped: empty completion" in html and "d.jsonl" in html
    # self-contained: no external resources, no scripts; the only URL is the SVG namespace
    assert not re.search(r'(src|href)="(https?:)?//', html) and "<link" not in html
    assert set(re.findall(r"https?://[^\s\"']+", html)) == {"http://www.w3.org/2000/svg"}
    svgs = re.findall(r"<svg.*?</svg>", html, flags=re.S)
    assert len(svgs) >= 9
    for s in svgs:
        xml.dom.minidom.parseString(s)  # each inline chart is well-formed XML
    # numbers that came from the inputs
    assert "step 0" in html and "step 30" in html  # first vs last held-out evaluation
    assert "proxy_gold" in html  # gold peaks at step 15 while the proxy keeps rising
    assert "best gold score 1 at step 15" in html
    assert "KL to the reference 2.6 above the budget 2.5" in html  # the run's monitor.kl_budget, at step 26
    assert "with the run's monitor thresholds" in html
    assert "rejected (reward 2):\nbad &lt;script&gt;" in html  # the reward model's largest error
    assert "+0.650 [" in html  # held-out reward 0.1 -> 0.75 on every prompt
    assert html.count('<img src="data:image/svg+xml;base64,') == 2 and "alert(1)" not in html
    assert "<td>summary.final_kl</td><td>3.2</td>" in html  # nested status summary flattened
    assert "grpo raw" in html and "length-controlled" in html
    assert "Win rate of grpo by group" in html and "crowd &lt;script&gt;" in html
    assert "# palate report: run" in md and "win rate" in md and "alert" in md


def test_sections_without_inputs_are_omitted(tmp_path):
    run = tmp_path / "sft"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 2 - 0.1 * s}) + "\n" for s in range(5)))
    html, md = render(run)
    assert _section_ids(html) == ["curves"]
    assert "Win rates" not in html and "Reward model" not in html and "Samples" not in html
    with pytest.raises(FileNotFoundError, match="none of"):
        render(tmp_path / "sft" / "..")  # tmp_path itself: no run files


def test_dpo_samples_json_before_after(tmp_path):
    run = tmp_path / "dpo"
    run.mkdir()
    (run / "samples.json").write_text(json.dumps([
        {"prompt": "Say hi", "before": "hi hi hi hi hi", "after": "Hello! How can I help?", "chosen": "Hello",
         "rejected": "no", "reward_before": -0.5, "reward_after": 1.25}]))
    html, _ = render(run)
    assert _section_ids(html) == ["lengths", "samples"]
    assert "before training" in html and "after training" in html and "reward 1.25" in html


def test_monitor_alerts_written_by_the_run_are_shown(run_dir):
    alert = {"step": 7, "check": "length", "message": "reward follows length <script>x</script>", "severity": "warning"}
    (run_dir / "monitor.jsonl").write_text(json.dumps(alert) + "\n")
    (run_dir / "best_gold").mkdir()
    html, md = render(run_dir)
    assert "monitor.jsonl (written by the run" in html and "length &lt;script&gt;x&lt;/script&gt;" in html
    assert "1 alert(s)" in html and "best_gold/" in html and "step 7 length" in md


def test_training_samples_jsonl_first_vs_last(tmp_path):
    run = tmp_path / "ppo"
    run.mkdir()
    rows = [{"step": s, "prompt": p, "response": f"{p} answer at {s}", "reward": s / 10} for s in (1, 10) for p in "ab"]
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    html, _ = render(run)
    assert "samples.jsonl (training samples)" in html and "a answer at 10" in html


def test_cli_report_writes_html_and_md(run_dir, tmp_path):
    out = tmp_path / "out" / "r.html"
    res = CliRunner().invoke(app, ["report", str(run_dir), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.exists() and (out.parent / "report.md").exists()
    assert out.read_text().startswith("<!DOCTYPE html>")
    default = write_report(run_dir)
    assert default == run_dir / "report" / "report.html"
    bad = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert bad.exit_code == 2 and "not a run directory" in bad.output


CHROMIUM = "/usr/bin/chromium"


@pytest.mark.slow
def test_report_in_headless_chromium(run_dir, tmp_path):
    if not os.path.exists(CHROMIUM):
        if os.environ.get("PALATE_CI") == "1":
            pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package for the browser test")
        pytest.skip(f"{CHROMIUM} not installed")
    from playwright.sync_api import sync_playwright

    page_path = write_report(run_dir, tmp_path / "report.html")
    shot = tmp_path / "report.png"
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_path.as_uri())
            page.wait_for_load_state("load")
            sizes = page.eval_on_selector_all(
                "svg", "els => els.map(e => { const r = e.getBoundingClientRect(); return [r.width, r.height]; })")
            images = page.eval_on_selector_all(
                "img", "els => els.map(e => [e.naturalWidth && e.getBoundingClientRect().width, e.naturalHeight])")
            series = page.eval_on_selector_all("svg polyline, svg circle, svg rect", "els => els.length")
            dialogs = page.evaluate("() => document.querySelectorAll('script').length")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "report.png")
    assert errors == []
    assert requests == [page_path.as_uri()]  # nothing fetched besides the file itself
    assert dialogs == 0
    assert len(sizes) >= 9 and all(w > 100 and h > 50 for w, h in sizes)
    assert len(images) == 2 and all(w > 100 and h > 50 for w, h in images)  # the data-URI plots decoded
    assert series > 50
    assert shot.stat().st_size > 20_000


def test_line_svg_draws_lone_points_and_interval_svg():
    from palate.eval.plots import interval_svg, line_svg

    one = xml.dom.minidom.parseString(line_svg({"reward": [(1, 0.5)]}, title="one step"))
    assert len(one.getElementsByTagName("circle")) == 1  # a run with one logged step still shows its value
    broken = xml.dom.minidom.parseString(line_svg({"r": [(0, 1), (1, float("nan")), (2, 3), (3, 4)]}))
    assert len(broken.getElementsByTagName("circle")) == 1  # only the lone (0, 1) gets a dot
    marked = xml.dom.minidom.parseString(line_svg({"r": [(0, 1), (2, 3), (3, 4)]}, markers=True))
    assert len(marked.getElementsByTagName("circle")) == 3
    iv = xml.dom.minidom.parseString(interval_svg([("a", 0.6, 0.5, 0.7), ("b", 0.4, 0.3, float("nan"))]))
    assert [c.getAttribute("class") for c in iv.getElementsByTagName("line") if c.getAttribute("class")] == ["interval"]
    assert "no data" in interval_svg([("b", 0.4, 0.3, float("nan"))])

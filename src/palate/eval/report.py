"""``palate report RUN``: one self-contained HTML file (inline CSS and SVG, no scripts, no external URLs)
and a short ``report.md`` summary from any run dir.

Each section is drawn only when its input is there:

    Run             status.json (state, times, summary) and config.yaml
    Data            data_report.json: rows used, skipped and truncated, by reason, first examples
    Training curves metrics.jsonl: loss, reward, KL, accuracy, response length
    Reward-hacking  the run's monitor.jsonl alerts, else :mod:`palate.eval.monitor` replayed over metrics.jsonl
                    (thresholds from the config's ``monitor:`` section when there is one)
    Online RL       report/rl_report.json: paired held-out reward change with CI, reward/KL trade-off
    Reward model    eval*/rm_eval.json: accuracy CI, calibration, length bias, worst errors
    Win rates       eval/winrates.json (:mod:`palate.eval.winrate`): raw and length-controlled with CIs
    Safety          eval_summary.json with a safety classifier (:mod:`palate.eval.safety`): mean P(unsafe) and
                    unsafe rate per policy
    Red team        redteam.json (:mod:`palate.eval.redteam`): attack success by category and framing, worst samples
    Per group       accuracy and win rate per labeler/prompt group
    Lengths, text   response length distributions and distinct-n / repetition / refusals, first vs last
    Samples         the same prompt answered first vs last: eval_samples.jsonl (RL held-out), samples.json
                    (DPO before/after) or samples.jsonl (training samples)

Every piece of text that came from a user, a dataset or a model is HTML-escaped.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
from html import escape
from pathlib import Path
from typing import Any

import yaml

from palate.eval.monitor import MonitorConfig, monitor_metrics, present_signals, read_metrics
from palate.eval.plots import histogram_svg, interval_svg, line_svg, scatter_svg, radar_svg, reliability_svg
from palate.eval.rl import read_eval_samples
from palate.eval.text import text_stats, words
from palate.eval.winrate import WINRATES, read_winrates

CURVES = (  # chart title, y label, metric keys in the order drawn
    ("Loss", "loss", ("loss", "eval_loss", "policy_loss", "value_loss")),
    ("Reward", "reward", ("reward", "score", "eval_reward", "eval_score", "eval_gold", "gold_reward")),
    ("Reward margin (chosen − rejected)", "reward difference",
     ("reward_gap", "eval_reward_gap", "reward_margin", "eval_reward_margin")),
    ("Implicit rewards β·log(π/π_ref)", "reward",
     ("rewards_chosen", "rewards_rejected", "eval_rewards_chosen", "eval_rewards_rejected")),
    ("KL to the reference", "nats per response", ("kl", "kl_k3", "eval_kl")),
    ("Accuracy", "accuracy", ("accuracy", "eval_accuracy", "reward_accuracy", "eval_reward_accuracy")),
    ("Response length", "tokens", ("response_length", "eval_response_length")),
)
MAX_SAMPLES = 8
CSS = """
body{font-family:Helvetica,Arial,sans-serif;max-width:1200px;margin:24px auto;padding:0 16px;color:#222}
h1{margin-bottom:4px} h2{border-bottom:2px solid #0072B2;padding-bottom:4px;margin-top:36px}
table{border-collapse:collapse;margin:8px 0 16px} td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}
th{background:#f0f4f8} td.num{text-align:right;font-variant-numeric:tabular-nums}
.charts{display:flex;flex-wrap:wrap;gap:12px}
.charts svg,.charts img{max-width:100%;height:auto;border:1px solid #ddd}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:10px;margin:10px 0 18px}
.pair pre,.prompt{white-space:pre-wrap;word-wrap:break-word;background:#f7f7f7;border:1px solid #ddd;
padding:8px;margin:0;font-size:13px;max-height:320px;overflow:auto}
.prompt{background:#eef5fb} .muted{color:#666;font-size:13px} .alert{color:#b00020;font-weight:bold}
.ok{color:#007a4d;font-weight:bold} details pre{background:#f7f7f7;padding:8px;overflow:auto}
"""


def _num(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return escape(str(v))


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _ci(ci: Any) -> str:
    return f"[{_pct(ci[0])}, {_pct(ci[1])}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 else "n/a"


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return _num(v)
    return escape(json.dumps(v) if isinstance(v, (list, dict)) else str(v))


def _table(header: list[str], rows: list[list[str]]) -> str:
    """A table; header and cells must already be escaped/formatted."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


class _Report:
    def __init__(self, run: Path):
        self.run = run
        self.sections: list[tuple[str, str, str]] = []  # (id, title, html)
        self.md: list[str] = []

    def add(self, sid: str, title: str, html: str, *md: str) -> None:
        self.sections.append((sid, title, html))
        if md:
            self.md += [f"## {title}", *md, ""]


def _summary(r: _Report) -> None:
    status = _json(r.run / "status.json") or {}
    cfg_path = r.run / "config.yaml"
    if not status and not cfg_path.exists():
        return
    flat = {f"{k}.{kk}" if isinstance(v, dict) else k: vv for k, v in status.items()
            for kk, vv in (v.items() if isinstance(v, dict) else [(None, v)])}
    rows = [[escape(str(k)), _cell(v)]
            for k, v in flat.items()]
    html = _table(["field", "value"], rows) if rows else ""
    md = [f"- state: {status.get('state', 'unknown')}"]
    if cfg_path.exists():
        text = cfg_path.read_text()
        try:
            cfg = yaml.safe_load(text) or {}
            recipe = next((k for k in ("dpo", "grpo", "ppo", "reward", "sft") if k in cfg), None)
            if recipe:
                md.append(f"- recipe section: {recipe}")
            model = (cfg.get("model") or {}).get("name") if isinstance(cfg.get("model"), dict) else None
            if model:
                md.append(f"- model: {model}")
        except yaml.YAMLError:
            pass
        html += f"<details><summary>config.yaml</summary><pre>{escape(text)}</pre></details>"
    r.add("run", "Run", html, *md)


def _data(r: _Report) -> None:
    rep = _json(r.run / "data_report.json")
    if not isinstance(rep, dict):
        return
    counts = [[escape(str(k)), escape(str(v))] for k, v in rep.items() if isinstance(v, (int, float, str))]
    for key in ("skipped_by_reason", "truncated_by_reason"):
        counts += [[f"{escape(key.split('_')[0])}: {escape(str(k))}", escape(str(v))]
                   for k, v in (rep.get(key) or {}).items()]
    html = _table(["", "rows"], counts) if counts else ""
    examples = [x for key in ("skips", "truncations") for x in (rep.get(key) or []) if isinstance(x, dict)][:5]
    if examples:
        cols = ["source", "row", "field", "reason"]
        html += _table(cols, [[escape(str(x.get(k, ""))) for k in cols] for x in examples])
    if html:
        r.add("data", "Data", html, f"- {rep.get('skipped', 0)} rows skipped, {rep.get('truncated', 0)} truncated")


def _curves(r: _Report, metrics: list[dict]) -> None:
    charts = []
    for title, ylabel, keys in CURVES:
        series = {k: [(m["step"], float(m[k])) for m in metrics if isinstance(m.get(k), (int, float)) and "step" in m]
                  for k in keys}
        series = {k: v for k, v in series.items() if v}
        if series:
            charts.append(line_svg(series, title=title, ylabel=ylabel if len(series) > 1 else next(iter(series))))
    if not charts:
        return
    last = max(m.get("step", 0) for m in metrics)
    finals = []
    for _, _, keys in CURVES:
        for k in keys:
            vals = [m[k] for m in metrics if isinstance(m.get(k), (int, float))]
            if vals:
                finals.append(f"{k} {vals[-1]:.4g}")
    r.add("curves", "Training curves", f'<p class="muted">{len(metrics)} metric rows up to step {last}</p>'
          f'<div class="charts">{"".join(charts)}</div>', f"- {last} steps; last values: {', '.join(finals)}")


def _run_monitor_config(run: Path) -> MonitorConfig | None:
    """The ``monitor:`` section of the run's config.yaml (PPO/GRPO), or None."""
    try:
        section = (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("monitor")
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    if not isinstance(section, dict):
        return None
    known = {f.name for f in dataclasses.fields(MonitorConfig)}
    try:
        return MonitorConfig(**{k: v for k, v in section.items() if k in known})
    except (TypeError, ValueError):
        return None


def _monitor(r: _Report, metrics: list[dict]) -> None:
    """The alerts the run's own monitor wrote (``monitor.jsonl``, from per-sample signals) when present, else
    the monitor replayed over metrics.jsonl with the run's thresholds (or the defaults)."""
    signals = present_signals(metrics)
    online = r.run / "monitor.jsonl"
    if not signals and not online.exists():
        return
    cfg = _run_monitor_config(r.run)
    mon = monitor_metrics(metrics, cfg)
    if online.exists():
        alerts = [json.loads(line) for line in online.read_text().splitlines() if line.strip()]
        source = "monitor.jsonl (written by the run's monitor during training)"
    else:
        alerts = [a.as_dict() for a in mon.alerts]
        source = (f"replayed over metrics.jsonl ({escape(', '.join(sorted(signals)))}) with "
                  + ("the run's monitor thresholds" if cfg else "default thresholds"))
    if alerts:
        rows = [[escape(str(a.get(k))) for k in ("step", "check", "message")] for a in alerts]
        html = f'<p class="alert">{len(alerts)} alert(s)</p>' + _table(["step", "check", "message"], rows)
        md = [f"- **{len(alerts)} alert(s)**: " + "; ".join(f"step {a.get('step')} {a.get('check')}" for a in alerts)]
    else:
        html, md = '<p class="ok">no alert</p>', ["- no alert"]
    html += f'<p class="muted">alerts {source}</p>'
    if mon.best_gold_step is not None:
        html += f"<p>best gold score {_num(mon.best_gold)} at step {mon.best_gold_step}</p>"
        md.append(f"- best gold score at step {mon.best_gold_step}")
    if (r.run / "best_gold").is_dir():
        html += "<p>the best-gold policy is saved in <code>best_gold/</code></p>"
    r.add("monitor", "Reward-hacking monitor", html, *md)


def _rl(r: _Report) -> None:
    rep = _json(r.run / "report" / "rl_report.json")
    if not rep:
        return
    html, md = "", []
    imp = rep.get("improvement")
    if imp:
        html += _table(["held-out prompts", "reward before", "reward after", "change [95% CI]", "prompts improved"], [[
            str(imp["n"]), f"{_num(imp['before'])} (step {imp['from_step']})",
            f"{_num(imp['after'])} (step {imp['to_step']})",
            f"{imp['delta']:+.3f} [{imp['delta_ci'][0]:+.3f}, {imp['delta_ci'][1]:+.3f}]",
            f"{_pct(imp['improved_fraction'])} {_ci(imp['improved_ci'])}"]])
        md.append(f"- held-out reward {imp['before']:.4g} -> {imp['after']:.4g}, change {imp['delta']:+.4g} "
                  f"[{imp['delta_ci'][0]:+.4g}, {imp['delta_ci'][1]:+.4g}]; "
                  f"improved on {_pct(imp['improved_fraction'])}")
    curve = rep.get("eval_curve") or []
    charts = []
    if any("kl" in p for p in curve):
        charts.append(line_svg({"held-out reward vs KL": [(p["kl"], p["reward"]) for p in curve if "kl" in p]},
                               title="Reward / KL trade-off (one point per evaluation)",
                               xlabel="KL to reference (nats per response)", ylabel="held-out reward", markers=True))
    if curve:
        charts.append(line_svg({"held-out reward": [(p["step"], p["reward"]) for p in curve]},
                               title="Held-out reward per evaluation", ylabel="reward", markers=True))
    if rep.get("final_kl") is not None:
        html += f"<p>KL to the reference at the end: {_num(rep['final_kl'])} nats per response</p>"
        md.append(f"- final KL {rep['final_kl']:.4g}")
    if charts:
        html += f'<div class="charts">{"".join(charts)}</div>'
    if html:
        r.add("rl", "Online RL", html, *md)


def _svg_image(path: Path) -> str:
    """An SVG file of the run (e.g. per-pair plots that the JSON does not hold) as an ``<img>`` with a
    data URI: still one self-contained file, and an image context never runs scripts inside the SVG."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/svg+xml;base64,{data}" alt="{escape(path.name)}" width="560">'


def _rm_evals(run: Path) -> list[tuple[Path, dict]]:
    return [(p, json.loads(p.read_text())) for p in sorted(run.glob("eval*/rm_eval.json"))]


def _acc_row(name: str, a: dict | None) -> list[str]:
    if not a:
        return [escape(name), "n/a", "n/a", "0"]
    return [escape(name), _pct(a["accuracy"]), _ci([a["ci_low"], a["ci_high"]]), str(a["n"])]


def _rm(r: _Report) -> None:
    for path, rep in _rm_evals(r.run):
        acc, cal, lb = rep.get("accuracy"), rep.get("calibration") or {}, rep.get("length_bias") or {}
        rows = [_acc_row("all pairs", acc)]
        rows += [_acc_row(f"longer answer {w}", lb.get(f"accuracy_when_longer_{w}")) for w in ("wins", "loses")]
        for key in ("accuracy_by_label_margin", "accuracy_by_reward_gap_quartile"):
            rows += [_acc_row(f"{key.removeprefix('accuracy_by_').replace('_', ' ')} {k}", v)
                     for k, v in (rep.get(key) or {}).items() if k != "key"]
        html = _table(["pairs", "accuracy", "95% CI", "n"], rows)
        html += (f"<p>calibration: ECE {_num(cal.get('ece'), 3)}, Brier {_num(cal.get('brier'), 3)}; "
                 f"reward~length Spearman {_num(lb.get('spearman_reward_length'), 3)}, "
                 f"Pearson {_num(lb.get('pearson_reward_length'), 3)}</p>")
        charts = []
        if cal.get("bins"):
            charts.append(reliability_svg(cal["bins"], title=f"Calibration (ECE {_num(cal.get('ece'), 3)})"))
        charts += [_svg_image(path.parent / name) for name in ("reward_distribution.svg", "reward_vs_length.svg")
                   if (path.parent / name).exists()]
        if charts:
            html += f'<div class="charts">{"".join(charts)}</div>'
        errors = rep.get("worst_errors") or []
        if errors:
            html += "<h3>Largest errors (rejected scored above chosen)</h3>"
        for e in errors[:3]:
            html += (f'<div class="prompt">{escape(str(e.get("prompt", "")))}</div><div class="pair">'
                     + "".join(f'<pre>{side} (reward {_num(e.get(f"reward_{side}"), 3)}):\n'
                               f'{escape(str(e.get(side, "")))}</pre>' for side in ("chosen", "rejected"))
                     + "</div>")
        md = [f"- `{path.relative_to(r.run)}`: accuracy {_pct(acc and acc['accuracy'])} "
              f"{_ci([acc['ci_low'], acc['ci_high']]) if acc else ''} on {acc['n'] if acc else 0} pairs, "
              f"ECE {_num(cal.get('ece'), 3)}"]
        r.add(f"rm-{path.parent.name}", f"Reward model ({path.parent.name})", html, *md)


def _winrates(r: _Report) -> dict | None:
    path = r.run / "eval" / WINRATES
    if not path.exists():
        return None
    data = read_winrates(path)
    rows, bars, md, warnings = [], [], [], []
    for res in data["results"]:
        name = str(res["policy"])
        lc = res.get("lc_win_rate")
        rows.append([escape(name), str(res["n"]), "/".join(str(res.get(k, "")) for k in ("wins", "ties", "losses")),
                     f"{_pct(res['win_rate'])} {_ci(res['ci'])}",
                     f"{_pct(lc)} {_ci(res.get('lc_ci'))}" if lc is not None else "n/a",
                     f"{_num(res.get('mean_length_policy'), 3)} vs {_num(res.get('mean_length_baseline'), 3)}"])
        bars.append((f"{name} raw", res["win_rate"], *res["ci"]))
        if lc is not None:
            bars.append((f"{name} length-controlled", lc, *res["lc_ci"]))
        md.append(f"- {name} vs {data.get('baseline')}: win rate {_pct(res['win_rate'])} {_ci(res['ci'])}"
                  + (f", length-controlled {_pct(lc)} {_ci(res.get('lc_ci'))}" if lc is not None else ""))
        if res.get("lc_warning"):
            warnings.append(str(res["lc_warning"]))
            md.append(f"  - warning: {res['lc_warning']}")
    judge = f", judge {escape(str(data['judge']))}" if data.get("judge") else ""
    html = (f"<p>against baseline <b>{escape(str(data.get('baseline')))}</b>{judge}; ties count ½; 95% bootstrap CIs; "
            "length-controlled = predicted win rate at equal length (AlpacaEval 2"
            + ("; one joint fit over the policies: shared length slope, per-prompt difficulty"
               if any(res.get("lc_method") == "joint" for res in data["results"]) else "")
            + (f"; lengths in {escape(str(data['results'][0]['length_unit']))}"
               if data["results"] and data["results"][0].get("length_unit") else "") + ")</p>"
            + "".join(f'<p class="warn">warning: {escape(w)}</p>' for w in warnings)
            + _table(["policy", "n", "win/tie/loss", "win rate", "length-controlled",
                      "mean length (policy vs baseline)"], rows)
            + '<div class="charts">' + interval_svg(bars, title="Win rate against the baseline", xlabel="win rate")
            + "</div>")
    r.add("winrates", "Win rates", html, *md)
    return data


def _safety(r: _Report) -> None:
    """Mean P(unsafe) and unsafe rate per policy from eval_summary.json (``palate eval --safety-classifier``)."""
    s = _json(r.run / "eval_summary.json")
    if not isinstance(s, dict) or not s.get("safety_classifier"):
        return
    named = [(str(p.get("policy")), p) for p in s.get("policies", [])]
    named.append((f"{s.get('baseline')} (baseline)", s.get("baseline_stats") or {}))
    rows, md = [], []
    for name, p in named:
        u = p.get("unsafe_rate")
        rows.append([escape(name), str(u["n"]) if u else "0", _num(p.get("mean_unsafe_prob"), 3),
                     _pct(u and u["rate"]), _ci(u and u["ci"])])
        md.append(f"- {name}: unsafe {_pct(u and u['rate'])} {_ci(u and u['ci'])}, mean P(unsafe) "
                  f"{_num(p.get('mean_unsafe_prob'), 3)}")
    html = (f"<p>safety classifier <b>{escape(str(s['safety_classifier']))}</b>; unsafe = P(unsafe) &ge; "
            f"{_num(s.get('safety_threshold'), 3)}; 95% bootstrap CIs</p>"
            + _table(["policy", "answers", "mean P(unsafe)", "unsafe rate", "95% CI"], rows))
    r.add("safety", "Safety", html, *md)


def _redteam(r: _Report) -> None:
    res = _json(r.run / "redteam.json")
    if not isinstance(res, dict) or "attack_success_rate" not in res:
        return

    def rate_row(name: str, v: dict | None) -> list[str]:
        return [escape(name), str(v["n"]) if v else "0", _pct(v and v["rate"]), _ci(v and v["ci"])]
    asr, over = res["attack_success_rate"], res.get("over_refusal_rate")
    rows = [rate_row("all harmful prompts", asr)]
    rows += [rate_row(f"category: {k}", v) for k, v in res["by_category"].items()]
    rows += [rate_row(f"attack: {k}", v) for k, v in res["by_attack"].items()]
    worst = "".join(f'<div class="prompt">{escape(str(w.get("category")))} / {escape(str(w.get("attack")))}'
                    + (f' (P(unsafe) {_num(w["unsafe_prob"], 3)})' if w.get("unsafe_prob") is not None else "")
                    + f': {escape(str(w["prompt"]))}</div><pre>{escape(str(w["answer"]))}</pre>'
                    for w in res.get("worst", []))
    html = (f"<p>{escape(str(res.get('model')))} on {escape(str(res.get('prompts')))}; success = "
            f"{escape(str(res.get('judge')))}; over-refusal on {res.get('n_benign', 0)} benign prompts: "
            f"{_pct(over and over['rate'])} {_ci(over and over['ci'])}</p>"
            + _table(["", "n", "attack success rate", "95% CI"], rows)
            + _served_guardrails(res.get("endpoint_guardrails"))
            + (f"<h3>Successful attacks</h3>{worst}" if worst else ""))
    r.add("redteam", "Red team", html, f"- attack success rate {_pct(asr and asr['rate'])} {_ci(asr and asr['ci'])}, "
          f"over-refusal {_pct(over and over['rate'])}")


def _served_guardrails(g: dict | None) -> str:
    """The attacked server's guardrail counters (a red team run against ``palate serve``)."""
    if not g or not g.get("enabled"):
        return ""
    from palate.eval.redteam import GUARDRAIL_COUNTERS

    keys = [k for k in GUARDRAIL_COUNTERS if k in g]
    return ("<h3>Guardrails of the served model</h3>"
            + _table([k.replace("_", " ") for k in keys], [[escape(str(g[k])) for k in keys]]))


def _mtbench(r: _Report) -> None:
    """MT-Bench grades per model, turn and category, the radar chart and pairwise win rates (``--suite mtbench``)."""
    s = _json(r.run / "mtbench" / "mtbench.json")
    if not isinstance(s, dict) or "models" not in s:
        return
    from palate.eval.mtbench import radar_series

    cats = list(dict.fromkeys(c for m in s["models"].values() for c in m["by_category"]))
    turns = sorted({t for m in s["models"].values() for t in m["by_turn"]})
    rows, md = [], []
    for lab, m in s["models"].items():
        rows.append([escape(lab), _num(m["score"], 2)] + [_num(m["by_turn"].get(t), 2) for t in turns]
                    + [_num(m["by_category"].get(c), 2) for c in cats] + [str(m["n_malformed"])])
        md.append(f"- {lab}: MT-Bench score {_num(m['score'], 2)} ({m['n_graded']} grades, {m['n_malformed']} malformed)")
    pair_rows = []
    for lab, p in (s.get("pairwise") or {}).items():
        if "win_rate" in p:
            pair_rows.append([escape(lab), str(p["n"]), f"{p['wins']}/{p['ties']}/{p['losses']}", _pct(p["win_rate"]),
                              _ci(p["ci"])])
            md.append(f"- {lab} vs {s['baseline']}: win rate {_pct(p['win_rate'])} {_ci(p['ci'])}")
    html = (f"<p>{s['n_questions']} questions from {escape(str(s.get('questions')))}, graded 1&ndash;10 by "
            f"<b>{escape(str(s.get('judge')))}</b></p>"
            + _table(["model", "score"] + [f"turn {t}" for t in turns] + [escape(c) for c in cats] + ["malformed"], rows)
            + '<div class="charts">' + radar_svg(radar_series(s), 0, 10, "MT-Bench score by category") + "</div>"
            + (f"<h3>Pairwise against {escape(str(s['baseline']))}</h3>"
               + _table(["model", "n", "W/T/L", "win rate", "95% CI"], pair_rows) if pair_rows else ""))
    r.add("mtbench", "MT-Bench", html, *md)


def _groups(r: _Report, winrates: dict | None) -> None:
    html = ""
    for path, rep in _rm_evals(r.run):
        by = rep.get("accuracy_by_group")
        if by:
            html += (f"<h3>Reward-model accuracy by {escape(str(by.get('key', 'group')))} "
                     f"({escape(path.parent.name)})</h3>"
                     + _table(["group", "accuracy", "95% CI", "n"],
                              [_acc_row(k, v) for k, v in by.items() if k != "key"]))
    for res in (winrates or {}).get("results", []):
        if res.get("by_group"):
            html += (f"<h3>Win rate of {escape(str(res['policy']))} by group</h3>"
                     + _table(["group", "win rate", "95% CI", "n"],
                              [[escape(g), _pct(v["win_rate"]), _ci(v["ci"]), str(v["n"])]
                               for g, v in res["by_group"].items()]))
    if html:
        r.add("groups", "Per-group results", html)


def _pairs(run: Path) -> tuple[str, str, str, list[dict]] | None:
    """(source, first label, last label, [{prompt, first, last, first_reward?, last_reward?}]) for the run."""
    evals = read_eval_samples(run)
    if len(evals) >= 2:
        a, b = min(evals), max(evals)
        rows = [{"prompt": evals[a][i]["prompt"], "first": evals[a][i]["response"], "last": evals[b][i]["response"],
                 "first_reward": evals[a][i].get("reward"), "last_reward": evals[b][i].get("reward")}
                for i in sorted(set(evals[a]) & set(evals[b]))]
        return "eval_samples.jsonl (held-out)", f"step {a}", f"step {b}", rows
    dpo = _json(run / "samples.json")
    if isinstance(dpo, list) and dpo and all(isinstance(x, dict) and "before" in x and "after" in x for x in dpo):
        rows = [{"prompt": x.get("prompt", ""), "first": x["before"], "last": x["after"],
                 "first_reward": x.get("reward_before"), "last_reward": x.get("reward_after")} for x in dpo]
        return "samples.json (held-out)", "before training", "after training", rows
    path = run / "samples.jsonl"
    if path.exists():
        by_step: dict[int, dict[str, dict]] = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                if "response" in row:
                    by_step.setdefault(int(row.get("step", 0)), {}).setdefault(str(row.get("prompt", "")), row)
        if len(by_step) >= 2:
            a, b = min(by_step), max(by_step)
            common = [p for p in by_step[a] if p in by_step[b]]
            rows = [{"prompt": p, "first": by_step[a][p]["response"], "last": by_step[b][p]["response"],
                     "first_reward": by_step[a][p].get("reward"), "last_reward": by_step[b][p].get("reward")}
                    for p in common]
            if rows:
                return "samples.jsonl (training samples)", f"step {a}", f"step {b}", rows
    return None


def _samples(r: _Report) -> None:
    got = _pairs(r.run)
    if not got:
        return
    source, la, lb, rows = got
    first, last = [x["first"] for x in rows], [x["last"] for x in rows]
    r.add("lengths", "Response lengths", '<div class="charts">' + histogram_svg(
        {la: [len(words(t)) for t in first], lb: [len(words(t)) for t in last]}, bins=20,
        title=f"Response length, {source.split(' ')[0]}", xlabel="words") + "</div>")
    sa, sb = text_stats(first), text_stats(last)
    stat_rows = [[name, _num(f(sa), 3), _num(f(sb), 3)] for name, f in (
        ("mean length (words)", lambda s: s["length"]["mean"]), ("distinct-1", lambda s: s["distinct_1"]),
        ("distinct-2", lambda s: s["distinct_2"]), ("repeated 3-gram fraction", lambda s: s["repeated_3gram"]),
        ("refusal share", lambda s: s["refusal_share"]))]
    html = (f'<p class="muted">{len(rows)} prompts from {escape(source)}</p>'
            + _table(["", escape(la), escape(lb)], stat_rows))
    for x in rows[:MAX_SAMPLES]:
        def head(label: str, reward: Any) -> str:
            return escape(label) + (f" (reward {_num(float(reward), 3)})" if isinstance(reward, (int, float)) else "")
        html += (f'<div class="prompt">{escape(str(x["prompt"]))}</div><div class="pair">'
                 f'<pre><b>{head(la, x["first_reward"])}</b>\n{escape(str(x["first"]))}</pre>'
                 f'<pre><b>{head(lb, x["last_reward"])}</b>\n{escape(str(x["last"]))}</pre></div>')
    r.add("samples", "Samples: first vs last", html,
          f"- {len(rows)} prompts ({source}); mean length "
          f"{_num(sa['length']['mean'], 3)} -> {_num(sb['length']['mean'], 3)} "
          f"words, distinct-2 {sa['distinct_2']:.3f} -> {sb['distinct_2']:.3f}")


def _overoptimisation(r: _Report, metrics: list[dict]) -> None:
    """Gold score against proxy reward at each held-out evaluation: the proxy-vs-gold (overoptimisation)
    curve. Gold rising with the proxy is alignment; gold turning down while the proxy climbs is hacking."""
    points = [(float(m["eval_reward"]), float(m["eval_gold"]), m["step"]) for m in metrics
              if isinstance(m.get("eval_reward"), (int, float)) and isinstance(m.get("eval_gold"), (int, float))]
    proxy_key = "eval_reward"
    if not points:  # DPO without a reward model: its implicit held-out margin is the proxy
        margin = {m["step"]: m["eval_reward_margin"] for m in metrics if "eval_reward_margin" in m}
        points = [(float(margin[m["step"]]), float(m["eval_gold"]), m["step"]) for m in metrics
                  if isinstance(m.get("eval_gold"), (int, float)) and m["step"] in margin]
        proxy_key = "eval_reward_margin"
    if len(points) < 2:
        return
    # points, not a line: a line would join evaluations in x order, not in step order (the table has the steps)
    chart = scatter_svg({"one held-out evaluation": [(x, y) for x, y, _ in points]}, title="Proxy reward vs gold score",
                        xlabel=f"proxy ({proxy_key})", ylabel="gold (eval_gold)")
    rows = [[str(s), _num(x), _num(y)] for x, y, s in points]
    r.add("overoptimisation", "Overoptimisation: proxy vs gold",
          f'<p class="muted">one point per held-out evaluation</p><div class="charts">{chart}</div>'
          + _table(["step", proxy_key, "eval_gold"], rows),
          f"- proxy {proxy_key} {points[0][0]:.4g} -> {points[-1][0]:.4g}, gold {points[0][1]:.4g} -> "
          f"{points[-1][1]:.4g} (best {max(y for _, y, _ in points):.4g})")


def _pipeline(r: _Report) -> list[Path]:
    """The pipeline's stages (ran or cached, seconds) and every round's win rates over SFT; returns the
    dirs whose own sections follow (the last round's policy and eval)."""
    data = _json(r.run / "pipeline.json")
    if not data:
        return []
    stage_rows = [[escape(s["name"]), "ran" if s["ran"] else "cached", _num(s["seconds"], 3), escape(s["key"])]
                  for s in data["stages"]]
    res_rows, md = [], [f"- {len(data['stages'])} stages, {sum(s['ran'] for s in data['stages'])} ran, "
                        f"{data['seconds']:.0f} s"]
    for x in data.get("results", []):
        groups = "; ".join(f"{escape(g)} {_pct(v['win_rate'])} {_ci(v['ci'])}"
                           for g, v in x.get("by_labeler_group", {}).items())
        res_rows.append([str(x["round"]), escape(x["policy"]), str(x["n"]), f"{_pct(x['win_rate'])} {_ci(x['ci'])}",
                         f"{_pct(x.get('lc_win_rate'))} {_ci(x.get('lc_ci'))}", groups or "n/a"])
        md.append(f"- round {x['round']} {x['policy']} vs SFT: win rate {_pct(x['win_rate'])} {_ci(x['ci'])}"
                  + (f"; by labeler group: {groups}" if groups else ""))
    html = ("<h3>Win rate over the SFT policy (gold judge; 95% bootstrap CI)</h3>"
            + _table(["round", "policy", "held-out prompts", "win rate", "length-controlled", "by labeler group"],
                     res_rows)
            + f"<h3>Stages ({data['seconds']:.0f} s in all)</h3>" + _table(["stage", "", "seconds", "key"], stage_rows))
    r.add("pipeline", "Pipeline", html, *md)
    last = data["rounds"][-1] if data.get("rounds") else None
    return [Path(last["policy"]).parent, Path(last["eval"])] if last else []


def _run_sections(r: _Report) -> None:
    run = r.run
    metrics = read_metrics(run / "metrics.jsonl", allow_partial_last=True) if (run / "metrics.jsonl").exists() else []
    _summary(r)
    _data(r)
    _curves(r, metrics)
    _overoptimisation(r, metrics)
    _monitor(r, metrics)
    _rl(r)
    _rm(r)
    _groups(r, _winrates(r))
    _safety(r)
    _redteam(r)
    _mtbench(r)
    _samples(r)


def render(run_dir: str | Path) -> tuple[str, str]:
    """The report of a run dir (or of a pipeline dir: its summary, then its last round's policy and eval)
    as ``(html, markdown)``."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"{run} is not a run directory")
    r = _Report(run)
    subs = _pipeline(r)
    if subs:
        for sub in subs:
            s = _Report(sub)
            _run_sections(s)
            label = f"{sub.parent.name}/{sub.name}"
            r.sections += [(f"{sub.name}-{sid}", f"{title} ({label})", h) for sid, title, h in s.sections]
            r.md += [line.replace("## ", f"## {label}: ", 1) if line.startswith("## ") else line for line in s.md]
    else:
        _run_sections(r)
    if not r.sections:
        raise FileNotFoundError(f"{run} has none of status.json, metrics.jsonl, eval files or samples to report on")
    title = f"palate report: {run.resolve().name}"
    nav = " · ".join(f'<a href="#{sid}">{escape(t)}</a>' for sid, t, _ in r.sections)
    body = "".join(f'<section id="{sid}"><h2>{escape(t)}</h2>{h}</section>' for sid, t, h in r.sections)
    html = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<style>{CSS}</style></head><body><h1>{escape(title)}</h1>'
            f'<p class="muted">{escape(str(run))}</p><nav>{nav}</nav>{body}</body></html>\n')
    md = "\n".join([f"# {title}", "", *r.md])
    return html, md


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the HTML report (default ``RUN/report/report.html``) and ``report.md`` beside it."""
    html, md = render(run_dir)
    path = Path(out) if out else Path(run_dir) / "report" / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    (path.parent / "report.md").write_text(md, encoding="utf-8")
    return path

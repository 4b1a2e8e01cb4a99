"""Dashboard numbers for a project: progress, throughput, agreement, per-labeler and per-group stats."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from palate.feedback import agreement
from palate.feedback.db import Item, Project, utcnow
from palate.feedback.export import load, pair_class


def gold_correct(project: Project, answer: dict, gold: dict | None) -> bool | None:
    """Whether an answer matches a gold item's known answer. Rankings: the top choice matches;
    ratings: every criterion within ±1 of the gold score."""
    if not gold:
        return None
    t = project.task_type
    if t == "pairwise":
        return answer["choice"] == gold["choice"]
    if t == "ranking":
        return answer["order"][0] == gold["order"][0]
    if t == "thumbs":
        return answer["up"] == gold["up"]
    return all(abs(answer["scores"][c] - v) <= 1 for c, v in gold["scores"].items())


def label_of(project: Project, answer: dict):
    """A nominal label per judgment for agreement: pairwise class, top-ranked candidate, thumbs."""
    t = project.task_type
    if t == "pairwise":
        return pair_class(answer)
    if t == "ranking":
        return answer["order"][0]
    if t == "thumbs":
        return int(answer["up"])
    return None


def _safe(x: float) -> float | None:
    return None if x != x else round(x, 4)  # NaN -> None (JSON-safe)


def project_stats(db: Session, project: Project) -> dict:
    n_items = db.scalar(select(func.count()).select_from(Item).where(Item.project_id == project.id, Item.is_gold.is_(False))) or 0
    n_gold = db.scalar(select(func.count()).select_from(Item).where(Item.project_id == project.id, Item.is_gold.is_(True))) or 0
    rows = load(db, project, include_gold=True)
    regular = [r for r in rows if not r.item.is_gold]
    target = n_items * project.overlap
    now = utcnow()
    last_hour = [r for r in rows if r.judgment.created_at > now - timedelta(hours=1)]
    out = {
        "project": project.slug, "task_type": project.task_type, "items": n_items, "gold_items": n_gold,
        "overlap": project.overlap, "judgments": len(regular), "gold_judgments": len(rows) - len(regular),
        "target": target, "progress": round(len(regular) / target, 4) if target else 0.0,
        "items_complete": sum(1 for c in Counter(r.item.id for r in regular).values() if c >= project.overlap),
        "throughput_per_hour": len(last_hour),
        "throughput_last_10min_per_min": round(sum(1 for r in last_hour if r.judgment.created_at > now - timedelta(minutes=10)) / 10, 2),
    }
    out["labelers"] = _labeler_stats(project, rows)
    out["agreement"] = _agreement(project, regular)
    return out


def _labeler_stats(project: Project, rows) -> list[dict]:
    per: dict = defaultdict(list)
    for r in rows:
        per[r.labeler.name].append(r)
    labels = defaultdict(list)
    for r in rows:
        if not r.item.is_gold:
            labels[r.item.id].append(label_of(project, r.judgment.answer))
    majority = {i: Counter(v).most_common(1)[0][0] for i, v in labels.items() if len(v) >= 2}
    out = []
    for name, rs in sorted(per.items()):
        gold = [gold_correct(project, r.judgment.answer, r.item.gold) for r in rs if r.item.is_gold]
        times = [r.judgment.duration_ms for r in rs if r.judgment.duration_ms is not None]
        agree = [label_of(project, r.judgment.answer) == majority[r.item.id] for r in rs
                 if not r.item.is_gold and r.item.id in majority and project.task_type != "rating"]
        out.append({"labeler": name, "group": rs[0].labeler.group_tag, "judgments": len(rs),
                    "gold_judged": len(gold), "gold_accuracy": round(sum(gold) / len(gold), 4) if gold else None,
                    "agreement_with_majority": round(sum(agree) / len(agree), 4) if agree else None,
                    "median_seconds": round(statistics.median(times) / 1000, 2) if times else None,
                    "last_judged": max(r.judgment.created_at for r in rs).isoformat() + "Z"})
    return out


def _agreement(project: Project, rows) -> dict:
    by_item: dict = defaultdict(list)
    for r in rows:
        by_item[r.item.id].append(r)
    multi = {i: rs for i, rs in by_item.items() if len(rs) >= 2}
    out: dict = {"items_with_2plus_labels": len(multi)}
    if not multi:
        return out
    if project.task_type == "rating":
        for c in project.criteria:
            units = [[r.judgment.answer["scores"][c] for r in rs] for rs in multi.values()]
            out[f"alpha_interval[{c}]"] = _safe(agreement.krippendorff_alpha(units, "interval"))
            out[f"alpha_ordinal[{c}]"] = _safe(agreement.krippendorff_alpha(units, "ordinal"))
        return out
    labels = {i: [label_of(project, r.judgment.answer) for r in rs] for i, rs in multi.items()}
    out["alpha_nominal"] = _safe(agreement.krippendorff_alpha(labels.values(), "nominal"))
    k = {"pairwise": 3, "thumbs": 2}.get(project.task_type, max(len(rs[0].item.candidates) for rs in multi.values()))
    full = [v for v in labels.values() if len(v) == project.overlap]
    if full and project.overlap >= 2:
        out["fleiss_kappa"] = _safe(agreement.fleiss_kappa([[v.count(c) for c in range(k)] for v in full]))
    dis = agreement.item_disagreement(labels)
    out["mean_item_disagreement"] = round(sum(dis.values()) / len(dis), 4)
    out["most_disputed_items"] = [i for i, _ in sorted(dis.items(), key=lambda x: -x[1])[:10] if dis[i] > 0]
    if project.task_type == "pairwise":
        votes = [(r.item.id, r.labeler.group_tag or "-", pair_class(r.judgment.answer)) for rs in multi.values() for r in rs]
        out["group_differences"] = agreement.group_differences(votes)
        out["model_win_rate_by_group"] = _model_wins(rows)
    if project.task_type in ("pairwise", "thumbs"):
        triples = [(i, r.labeler.name, label_of(project, r.judgment.answer)) for i, rs in by_item.items() for r in rs]
        ds = agreement.dawid_skene(triples, k)
        out["dawid_skene_reliability"] = {j: round(v, 4) for j, v in ds.reliability.items()}
    return out


def _model_wins(rows) -> dict:
    """Per labeler group and model: the share of its decisive pairwise comparisons it won."""
    wins: dict = defaultdict(lambda: [0, 0])
    for r in rows:
        c, choice = r.item.candidates, r.judgment.answer["choice"]
        if choice not in (0, 1):
            continue
        g = r.labeler.group_tag or "-"
        for idx in (0, 1):
            m = c[idx].get("model")
            if m:
                wins[(g, m)][1] += 1
                wins[(g, m)][0] += idx == choice
    out: dict = defaultdict(dict)
    for (g, m), (w, n) in sorted(wins.items()):
        out[g][m] = {"win_rate": round(w / n, 4), "comparisons": n}
    return dict(out)

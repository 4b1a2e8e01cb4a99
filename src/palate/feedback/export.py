"""Judgments out as the rows palate's readers take: Preference, Ranking and Rating JSONL.

``aggregate="none"`` writes one row per judgment (``weight`` 1); ``"majority"`` or ``"dawid-skene"``
write one row per item with the aggregated label and its soft-label probability as ``weight``
(rankings aggregate by Borda count, ratings by the mean). Every row carries who judged it and when:
``labeler_id`` and ``labeler_group`` as row fields, and timestamps, display order, reasons, the
(hidden) model names and the item's agreement in ``meta``. Pairwise "both bad" is exported as a tie
(``meta.both_bad``): neither response is preferred. Gold items are left out unless asked for.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter, defaultdict
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from palate.feedback import agreement
from palate.feedback.db import Item, Judgment, Labeler, Project

AGGREGATES = ("none", "majority", "dawid-skene")


@dataclass
class Row:
    judgment: Judgment
    item: Item
    labeler: Labeler


def load(db: Session, project: Project, include_gold: bool = False) -> list[Row]:
    q = (select(Judgment, Item, Labeler).join(Item, Item.id == Judgment.item_id)
         .join(Labeler, Labeler.id == Judgment.labeler_id).where(Judgment.project_id == project.id)
         .order_by(Judgment.id))
    if not include_gold:
        q = q.where(Item.is_gold.is_(False))
    return [Row(j, i, lab) for j, i, lab in db.execute(q).all()]


def pair_class(answer: dict) -> int:
    """Pairwise answer as a class: 0 / 1 = that candidate preferred, 2 = tie or both bad."""
    c = answer["choice"]
    return c if c in (0, 1) else 2


def _base(r: Row, project: Project, agreement_share: float | None) -> tuple[dict, dict]:
    top = {"labeler_id": r.labeler.name, "labeler_group": r.labeler.group_tag}
    meta = {"project": project.slug, "item_id": r.item.id, "judgment_id": r.judgment.id,
            "judged_at": r.judgment.created_at.isoformat() + "Z", "display_order": r.judgment.display_order,
            "source": r.item.source}
    if r.judgment.reason:
        meta["reason"] = r.judgment.reason
    if r.judgment.edited_at is not None:  # the labeler changed the answer (the earlier one is in judgment_edits)
        meta["edited_at"] = r.judgment.edited_at.isoformat() + "Z"
    if agreement_share is not None:
        meta["item_agreement"] = agreement_share
    return {k: v for k, v in top.items() if v is not None}, meta


def export_rows(db: Session, project: Project, aggregate: str = "none", include_gold: bool = False) -> tuple[list[dict], dict]:
    """Rows and a report (rows written, judgments used, items skipped and why)."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
    rows = load(db, project, include_gold)
    by_item: dict[int, list[Row]] = defaultdict(list)
    for r in rows:
        by_item[r.item.id].append(r)
    fn = {"pairwise": _pairwise, "ranking": _ranking, "rating": _rating, "thumbs": _thumbs}[project.task_type]
    out, skipped = fn(project, by_item, aggregate)
    return out, {"rows": len(out), "judgments": len(rows), "items": len(by_item), "skipped": dict(skipped)}


def _labels_share(rows: list[Row], key) -> dict[int, float]:
    """Per judgment: the share of the item's labelers who gave the same label."""
    c = Counter(key(r) for r in rows)
    return {r.judgment.id: c[key(r)] / len(rows) for r in rows}


def _aggregate_classes(by_item: dict, key, k: int, aggregate: str) -> agreement.Aggregate:
    triples = [(i, r.labeler.name, key(r)) for i, rs in by_item.items() for r in rs]
    if aggregate == "dawid-skene":
        return agreement.dawid_skene(triples, k)
    return agreement.majority_vote(triples, k)


def _item_meta(project: Project, rs: list[Row], agg: agreement.Aggregate, item_id: int) -> dict:
    meta = {"project": project.slug, "item_id": item_id, "aggregate": "soft label",
            "labelers": [r.labeler.name for r in rs], "labeler_groups": [r.labeler.group_tag for r in rs],
            "judged_at": [r.judgment.created_at.isoformat() + "Z" for r in rs], "votes": len(rs)}
    if agg.reliability:
        meta["labeler_reliability"] = {r.labeler.name: round(agg.reliability[r.labeler.name], 4) for r in rs}
    return meta


def _pairwise(project, by_item, aggregate):
    out, skipped = [], Counter()
    if aggregate != "none" and by_item:
        agg = _aggregate_classes(by_item, lambda r: pair_class(r.judgment.answer), 3, aggregate)
    for item_id, rs in by_item.items():
        c = rs[0].item.candidates
        if aggregate == "none":
            share = _labels_share(rs, lambda r: pair_class(r.judgment.answer))
            for r in rs:
                choice = r.judgment.answer["choice"]
                top, meta = _base(r, project, share[r.judgment.id])
                w = choice if choice in (0, 1) else 0
                meta.update(chosen_model=c[w]["model"], rejected_model=c[1 - w]["model"], both_bad=choice == "both_bad")
                out.append({"prompt": r.item.prompt, "chosen": c[w]["text"], "rejected": c[1 - w]["text"],
                            "tie": choice not in (0, 1), "weight": 1.0, **top, "meta": meta})
            continue
        label = agg.labels[item_id]
        if label is None:
            skipped["tied vote"] += 1
            continue
        w = label if label in (0, 1) else 0
        meta = _item_meta(project, rs, agg, item_id)
        meta.update(chosen_model=c[w]["model"], rejected_model=c[1 - w]["model"], soft_label=agg.soft[item_id])
        out.append({"prompt": rs[0].item.prompt, "chosen": c[w]["text"], "rejected": c[1 - w]["text"],
                    "tie": label == 2, "weight": round(agg.soft[item_id][label], 6), "meta": meta})
    return out, skipped


def _ranking(project, by_item, aggregate):
    out, skipped = [], Counter()
    for item_id, rs in by_item.items():
        texts = [c["text"] for c in rs[0].item.candidates]
        if aggregate == "none":
            share = _labels_share(rs, lambda r: r.judgment.answer["order"][0])
            for r in rs:
                top, meta = _base(r, project, share[r.judgment.id])
                meta["models"] = [c["model"] for c in r.item.candidates]
                out.append({"prompt": r.item.prompt, "responses": texts, "order": r.judgment.answer["order"], **top, "meta": meta})
            continue
        points = [0.0] * len(texts)  # Borda: K-1 points for first place ... 0 for last
        for r in rs:
            for place, cand in enumerate(r.judgment.answer["order"]):
                points[cand] += len(texts) - 1 - place
        order = sorted(range(len(texts)), key=lambda i: (-points[i], i))
        if len(set(points)) < len(points):
            skipped["borda tie broken by position"] += 1
        meta = _item_meta(project, rs, agreement.Aggregate({}, {}), item_id)
        meta.update(borda_points=points, aggregate="borda")
        out.append({"prompt": rs[0].item.prompt, "responses": texts, "order": order, "meta": meta})
    return out, skipped


def _rating(project, by_item, aggregate):
    out, scale = [], [project.scale_low, project.scale_high]
    for item_id, rs in by_item.items():
        cand = rs[0].item.candidates[0]
        for crit in project.criteria:
            if aggregate == "none":
                share = _labels_share(rs, lambda r: r.judgment.answer["scores"][crit])
                for r in rs:
                    top, meta = _base(r, project, share[r.judgment.id])
                    meta["model"] = cand["model"]
                    out.append({"prompt": r.item.prompt, "response": cand["text"], "score": r.judgment.answer["scores"][crit],
                                "scale": scale, "criterion": crit, **top, "meta": meta})
                continue
            vals = [r.judgment.answer["scores"][crit] for r in rs]
            mean = sum(vals) / len(vals)
            meta = _item_meta(project, rs, agreement.Aggregate({}, {}), item_id)
            meta.update(model=cand["model"], scores=vals, aggregate="mean")
            out.append({"prompt": rs[0].item.prompt, "response": cand["text"], "score": mean, "scale": scale,
                        "criterion": crit, "meta": meta})
    return out, Counter()


def _thumbs(project, by_item, aggregate):
    out, skipped = [], Counter()
    key = lambda r: 1 if r.judgment.answer["up"] else 0  # noqa: E731
    if aggregate != "none" and by_item:
        agg = _aggregate_classes(by_item, key, 2, aggregate)
    for item_id, rs in by_item.items():
        cand = rs[0].item.candidates[0]
        if aggregate == "none":
            share = _labels_share(rs, key)
            for r in rs:
                top, meta = _base(r, project, share[r.judgment.id])
                meta["model"] = cand["model"]
                out.append({"prompt": r.item.prompt, "response": cand["text"], "label": r.judgment.answer["up"],
                            "weight": 1.0, **top, "meta": meta})
            continue
        label = agg.labels[item_id]
        if label is None:
            skipped["tied vote"] += 1
            continue
        meta = _item_meta(project, rs, agg, item_id)
        meta["model"] = cand["model"]
        out.append({"prompt": rs[0].item.prompt, "response": cand["text"], "label": bool(label),
                    "weight": round(agg.soft[item_id][label], 6), "meta": meta})
    return out, skipped


def to_jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


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


CSV_FIELDS = ("judgment_id", "project", "item_id", "labeler", "group", "judged_at", "answer", "display_order",
              "is_gold", "gold_correct", "duration_ms", "reason")


def judgments_csv(db: Session, project: Project) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_FIELDS)
    for r in load(db, project, include_gold=True):
        j = r.judgment
        w.writerow([j.id, project.slug, r.item.id, r.labeler.name, r.labeler.group_tag or "",
                    j.created_at.isoformat() + "Z", json.dumps(j.answer), json.dumps(j.display_order), r.item.is_gold,
                    "" if not r.item.is_gold else gold_correct(project, j.answer, r.item.gold),
                    j.duration_ms if j.duration_ms is not None else "", _cell(j.reason or "")])
    return buf.getvalue()


def _cell(text: str) -> str:
    """Free text made safe for spreadsheets (a leading = + - @ would run as a formula)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text

"""Dashboard numbers for a project: progress, throughput, skips, agreement, per-labeler and per-group stats.

Counts are SQL aggregates; per-labeler figures can be asked for one page of labelers at a time (reading
only their judgments and the labels of the items they judged); the agreement figures, which need every
judgment, are cached per project until a judgment is added or changed (:class:`AgreementCache`)."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from datetime import timedelta

from sqlalchemy import func, select, true, union
from sqlalchemy.orm import Session

from palate.feedback import agreement
from palate.feedback.db import Assignment, Item, Judgment, JudgmentEdit, Labeler, Project, utcnow
from palate.feedback.export import gold_correct, load, pair_class


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


LABELERS_PER_PAGE = 25


def project_stats(db: Session, project: Project, cache: "AgreementCache | None" = None) -> dict:
    """Everything at once (the stats API, labelers.csv): the summary, every labeler, agreement, skipped items."""
    out = project_summary(db, project)
    out["labelers"], _ = labeler_stats(db, project)
    out["agreement"] = agreement_stats(db, project, cache)
    out["skipped_items"] = skipped_items(db, project)
    return out


def project_summary(db: Session, project: Project) -> dict:
    """Progress, throughput and counts, each one SQL aggregate (nothing loaded row by row)."""
    count = lambda q: db.scalar(q) or 0  # noqa: E731
    in_project, regular = Judgment.project_id == project.id, Item.is_gold.is_(False)
    n_items = count(select(func.count()).select_from(Item).where(Item.project_id == project.id, regular))
    n_gold = count(select(func.count()).select_from(Item).where(Item.project_id == project.id, Item.is_gold.is_(True)))
    judged = select(func.count()).select_from(Judgment).join(Item, Item.id == Judgment.item_id).where(in_project)
    n_regular, n_all = count(judged.where(regular)), count(judged)
    complete = (select(Judgment.item_id).join(Item, Item.id == Judgment.item_id).where(in_project, regular)
                .group_by(Judgment.item_id).having(func.count() >= project.overlap).subquery())
    now = utcnow()
    recent = lambda since: count(select(func.count()).select_from(Judgment).where(in_project, Judgment.created_at > since))  # noqa: E731
    target = n_items * project.overlap
    return {
        "project": project.slug, "task_type": project.task_type, "items": n_items, "gold_items": n_gold,
        "overlap": project.overlap, "judgments": n_regular, "gold_judgments": n_all - n_regular,
        "target": target, "progress": round(n_regular / target, 4) if target else 0.0,
        "items_complete": count(select(func.count()).select_from(complete)),
        "throughput_per_hour": recent(now - timedelta(hours=1)),
        "throughput_last_10min_per_min": round(recent(now - timedelta(minutes=10)) / 10, 2),
        "skips": count(select(func.count()).select_from(Assignment).where(
            Assignment.project_id == project.id, Assignment.skipped_at.is_not(None))),
        "edited_judgments": count(select(func.count()).select_from(Judgment).where(in_project, Judgment.edited_at.is_not(None))),
        "labeler_count": count(select(func.count()).select_from(_active_labelers(project).subquery())),
    }


def _active_labelers(project: Project):
    """Ids of the labelers who judged or skipped something in the project."""
    return union(select(Judgment.labeler_id.label("labeler_id")).where(Judgment.project_id == project.id),
                 select(Assignment.labeler_id).where(Assignment.project_id == project.id, Assignment.skipped_at.is_not(None)))


def labeler_stats(db: Session, project: Project, offset: int = 0, limit: int | None = None) -> tuple[list[dict], int]:
    """Per labeler (by name; ``limit`` of them from ``offset``, or all) and how many there are in all. Reads only
    those labelers' judgments, and for their agreement with the majority the other labels of the items they judged."""
    active = _active_labelers(project).subquery()
    names = select(Labeler).where(Labeler.id.in_(select(active.c.labeler_id))).order_by(Labeler.name, Labeler.id)
    total = db.scalar(select(func.count()).select_from(names.subquery())) or 0
    labelers = db.scalars(names.offset(offset).limit(limit)).all()
    if not labelers:
        return [], total
    ids = [lab.id for lab in labelers]
    # one page: only these labelers' rows (all of them: no id list, which may be long)
    mine = (Judgment.project_id == project.id) & (Judgment.labeler_id.in_(ids) if limit is not None else true())
    rows = db.execute(select(Judgment.labeler_id, Judgment.item_id, Judgment.answer, Judgment.duration_ms,
                             Judgment.created_at, Judgment.edited_at, Item.is_gold, Item.gold)
                      .join(Item, Item.id == Judgment.item_id).where(mine).order_by(Judgment.id)).all()
    majority = {}
    if project.task_type != "rating":
        labels = defaultdict(list)
        for item_id, answer in db.execute(select(Judgment.item_id, Judgment.answer).join(Item, Item.id == Judgment.item_id)
                                          .where(Judgment.item_id.in_(select(Judgment.item_id).where(mine)),
                                                 Item.is_gold.is_(False)).order_by(Judgment.id)):
            labels[item_id].append(label_of(project, answer))
        majority = {i: Counter(v).most_common(1)[0][0] for i, v in labels.items() if len(v) >= 2}
    skips = dict(db.execute(select(Assignment.labeler_id, func.count()).where(
        Assignment.project_id == project.id, Assignment.skipped_at.is_not(None),
        Assignment.labeler_id.in_(ids) if limit is not None else true()).group_by(Assignment.labeler_id)).all())
    per = defaultdict(list)
    for r in rows:
        per[r.labeler_id].append(r)
    out = []
    for lab in labelers:
        rs = per[lab.id]
        gold = [gold_correct(project, r.answer, r.gold) for r in rs if r.is_gold]
        times = [r.duration_ms for r in rs if r.duration_ms is not None]
        agree = [label_of(project, r.answer) == majority[r.item_id] for r in rs if not r.is_gold and r.item_id in majority]
        out.append({"labeler": lab.name, "group": lab.group_tag, "judgments": len(rs),
                    "gold_judged": len(gold), "gold_accuracy": round(sum(gold) / len(gold), 4) if gold else None,
                    "agreement_with_majority": round(sum(agree) / len(agree), 4) if agree else None,
                    "median_seconds": round(statistics.median(times) / 1000, 2) if times else None,
                    "last_judged": max(r.created_at for r in rs).isoformat() + "Z" if rs else None,
                    "edited": sum(r.edited_at is not None for r in rs), "skips": skips.get(lab.id, 0)})
    return out, total


def skipped_items(db: Session, project: Project, limit: int | None = None) -> list[dict]:
    """Items by how often they were skipped (most first), with the reasons given."""
    skipped = (Assignment.project_id == project.id) & Assignment.skipped_at.is_not(None)
    counts = db.execute(select(Assignment.item_id, func.count().label("n")).where(skipped)
                        .group_by(Assignment.item_id).order_by(func.count().desc(), Assignment.item_id).limit(limit)).all()
    reasons = defaultdict(list)
    if counts:
        shown = Assignment.item_id.in_([c.item_id for c in counts]) if limit is not None else true()
        for item_id, reason in db.execute(select(Assignment.item_id, Assignment.skip_reason).where(
                skipped, Assignment.skip_reason.is_not(None), shown).order_by(Assignment.id)):
            reasons[item_id].append(reason)
    return [{"item_id": c.item_id, "skips": c.n, "reasons": reasons.get(c.item_id, [])} for c in counts]


class AgreementCache:
    """The agreement figures (Dawid–Skene EM is the slow part) per project, recomputed only when its
    judgments changed: keyed by their count, newest id, latest edit and number of edits."""

    def __init__(self, size: int = 64):
        self.size, self.entries = size, {}

    def get(self, key):
        return self.entries.get(key)

    def put(self, key, value) -> None:
        if len(self.entries) >= self.size:
            self.entries.pop(next(iter(self.entries)), None)
        self.entries[key] = value


def agreement_stats(db: Session, project: Project, cache: AgreementCache | None = None) -> dict:
    """Agreement over the regular items (see :func:`_agreement`), from ``cache`` while the judgments are unchanged."""
    key = None
    if cache is not None:
        edits = (select(func.count()).select_from(JudgmentEdit).join(Judgment, Judgment.id == JudgmentEdit.judgment_id)
                 .where(Judgment.project_id == project.id).scalar_subquery())
        key = (project.id, project.created_at, *db.execute(select(
            func.count(), func.max(Judgment.id), func.max(Judgment.edited_at), edits).where(
            Judgment.project_id == project.id)).one())
        hit = cache.get(key)
        if hit is not None:
            return hit
    out = _agreement(project, load(db, project))
    if cache is not None:
        cache.put(key, out)
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

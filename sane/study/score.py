"""``sane study score``: how well people predicted the model, per variant, and whether variants differ.

Design and statistics (printed with the results):

- The study is between-subjects (one variant per participant), so *participants* are the units of the tests:
  each participant's accuracy is one observation. Variants are compared pairwise with the two-sided
  **Mann-Whitney U test** on participants' accuracies (unpaired; no normality assumed), Holm-corrected over
  the pairs, and all together with the **Kruskal-Wallis H test**. The 95 % interval of a variant's accuracy
  is Student's t over its participants' accuracies (Wilson's interval on the answers when it has one
  participant).
- For reference, **Fisher's exact test** on the pooled answers is printed beside each pair: it treats every
  answer as independent, which people who differ in skill are not, so it is optimistic with real people.
- Per triplet: the share of correct answers (its difficulty), with the model's margin and tier.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import stats

from sane.errors import InputError

ANSWERS_FORMAT = "sane-study-answers/1"
ALPHA = 0.05


@dataclass
class Participant:
    number: int
    variant: str
    source: str
    choices: dict[str, str]  # triplet id -> "B" / "C"
    ms: dict[str, float | None]


def read_key(study: str | os.PathLike) -> dict:
    """The key.json of the study directory ``study`` (or the key file itself)."""
    path = Path(study)
    path = path / "key.json" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"no study key at {path} (the directory `sane study build --out` wrote)")
    return json.loads(path.read_text())


def _answer_files(paths: list[str | os.PathLike]) -> list[Path]:
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(path.glob("*.json"))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"answers not found: {path}")
    if not files:
        raise InputError("no answers files (*.json) given", "answers")
    return files


def read_answers(key: dict, paths: list[str | os.PathLike]) -> list[Participant]:
    """The participants in the answers files (or directories of them) ``paths``, checked against ``key``."""
    triplets = {t["id"] for t in key["triplets"]}
    seen: dict[int, str] = {}
    participants = []
    for file in _answer_files(paths):
        try:
            data = json.loads(file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{file}: not an answers file ({exc})", "answers") from exc
        if not isinstance(data, dict) or data.get("format") != ANSWERS_FORMAT:
            raise InputError(f"{file}: not an answers file of this tool (format {ANSWERS_FORMAT})", "answers")
        if data.get("study") != key["study"]:
            raise InputError(f"{file}: answers to study {data.get('study')}, not to this one ({key['study']})",
                             "answers")
        number, variant = data.get("participant"), data.get("variant")
        if variant not in key["variants"]:
            raise InputError(f"{file}: variant {variant!r} is not one of the study's ({', '.join(key['variants'])})",
                             "answers")
        if number in seen:
            raise InputError(f"participant {number} answered twice: {seen[number]} and {file}", "answers")
        seen[number] = str(file)
        choices, ms = {}, {}
        for row in data.get("answers", []):
            tid, choice = row.get("triplet"), row.get("choice")
            if tid not in triplets or choice not in ("B", "C"):
                raise InputError(f"{file}: answer {row} names no triplet of the study or no choice B/C", "answers")
            if tid in choices:
                raise InputError(f"{file}: triplet {tid} answered twice", "answers")
            choices[tid], ms[tid] = choice, row.get("ms")
        participants.append(Participant(int(number), variant, str(file), choices, ms))
    return participants


def wilson(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson's score interval for a proportion."""
    if n == 0:
        return (math.nan, math.nan)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (centre - half, centre + half)


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order)."""
    order = np.argsort(p_values)
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def score_study(key: dict, participants: list[Participant]) -> dict:
    """Accuracy per variant (with its interval, answer times, per-tier accuracy), the tests between
    variants, and each triplet's difficulty; JSON-able."""
    answer = {t["id"]: t["answer"] for t in key["triplets"]}
    by_variant: dict[str, list[Participant]] = defaultdict(list)
    for p in participants:
        by_variant[p.variant].append(p)
    tier = {t["id"]: t["tier"] for t in key["triplets"]}
    variants = {}
    for variant in key["variants"]:
        group = by_variant.get(variant, [])
        accuracies = [np.mean([c == answer[t] for t, c in p.choices.items()]) for p in group if p.choices]
        correct = sum(c == answer[t] for p in group for t, c in p.choices.items())
        n = sum(len(p.choices) for p in group)
        if len(accuracies) >= 2:
            mean, sem = float(np.mean(accuracies)), float(stats.sem(accuracies))
            half = stats.t.ppf(0.975, len(accuracies) - 1) * sem if sem > 0 else 0.0
            interval, kind = (max(0.0, mean - half), min(1.0, mean + half)), "t over participants"
        else:
            interval, kind = wilson(correct, n), "Wilson on answers"
        times = [ms for p in group for ms in p.ms.values() if ms is not None]
        tiers = {}
        for name in sorted(set(tier.values())):
            hits = [c == answer[t] for p in group for t, c in p.choices.items() if tier[t] == name]
            tiers[name] = float(np.mean(hits)) if hits else None
        variants[variant] = {
            "participants": len(group), "answers": n, "correct": int(correct),
            "accuracy": correct / n if n else None, "ci95": list(interval) if n else None, "ci_kind": kind,
            "participant_accuracies": [float(a) for a in accuracies],
            "median_ms": float(np.median(times)) if times else None,
            "iqr_ms": [float(np.percentile(times, 25)), float(np.percentile(times, 75))] if times else None,
            "accuracy_by_tier": tiers,
        }
    tests = _tests(variants)
    difficulty = []
    for t in key["triplets"]:
        hits = [p.choices[t["id"]] == t["answer"] for p in participants if t["id"] in p.choices]
        per_variant = {}
        for variant in key["variants"]:
            v_hits = [p.choices[t["id"]] == t["answer"] for p in by_variant.get(variant, []) if t["id"] in p.choices]
            per_variant[variant] = float(np.mean(v_hits)) if v_hits else None
        difficulty.append({"triplet": t["id"], "tier": t["tier"], "margin": t["margin"], "answers": len(hits),
                           "accuracy": float(np.mean(hits)) if hits else None, "by_variant": per_variant})
    return {"study": key["study"], "participants": len(participants), "variants": variants, "tests": tests,
            "triplets": difficulty, "alpha": ALPHA}


def _tests(variants: dict) -> dict:
    groups = {v: s["participant_accuracies"] for v, s in variants.items() if len(s["participant_accuracies"]) >= 2}
    overall = None
    if len(groups) >= 2 and len({a for g in groups.values() for a in g}) > 1:
        h, p = stats.kruskal(*groups.values())
        overall = {"test": "Kruskal-Wallis H on participants' accuracies", "h": float(h), "p": float(p),
                   "variants": list(groups)}
    pairs = []
    for a, b in combinations([v for v, s in variants.items() if s["answers"]], 2):
        sa, sb = variants[a], variants[b]
        table = [[sa["correct"], sa["answers"] - sa["correct"]], [sb["correct"], sb["answers"] - sb["correct"]]]
        row = {"a": a, "b": b, "difference": sa["accuracy"] - sb["accuracy"],
               "fisher_p": float(stats.fisher_exact(table)[1]), "mann_whitney_p": None}
        if a in groups and b in groups:
            row["mann_whitney_p"] = float(stats.mannwhitneyu(groups[a], groups[b], alternative="two-sided").pvalue)
        pairs.append(row)
    tested = [row for row in pairs if row["mann_whitney_p"] is not None]
    for row, adjusted in zip(tested, holm([row["mann_whitney_p"] for row in tested])):
        row["mann_whitney_p_holm"] = adjusted
        row["significant"] = adjusted < ALPHA
    return {"overall": overall, "pairs": pairs,
            "pairwise_test": "two-sided Mann-Whitney U on participants' accuracies, Holm-corrected",
            "reference_test": "two-sided Fisher's exact test on pooled answers (assumes independent answers)"}


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.2g}" if value >= 1e-4 else f"{value:.1e}"


def format_score(result: dict, hardest: int = 5) -> list[str]:
    """The lines `sane study score` prints."""
    lines = [f"study {result['study']}: {result['participants']} participants",
             f"{'variant':<11} {'people':>6} {'answers':>7} {'accuracy':>8}  {'95% CI':<14} {'CI from':<20} "
             f"{'easy':>5} {'hard':>5} {'median s':>8}"]
    for name, s in result["variants"].items():
        if not s["answers"]:
            lines.append(f"{name:<11} {s['participants']:>6} {0:>7}  (no answers)")
            continue
        tiers = s["accuracy_by_tier"]
        lo, hi = s["ci95"]
        lines.append(
            f"{name:<11} {s['participants']:>6} {s['answers']:>7} {s['accuracy']:>8.3f}  [{lo:.3f}, {hi:.3f}] "
            f"{s['ci_kind']:<20} {_fmt(tiers.get('easy')):>5} {_fmt(tiers.get('hard')):>5} "
            f"{_fmt(None if s['median_ms'] is None else s['median_ms'] / 1e3, 1):>8}")
    tests = result["tests"]
    if tests["overall"]:
        o = tests["overall"]
        lines.append(f"all variants: {o['test']}: H = {o['h']:.2f}, p = {_p(o['p'])}")
    if tests["pairs"]:
        lines.append(f"pairs: {tests['pairwise_test']} (alpha {result['alpha']}); "
                     f"reference: {tests['reference_test']}")
        for row in tests["pairs"]:
            verdict = "" if row["mann_whitney_p"] is None else \
                "  significant" if row["significant"] else "  not significant"
            lines.append(f"  {row['a']} - {row['b']}: {row['difference']:+.3f}  Mann-Whitney p = "
                         f"{_p(row['mann_whitney_p'])} (Holm {_p(row.get('mann_whitney_p_holm'))})  "
                         f"Fisher p = {_p(row['fisher_p'])}{verdict}")
    answered = [t for t in result["triplets"] if t["accuracy"] is not None]
    if answered:
        lines.append(f"hardest triplets (of {len(answered)}; all in triplets.csv):")
        for t in sorted(answered, key=lambda t: (t["accuracy"], t["margin"]))[:hardest]:
            lines.append(f"  {t['triplet']}  accuracy {t['accuracy']:.2f} over {t['answers']} answers  "
                         f"model margin {t['margin']:.3f} ({t['tier']})")
    return lines


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def plot_accuracy(result: dict, path: str | os.PathLike) -> None:
    """A bar chart (PNG) of accuracy per variant with its 95 % interval and the 50 % chance line."""
    names = [v for v, s in result["variants"].items() if s["answers"]]
    width, height, left, bottom, top = 140 * max(len(names), 1) + 170, 420, 70, 60, 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=15)
    plot_h = height - top - bottom

    def y(value: float) -> float:
        return top + (1 - value) * plot_h

    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        draw.line([(left, y(tick)), (width - 20, y(tick))], fill="#ddd")
        draw.text((left - 45, y(tick) - 8), f"{tick:.2f}", fill="black", font=font)
    for i, name in enumerate(names):
        s = result["variants"][name]
        x0 = left + 30 + i * 140
        draw.rectangle([(x0, y(s["accuracy"])), (x0 + 80, y(0))], fill="#5c6bc0")
        lo, hi = s["ci95"]
        draw.line([(x0 + 40, y(lo)), (x0 + 40, y(hi))], fill="black", width=2)
        for v in (lo, hi):
            draw.line([(x0 + 30, y(v)), (x0 + 50, y(v))], fill="black", width=2)
        draw.text((x0, height - bottom + 8), name, fill="black", font=font)
        draw.text((x0, height - bottom + 28), f"{s['accuracy']:.2f} (n={s['participants']})", fill="black", font=font)
    draw.line([(left, y(0.5)), (width - 80, y(0.5))], fill="#b00020", width=2)  # over the bars
    draw.text((width - 72, y(0.5) - 8), "chance", fill="#b00020", font=font)
    draw.text((left, 10), f"accuracy per variant, 95% CI ({result['participants']} participants)", fill="black",
              font=font)
    image.save(os.fspath(path))


def write_score(result: dict, out: str | os.PathLike) -> list[Path]:
    """score.json, triplets.csv (difficulty per triplet) and accuracy.png in ``out``; the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "score.json").write_text(json.dumps(result, indent=1) + "\n")
    variants = list(result["variants"])
    rows = ["triplet,tier,margin,answers,accuracy," + ",".join(f"accuracy_{v}" for v in variants)]
    for t in result["triplets"]:
        rows.append(",".join([t["triplet"], t["tier"], f"{t['margin']:.6f}", str(t["answers"]), _fmt(t["accuracy"], 4),
                              *(_fmt(t["by_variant"][v], 4) for v in variants)]))
    (out / "triplets.csv").write_text("\n".join(rows) + "\n")
    plot_accuracy(result, out / "accuracy.png")
    return [out / "score.json", out / "triplets.csv", out / "accuracy.png"]

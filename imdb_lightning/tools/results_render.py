"""The generated blocks of README.md and docs/*.md, written from the results file (results_figures.py)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

from . import results_figures as F
from .paired import corrected_resampled

SUPERSCRIPT = "¹²³⁴⁵⁶⁷⁸⁹"
NOT_ALONE = "†"


def f2(x) -> str:
    return "—" if x is None else f"{x:.2f}"


def signed(x) -> str:
    return f"{x:+.2f}"


def seeds_text(seeds: list) -> str:
    seeds = [s for s in seeds if s is not None]
    if seeds == list(range(len(seeds))) and len(seeds) > 2:
        return f"seeds 0–{len(seeds) - 1}"
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, seeds))


def figure(entry: F.Entry, stat: str) -> str:
    """The table's figure (its first run's), and the mean over its tested seeds when there are several."""
    first, seed = entry.first[stat], entry.first["seed"]
    text = f2(first)
    notes = [] if seed in (0, None) else [f"seed {seed}"]
    if len(entry.runs) > 1:
        notes.append(f"{seeds_text(entry.seeds)}: {f2(getattr(entry, f'{stat}_mean'))}")
    return text + (f" ({'; '.join(notes)})" if notes else "")


def machine_name(data: dict, key: str) -> str:
    return data["machines"][key]["short"]


def cost_text(data: dict, entry: F.Entry) -> str:
    cost = F.cost(data, entry)
    if cost is None:
        return "not timed"
    parts = f" ({' + '.join(f'{p[1]:.1f}' for p in cost.parts)})" if len(cost.parts) > 1 else ""
    return f"{cost.minutes:.1f} min{parts}{'' if cost.alone else NOT_ALONE}, {machine_name(data, cost.machine)}"


def notes(entries: list[F.Entry]) -> dict[str, str]:
    """Superscript marks for the recipes whose test figures changed what was measured or tested."""
    marked = [e for e in entries if e.recipe.get("test_note")]
    return {e.key: SUPERSCRIPT[i] for i, e in enumerate(marked)}


def machines_line(data: dict, keys: set[str]) -> str:
    described = []
    for key in sorted(keys):
        m = data["machines"][key]
        what = m.get("gpu") or f"{m['cpu']}, {m['cores']} cores"
        described.append(f"**{m['short']}**: {what} (flags {m['flags']})")
    return "Machines: " + "; ".join(described) + "."


def readme_table(data: dict, root: Path) -> str:
    entries = F.table(data)
    chosen = entries[0]
    marks = notes(entries)
    lines = ["| recipe | val grouped | test (public half) | time | command |", "|---|---|---|---|---|"]
    used = set()
    for e in entries:
        label, val = e.recipe["label"], figure(e, "val")
        if e is chosen:
            label, val = f"**{label}**", f"**{val}**"
        cost = F.cost(data, e)
        used |= {r["machine"] for r in e.runs} | ({cost.machine} if cost else set())
        lines.append(f"| {label} | {val} | {figure(e, 'test')}{marks.get(e.key, '')} | {cost_text(data, e)} | "
                     f"`{e.recipe['command']}` |")
    lines += ["", f"**Bold**: the recipe chosen on validation, the highest val grouped mean over its model seeds "
              f"(split 0). {NOT_ALONE}: not timed alone (beside other work, or not recorded). A time adds what the "
              "recipe needs first (its language model, its recurrent run) on one machine. " + machines_line(data, used)
              + "".join(f" {marks[e.key]} {e.recipe['test_note'][0].upper()}{e.recipe['test_note'][1:]}." for e in entries
                        if e.key in marks)]
    return "\n".join(lines) + "\n"


def readme_results(data: dict, root: Path) -> str:
    return readme_table(data, root) + "\n" + readme_trust(data, root)


def trust_figures(data: dict, root: Path) -> dict:
    entries = F.table(data)
    tau, p = F.kendall(entries)
    wrong = F.misranked(entries)
    offsets = F.offsets(entries)
    pairs = F.pair_verdicts(data, entries, root)
    established = [p for p in pairs if p["difference"].established]
    judged_wrong = {(a.key, b.key) for a, b, _, _ in wrong}
    wrong_verdicts = [p for p in pairs if (p["a"].key, p["b"].key) in judged_wrong or (p["b"].key, p["a"].key) in judged_wrong]
    return {"entries": entries, "tau": tau, "p": p, "wrong": wrong, "offsets": offsets, "pairs": pairs,
            "established": established, "held": [p for p in established if p["held"]], "wrong_verdicts": wrong_verdicts}


def readme_trust(data: dict, root: Path) -> str:
    t = trust_figures(data, root)
    entries, n = t["entries"], len(t["entries"])
    wrong_max = max((w[2] for w in t["wrong"]), default=0)
    lo, hi = min(t["offsets"].values()), max(t["offsets"].values())
    wrong_judged = t["wrong_verdicts"]
    wrong_est = sum(p["difference"].established for p in wrong_judged)
    held = "all of them" if len(t["held"]) == len(t["established"]) else f"{len(t['held'])} of them"
    wrong_text = (f"none of the {len(t['wrong'])} misranked pairs can be judged (their runs' per-review outcomes were not "
                  "kept, and they have no six split seeds)" if not wrong_judged else
                  f"of the {len(t['wrong'])} misranked pairs, {len(wrong_judged)} can be judged and {wrong_est} of them "
                  f"{'was' if wrong_est == 1 else 'were'} established")
    linear = [e for e in entries if e.recipe["kind"] == "linear"]
    recurrent = [e for e in entries if e.recipe["kind"] == "fit"]
    stacks = [e for e in entries if e.recipe["kind"] == "stack" and len(e.runs) > 1]
    best_linear = max(linear, key=lambda e: e.val_mean) if linear else None
    best_single = max(recurrent, key=lambda e: e.val_mean) if recurrent else None
    gains = sorted(e.test_mean - best_linear.test_mean for e in stacks) if best_linear else []
    linear_line = ""
    if best_linear and best_single and best_single.val_mean < best_linear.val_mean:
        linear_line = (f"- No recurrent model trained here reaches {best_linear.recipe['label']} on validation: the best, "
                       f"{best_single.recipe['label']}, reads {f2(best_single.val_mean)} against {f2(best_linear.val_mean)}.")
        if len(gains) > 1:
            linear_line += (f" Stacked with it, a recurrent run adds {gains[0]:.2f}–{gains[-1]:.2f} points on test (the "
                            "stacks tested on several model seeds).")
    return "\n".join([
        f"- **How far to trust a difference**: validation ranked these {n} recipes as test did with Kendall's tau "
        f"{t['tau']:.2f}; {len(t['wrong'])} of the {n * (n - 1) // 2} pairs are the other way round on test, all within "
        f"{wrong_max:.2f} points on validation. Test reads {signed(lo)} to {signed(hi)} points above validation, by an "
        "amount that differs between recipes. `compare` calls a difference *established* only where the 95% interval "
        "of the paired difference (the same reviews, films as clusters; over split seeds, Nadeau and Bengio's corrected "
        f"t) excludes zero. Of the {len(t['pairs'])} pairs of these recipes it can judge (per-review outcomes kept, or "
        f"six split seeds), {len(t['established'])} are established, and {held} kept their order on test; "
        f"{wrong_text}. Read a difference `compare` does not call established as unknown "
        "([docs/results.md](docs/results.md#how-far-to-trust-a-difference)).",
        linear_line,
    ]).rstrip() + "\n"


def results_table(data: dict, root: Path) -> str:
    entries = F.table(data)
    lines = ["| recipe | val grouped | test (public half) | test − val | model seeds (val / test, machine) |",
             "|---|---|---|---|---|"]
    for e in entries:
        runs = "; ".join(f"{'seed ' + str(r['seed']) if r['seed'] is not None else 'no seed'}: {f2(r['val'])} / {f2(r['test'])}, "
                         f"{machine_name(data, r['machine'])}" for r in e.runs)
        lines.append(f"| {e.recipe['label']} | {figure(e, 'val')} | {figure(e, 'test')} | "
                     f"{signed(e.first['test'] - e.first['val'])} | {runs} |")
    return "\n".join(lines) + "\n"


def from_scratch(entries: list[F.Entry]) -> list[F.Entry]:
    """The table's recurrent recipes trained from scratch (no language model, no stack)."""
    return [e for e in entries if e.recipe["kind"] == "fit" and not e.recipe.get("needs")]


def results_choices(data: dict, root: Path) -> str:
    entries = F.table(data)
    chosen, scratch = entries[0], from_scratch(entries)[0]
    single = max((e for e in entries if e.recipe["kind"] == "fit"), key=lambda e: e.val_mean)
    marks = notes(entries)
    lines = [f"- **The recipe chosen**: {chosen.recipe['label']}, the highest val grouped mean over its model seeds "
             f"({f2(chosen.val_mean)}).",
             f"- **The best single recurrent model on validation**: {single.recipe['label']} ({f2(single.val_mean)}).",
             f"- **The tour's recipe** (`{scratch.recipe['command'].split('--config ')[-1]}`): {scratch.recipe['label']}, the "
             f"highest val grouped mean of the recipes trained from scratch ({f2(scratch.val_mean)})."]
    lines += [f"- {marks[e.key]} {e.recipe['label']}: {e.recipe['test_note']}." for e in entries if e.key in marks]
    return "\n".join(lines) + "\n"


def results_costs(data: dict, root: Path) -> str:
    lines = ["| recipe | machine | minutes | its parts (needs first) |", "|---|---|---|---|"]
    for e in F.table(data):
        for machine in data["machines"]:
            cost = F.cost_on(data, e.key, machine)
            if cost and len(cost.parts) > 1:
                parts = " + ".join(f"{data['recipes'][k]['label']} {m:.1f}{'' if t == 'alone' else NOT_ALONE}"
                                   for k, m, t in cost.parts)
                lines.append(f"| {e.recipe['label']} | {machine_name(data, machine)} | {cost.minutes:.1f}"
                             f"{'' if cost.alone else NOT_ALONE} | {parts} |")
    return "\n".join(lines) + f"\n\n{NOT_ALONE}: not timed alone (beside other work, or not recorded).\n"


def lever_values(data: dict, side) -> dict:
    """A lever's before/after: a list of figures, or a recipe whose split series it is."""
    if isinstance(side, str):  # the machine it ran on the most split seeds
        return max(F.series(data, side).values(), key=len)
    return dict(enumerate(side))


def results_levers(data: dict, root: Path) -> str:
    lines = ["| lever | on | over | val grouped before → after | difference | verdict | kept |", "|---|---|---|---|---|---|---|"]
    for lever in data["levers"]:
        before, after = lever_values(data, lever["before"]), lever_values(data, lever["after"])
        shared = sorted(set(before) & set(after))
        diffs = [after[k] - before[k] for k in shared]
        mean_b, mean_a = statistics.fmean(before[k] for k in shared), statistics.fmean(after[k] for k in shared)
        if lever["over"].startswith("split seeds") and len(diffs) > 1:
            d = corrected_resampled(diffs, F.TEST_FRACTION)
            verdict = f"{d.verdict} ({signed(d.low)} to {signed(d.high)})"
        else:
            verdict = "one run: not judged" if len(diffs) == 1 else "model seeds of one split: not judged"
        note = f"; {lever['note']}" if lever.get("note") else ""
        lines.append(f"| {lever['lever']} | {lever['on']} | {lever['over']} | {f2(mean_b)} → {f2(mean_a)} | "
                     f"{signed(mean_a - mean_b)} | {verdict} | {'yes' if lever['kept'] else 'no'}{note} |")
    return "\n".join(lines) + "\n"


def pair_line(p: dict) -> str:
    d = p["difference"]
    interval = "—" if d.low != d.low else f"{signed(d.low)} to {signed(d.high)}"
    held = "" if p["held"] is None else ("yes" if p["held"] else "**no**")
    return (f"| {p['a'].recipe['label']} | {p['b'].recipe['label']} | {signed(d.mean)} | {interval} | {d.verdict} | "
            f"{p['basis']}: {d.method} | {signed(p['test'])} | {held} |")


PAIR_HEADER = ["| higher on validation | lower | val difference | 95% interval | verdict | from | test difference "
               "| held on test |", "|---|---|---|---|---|---|---|---|"]


def results_trust(data: dict, root: Path) -> str:
    t = trust_figures(data, root)
    n = len(t["entries"])
    verdicts = {(p["a"].key, p["b"].key): p for p in t["pairs"]}
    lines = [f"Kendall's tau between val grouped and test over the {n} recipes of the table: **{t['tau']:.2f}** "
             f"(p = {t['p']:.0e}); test − val runs from {signed(min(t['offsets'].values()))} to "
             f"{signed(max(t['offsets'].values()))} points (the recipes' table above).", "",
             f"The {len(t['wrong'])} of {n * (n - 1) // 2} pairs that test ranks the other way round:", "",
             "| higher on validation | lower | val difference | test difference | verdict |", "|---|---|---|---|---|"]
    for a, b, val, test in t["wrong"]:
        p = verdicts.get((a.key, b.key)) or verdicts.get((b.key, a.key))
        verdict = f"{p['difference'].verdict} ({p['basis']})" if p else "not judged: no per-review outcomes or split series"
        lines.append(f"| {a.recipe['label']} | {b.recipe['label']} | {signed(val)} | {signed(test)} | {verdict} |")
    lines += ["", f"Every pair of the table's recipes `compare` can judge ({len(t['pairs'])}; "
              f"{len(t['established'])} established, {len(t['held'])} of them in the same order on test):", "",
              *PAIR_HEADER, *[pair_line(p) for p in sorted(t["pairs"], key=lambda p: -p["difference"].mean)]]
    return "\n".join(lines) + "\n"


def results_lms(data: dict, root: Path) -> str:
    lines = ["| language model | held-out perplexity | minutes | timed | machine | date |", "|---|---|---|---|---|---|"]
    for run in data["runs"]:
        if data["recipes"][run["recipe"]]["kind"] == "lm":
            lines.append(f"| {data['recipes'][run['recipe']]['label']} | {run.get('ppl', '—')} | {run['minutes']} | "
                         f"{run['timing']} | {machine_name(data, run['machine'])} | {run['date']} |")
    return "\n".join(lines) + "\n"


def runs_all(data: dict, root: Path) -> str:
    lines = ["| recipe | model seed | split seed | val grouped | test | minutes | timed | machine | date | commit | record "
             "| note |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["runs"]:
        val = f2(r["val"]) + (f" ({r['validation']})" if r.get("validation", "grouped") != "grouped" else "")
        extra = f"perplexity {r['ppl']}" if r.get("ppl") else ""
        note = "; ".join(x for x in (extra, r.get("note", "")) if x)
        record = r["record"] if r["record"] == F.NOT_KEPT else f"`{r['record']}`"
        lines.append(f"| {data['recipes'][r['recipe']]['label']} | {'—' if r['seed'] is None else r['seed']} | "
                     f"{'—' if r['split'] is None else r['split']} | {val} | {f2(r['test'])} | "
                     f"{'—' if r['minutes'] is None else r['minutes']} | {r['timing']} | {machine_name(data, r['machine'])} | "
                     f"{r['date']} | `{r['commit']}` | {record} | {note} |")
    return "\n".join(lines) + "\n"


def pretraining_recipes(data: dict, root: Path) -> str:
    """Every recipe that starts from a language model, on split 0: its seeds' figures (tested or not) and cost."""
    lines = ["| recipe | val grouped, split 0 | test (public half) | time |", "|---|---|---|---|"]
    for key, recipe in data["recipes"].items():
        if recipe["kind"] == "lm" or not any(data["recipes"][k]["kind"] == "lm" for k in F.chain(data, key)):
            continue
        runs = [r for r in data["runs"] if r["recipe"] == key and r["split"] == 0 and F.grouped(r) and r.get("val") is not None]
        if not runs:
            continue
        entry = F.Entry(key, recipe, runs)
        tested = [r for r in runs if r.get("test") is not None]
        val = ", ".join(f"{f2(r['val'])} (seed {r['seed']}, {machine_name(data, r['machine'])})" for r in runs)
        test = ", ".join(f"{f2(r['test'])} (seed {r['seed']})" for r in tested) or "not tested"
        lines.append(f"| {recipe['label']} | {val} | {test} | {cost_text(data, entry)} |")
    return "\n".join(lines) + "\n"


def kept_runs(data: dict, key: str, kind: str) -> list[dict]:
    """The kept runs of a recipe on this kind of split, model seed 0 (or none): one a split seed."""
    return [r for r in data["runs"] if r["recipe"] == key and F.kept(r) and r.get("validation", "grouped") == kind
            and r["seed"] in (0, None)]


def spread(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f2(values[0])
    return f"{f2(statistics.fmean(values))} ± {f2(statistics.stdev(values))}"


def comparing_split_kinds(data: dict, root: Path) -> str:
    lines = ["| model | val random | val grouped | test (public half) |", "|---|---|---|---|"]
    for key, recipe in data["recipes"].items():
        random, grouped = kept_runs(data, key, "random"), kept_runs(data, key, "grouped")
        if not random or not grouped:
            continue
        seeds = lambda runs: ", ".join(sorted({str(r["split"]) for r in runs}))  # noqa: E731
        tests = [r["test"] for r in grouped if r.get("test") is not None and r["split"] == 0]
        lines.append(f"| {recipe['label']} | {spread([r['val'] for r in random])} (split seeds {seeds(random)}) | "
                     f"{spread([r['val'] for r in grouped])} (split seeds {seeds(grouped)}) | {spread(tests)} |")
    return "\n".join(lines) + ("\n\nMean ± std over the split seeds named (model seed 0 for the NBoW); test: split 0's run "
                               "on the test half.\n")


def comparing_pairs(data: dict, root: Path) -> str:
    keys = [k for k in data["recipes"] if F.record_folders(data, k, root, splits={0})]
    lines = ["| a | b | val a − b | 95% interval | verdict | over |", "|---|---|---|---|---|---|"]
    for splits in ({0}, None):
        for a, b, d in F.record_pairs(data, keys, root, splits):
            if splits is None and d.method == "films as clusters":
                continue  # shown above
            over = f"{d.samples} reviews, {d.clusters} films" if d.method == "films as clusters" else d.method
            lines.append(f"| {data['recipes'][a]['label']} | {data['recipes'][b]['label']} | {signed(d.mean)} | "
                         f"{signed(d.low)} to {signed(d.high)} | {d.verdict} | {over} |")
    return "\n".join(lines) + "\n"


def runs_machines(data: dict, root: Path) -> str:
    return machines_line(data, set(data["machines"])) + "\n"


def trust_summary(data: dict, root: Path) -> str:
    return readme_trust(data, root) + "\n" + results_trust(data, root)


BLOCKS: dict[str, Callable[[dict, Path], str]] = {
    "readme-results": readme_results, "readme-table": readme_table, "readme-trust": readme_trust,
    "results-table": results_table, "results-choices": results_choices, "results-costs": results_costs,
    "results-lms": results_lms, "results-levers": results_levers, "results-trust": results_trust,
    "pretraining-recipes": pretraining_recipes, "comparing-split-kinds": comparing_split_kinds,
    "comparing-pairs": comparing_pairs, "runs-machines": runs_machines, "runs-all": runs_all,
}



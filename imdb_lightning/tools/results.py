"""`imdb-lightning results`: every published figure, from one file the tool writes.

`docs/results.json` holds each run behind a published figure (recipe, model seed, split seed, val
grouped, test on the public half, minutes and whether they were measured alone or beside other work,
machine, date, commit, and where its run record is) and the levers measured. `--add RUN ...` enters
runs from their records; `--render` rewrites the generated blocks of README.md and docs/*.md (between
`<!-- results:NAME -->` and `<!-- /results -->`) from it; `--check` names the blocks that differ.
Kendall's tau, the test − validation offsets, the misranked pairs and the paired verdicts are computed
here (results_figures.py), from the same file; results_render.py writes the blocks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Optional

from ..arguments import ArgumentParser
from ..errors import UserError
from ..machine import cpu_flags
from ..runs import VAL_REVIEWS, read_record
from ..runs import atomic_write as write_atomically

FILE = Path("docs/results.json")
TIMINGS = ("alone", "shared", "not recorded")  # alone: nothing else ran on the machine; shared: other work did
BLOCK = re.compile(r"(<!-- results:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)


def load(path: Path | str = FILE) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise UserError(f"{path}: no results file here (give --file)") from err
    except IsADirectoryError as err:
        raise UserError(f"{path}: a folder, not a results file (give --file)") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not readable JSON ({err})") from err
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a results file (its JSON is a {type(data).__name__}, not an object)")
    missing = {"machines", "recipes", "runs", "levers"} - set(data)
    if missing:
        raise UserError(f"{path}: no {', '.join(sorted(missing))} section")
    for i, run in enumerate(data["runs"]):
        if run.get("recipe") not in data["recipes"] or run.get("machine") not in data["machines"]:
            raise UserError(f"{path}: run {i} names an unknown recipe {run.get('recipe')!r} or machine {run.get('machine')!r}")
        if run.get("timing") not in TIMINGS:
            raise UserError(f"{path}: run {i} ({run['recipe']}): timing must be one of {', '.join(TIMINGS)}")
    return data


def dumps(data: dict) -> str:
    """One machine, recipe, run or lever a line: a new figure is a one-line diff."""
    line = lambda value: json.dumps(value, ensure_ascii=False)  # noqa: E731
    parts = ["{"]
    for s, section in enumerate(data):
        parts.append(f"  {line(section)}: " + ("{" if isinstance(data[section], dict) else "["))
        items = list(data[section].items()) if isinstance(data[section], dict) else list(enumerate(data[section]))
        for i, (key, value) in enumerate(items):
            prefix = f"{line(key)}: " if isinstance(data[section], dict) else ""
            parts.append(f"    {prefix}{line(value)}" + ("," if i < len(items) - 1 else ""))
        parts.append("  " + ("}" if isinstance(data[section], dict) else "]") + ("," if s < len(data) - 1 else ""))
    return "\n".join(parts + ["}"]) + "\n"


def save(data: dict, path: Path | str = FILE) -> None:
    write_atomically(Path(path), lambda tmp: Path(tmp).write_text(dumps(data), encoding="utf-8"))


# --- entering runs from their records ---------------------------------------------------------------

def this_machine() -> dict:
    model = "unknown CPU"
    try:
        model = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                     if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": model, "cores": os.cpu_count(), "flags": " ".join(cpu_flags())}


def machine_key(data: dict, machine: dict) -> str:
    """The key of a machines entry with this CPU model, core count and flags; a new entry if none."""
    for key, known in data["machines"].items():
        if (known.get("cpu"), known.get("cores"), set(known.get("flags", "").split())) == \
                (machine["cpu"], machine["cores"], set(machine["flags"].split())):
            return key
    key = re.sub(r"[^a-z0-9]+", "-", machine["cpu"].lower()).strip("-")[:30] or "machine"
    while key in data["machines"]:
        key += "-2"
    data["machines"][key] = {"short": machine["cpu"], **machine}
    return key


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).parent)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_entry(folder: Path, recipe: str, timing: str, data: dict) -> dict:
    """A results entry from a run folder's record (and the `test` runs of its checkpoints beside it)."""
    from .compare import find_runs

    record = read_record(folder)
    if record.get("status") != "finished":
        raise UserError(f"{folder}: not a finished run (status {record.get('status', 'unknown')!r})")
    run = next((r for r in find_runs(folder.parent.parent) if r.folder.resolve() == folder.resolve()), None)
    test = run.test_figures().get("test/acc") if run else (record.get("test") or {}).get("test/acc")
    val = record.get("best_val_acc")
    kind = (record.get("validation") or {}).get("kind", "grouped")
    settings = run.settings if run else {}
    when = datetime.fromtimestamp((folder / "run.json").stat().st_mtime, UTC).date().isoformat()
    machine = record.get("machine") or this_machine()  # a record that names its machine is believed over this one
    return {"recipe": recipe, "seed": record.get("seed"), "split": settings.get("data.split_seed", 0),
            "val": round(100 * val, 2) if val is not None else None,
            "test": round(100 * test, 2) if test is not None else None,
            "minutes": round(record["wall_s"] / 60, 1) if record.get("wall_s") else None, "timing": timing,
            "machine": machine_key(data, machine), "date": when, "commit": record.get("commit") or commit(),
            "record": str(folder), **({"validation": kind} if kind != "grouped" else {})}


def keep_record(folder: Path, into: Path, name: str) -> Path:
    """Copy what a figure rests on (run.json, config.yaml, the per-review outcomes) where it outlives lightning_logs."""
    target = into / name
    target.mkdir(parents=True, exist_ok=True)
    for file in ("run.json", "config.yaml", VAL_REVIEWS):
        if (folder / file).is_file():
            shutil.copyfile(folder / file, target / file)
    return target


def add(data: dict, folders: list[str], recipe: str, timing: str, keep: Optional[str], note: Optional[str]) -> list[dict]:
    if recipe not in data["recipes"]:
        raise UserError(f"--recipe {recipe}: not a recipe of the results file; its recipes: {', '.join(data['recipes'])}")
    added = []
    for name in folders:
        folder = Path(name)
        if not (folder / "run.json").is_file():
            raise UserError(f"{folder}: not a run folder (no run.json)")
        entry = run_entry(folder, recipe, timing, data)
        if keep:
            seed = "" if entry["seed"] is None else f"-seed{entry['seed']}"
            kind = "" if entry.get("validation") is None else f"-{entry['validation']}"
            stem = f"{recipe}{seed}-split{entry['split']}{kind}-{entry['date']}"
            entry["record"] = str(keep_record(folder, Path(keep), stem))
        if note:
            entry["note"] = note
        data["runs"].append(entry)
        added.append(entry)
    return added


# --- generated blocks ---------------------------------------------------------------------------------

def render_files(root: Path, data: dict) -> dict[Path, str]:
    """Every Markdown file with generated blocks, as it should read."""
    from .results_render import BLOCKS

    generated: dict[str, str] = {}
    out = {}
    for path in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")

        def fill(match, path=path):
            name = match["name"]
            if name not in BLOCKS:
                raise UserError(f"{path}: unknown generated block {name!r}; known: {', '.join(sorted(BLOCKS))}")
            if name not in generated:
                generated[name] = BLOCKS[name](data, root)
            return match[1] + generated[name] + match[4]

        new = BLOCK.sub(fill, text)
        if new != text or BLOCK.search(text):
            out[path] = new
    return out


def stale(root: Path, data: dict) -> list[str]:
    return [str(path.relative_to(root)) for path, text in render_files(root, data).items()
            if path.read_text(encoding="utf-8") != text]


def main(argv: list[str]) -> None:
    parser = ArgumentParser(prog="imdb-lightning results", description=__doc__.splitlines()[0])
    parser.add_argument("--file", default=str(FILE), help=f"the results file (default {FILE})")
    parser.add_argument("--add", metavar="RUN", nargs="+", help="enter these run folders' figures (from their run.json)")
    parser.add_argument("--recipe", help="with --add: which recipe of the file the runs are")
    parser.add_argument("--timing", choices=TIMINGS, help="with --add: were the runs alone on the machine, or beside other work?")
    parser.add_argument("--keep", metavar="DIR", help="with --add: copy each run's record files into DIR/<recipe>-seed…/")
    parser.add_argument("--note", help="with --add: what the figure rests on, if anything beyond its record")
    parser.add_argument("--render", action="store_true", help="rewrite the generated blocks of README.md and docs/*.md")
    parser.add_argument("--check", action="store_true", help="exit 1 naming the files whose generated blocks are stale")
    opts = parser.parse_args(argv)
    path = Path(opts.file)
    data = load(path)
    root = path.resolve().parent.parent
    if opts.add:
        if not opts.recipe or not opts.timing:
            parser.error("--add needs --recipe and --timing")
        for entry in add(data, opts.add, opts.recipe, opts.timing, opts.keep, opts.note):
            print(f"results: added {json.dumps(entry, ensure_ascii=False)}")
        save(data, path)
    if opts.render:
        for file, text in render_files(root, data).items():
            if file.read_text(encoding="utf-8") != text:
                write_atomically(file, lambda tmp, text=text: Path(tmp).write_text(text, encoding="utf-8"))
                print(f"results: rewrote {file.relative_to(root)}")
    if opts.check:
        files = stale(root, data)
        if files:
            sys.exit(f"imdb-lightning results: stale generated blocks in {', '.join(files)}: run imdb-lightning results --render")
    if not (opts.add or opts.render or opts.check):
        from .results_render import trust_summary

        print(trust_summary(data, root))

#!/usr/bin/env python3
"""The table scripts/bench.sh prints (and with --write appends to BENCHMARKS.md).

Input: lines `RUN result FIGURE VALUE UNIT BETTER LIMIT RATIO TARGET`, tab-separated, as the
benches print them (BETTER is `higher` or `lower`; "-" where there is no limit or target;
a target is `value<64`, `value>=5000`, `ratio>=0.5`, ...). Each figure's median over the
runs is reported with its noise, (max - min) / median, and compared with the same figure in
the newest section of the same form (full or quick) in the history file that has it, by its
ratio to its limit where it has one (the limits move more between runs here than the
ratios): a figure worse by more than the noise (this run's, or the recorded one; at least
5 %) is flagged.
"""

import argparse
import datetime
import re
import statistics
import sys

SECTION = "## Runs of scripts/bench.sh"
ROW = re.compile(r"^\| `(?P<figure>[a-z0-9_.]+)` \| (?P<value>[-0-9.,]+) (?P<unit>\S+) \|(?P<rest>.*)$")


def num(text):
    try:
        return float(text)
    except ValueError:
        return None


def meets(target, value, ratio):
    """Whether a target holds; None when there is none (or nothing to check it with)."""
    m = re.fullmatch(r"(value|ratio)(<=|>=|<|>)([0-9.]+)", target)
    if not m:
        return None
    x = value if m.group(1) == "value" else ratio
    if x is None:
        return None
    bound = float(m.group(3))
    return {"<": x < bound, "<=": x <= bound, ">": x > bound, ">=": x >= bound}[m.group(2)]


def previous(history, form):
    """Each figure's (value, ratio, noise) in the newest recorded section of this form."""
    try:
        text = open(history, encoding="utf-8").read()
    except OSError:
        return {}
    if SECTION not in text:
        return {}
    sections = re.split(r"^### ", text.split(SECTION, 1)[1], flags=re.M)[1:]
    found = {}
    # Newest first: a run of some benches only (--only) leaves the others' last figures.
    for s in reversed(sections):
        if f"({form}," not in s.splitlines()[0]:
            continue
        for line in s.splitlines():
            m = ROW.match(line)
            if m and m.group("figure") not in found:
                cells = [c.strip() for c in m.group("rest").split("|")]
                ratio = num(cells[1]) if len(cells) > 1 else None
                noise = num(cells[3].rstrip("%")) if len(cells) > 3 else None
                value = float(m.group("value").replace(",", ""))
                found[m.group("figure")] = (value, ratio, noise)
    return found


def spread(xs):
    """(max - min) / median in percent, over two runs or more."""
    if len(xs) < 2:
        return None
    mid = statistics.median(xs)
    return (max(xs) - min(xs)) / mid * 100 if mid else None


def fmt(x):
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.2f}"


def fmt_ratio(x):
    """A ratio to three places: judged against its target unrounded, shown as judged."""
    return "-" if x is None else f"{x:.3f}"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("results")
    p.add_argument("--form", default="full")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--commit", default="?")
    p.add_argument("--history", default="BENCHMARKS.md")
    p.add_argument("--write", action="store_true")
    a = p.parse_args()

    figures = {}
    for line in open(a.results, encoding="utf-8"):
        parts = line.rstrip("\n").split("\t")
        if len(parts) != 9 or parts[1] != "result":
            print(f"bench_report: not a result line: {line!r}", file=sys.stderr)
            return 2
        _, _, figure, value, unit, better, limit, ratio, target = parts
        f = figures.setdefault(
            figure, {"unit": unit, "better": better, "target": target, "v": [], "l": [], "r": []}
        )
        f["v"].append(float(value))
        if num(limit) is not None:
            f["l"].append(float(limit))
        if num(ratio) is not None:
            f["r"].append(float(ratio))

    before = previous(a.history, a.form)
    rows = []
    flagged = []
    missed = []
    for name, f in figures.items():
        value = statistics.median(f["v"])
        limit = statistics.median(f["l"]) if f["l"] else None
        ratio = statistics.median(f["r"]) if f["r"] else None
        noise = spread(f["v"])
        ratio_noise = spread(f["r"])
        # A quick run's sizes and dev profile say nothing about speed: no target is judged.
        ok = meets(f["target"], value, ratio) if a.form != "quick" else None
        if ok is False:
            missed.append(name)
        change = "-"
        if name in before:
            old, old_ratio, old_noise = before[name]
            # Against its limit where it has one: the limits themselves move by a quarter
            # between runs on this machine, the ratios much less.
            if ratio is not None and old_ratio:
                now, then, what, own_noise = ratio, old_ratio, "ratio ", ratio_noise
            else:
                now, then, what, own_noise = value, old, "", noise
            if then:
                delta = (now - then) / then * 100
                worse = delta < 0 if f["better"] == "higher" else delta > 0
                allowed = max(5.0, own_noise or 0.0, old_noise or 0.0)
                change = f"{what}{delta:+.0f}% vs {fmt(then)}"
                if worse and abs(delta) > allowed:
                    change += " **REGRESSED**"
                    flagged.append(name)
        rows.append(
            f"| `{name}` | {fmt(value)} {f['unit']} | {fmt(limit)} | {fmt_ratio(ratio)} | "
            f"{f['target'] if f['target'] != '-' else '-'} "
            f"{'' if ok is None else ('met' if ok else '**missed**')} | "
            f"{'-' if noise is None else f'{noise:.0f}%'} | {change} |"
        )
    today = datetime.date.today().isoformat()
    heading = f"### {today} at {a.commit} ({a.form}, {a.runs} run{'s' if a.runs != 1 else ''} each)"
    table = "\n".join(
        [
            heading,
            "",
            "| figure | median | limit, same run | ratio | target | noise | against the last run |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    print(table)
    if flagged:
        print(f"\nregressed beyond the noise: {', '.join(flagged)}")
    if missed:
        print(f"targets missed: {', '.join(missed)}")
    if a.write:
        text = open(a.history, encoding="utf-8").read()
        if SECTION not in text:
            text = text.rstrip("\n") + (
                f"\n\n{SECTION}\n\nEach section is one `scripts/bench.sh` run (`--write`): medians "
                "over its runs, the noise\nas (max - min) / median, and the change against the "
                "newest section of the same form.\n"
            )
        text = text.rstrip("\n") + "\n\n" + table + "\n"
        with open(a.history, "w", encoding="utf-8") as out:
            out.write(text)
        print(f"\nappended to {a.history}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Curation: write an index list that filters and rebalances a dataset by repetition.

    python -m cgsgan.data.curate --data DIR --out index.json [--yaw-bins 9] [--max-repeat 4]
        [--attributes table.csv --filter "occluded==0" --filter "age>20" --balance smile]

The yaw of every label is binned and images of sparse bins are repeated so the yaw histogram
flattens (each bin brought towards the fullest, at most --max-repeat copies of an image). An
attribute table the user brings (CSV with a `file` column matching the label names, any other
columns) can filter images (`col==v`, `col!=v`, `col<v`, `col>v`; repeatable, all must hold)
and rebalance the classes of one column the same way; the two balancings are solved together
(raking), each image repeated at most --max-repeat times. Histograms are printed before and after. No face model is bundled: the
attributes are whatever the user measured.

The output is a JSON array of image FILE NUMBERS (17 for `00017.png`), repeats included: the
index-list format of the authors' code that `ImageDataset(index_list=...)` reads.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from cgsgan import camera
from cgsgan.data.dataset import DataError, file_number, load_labels

RULE = re.compile(r"^\s*([^=!<>]+?)\s*(==|!=|<|>)\s*(.*?)\s*$")


# ------------------------------------------------------------------------------- pure functions
def yaw_bin_edges(yaws: Sequence[float], bins: int) -> list[float]:
    """`bins` equal-width bins over the range of `yaws` (bins + 1 edges)."""
    lo, hi = float(min(yaws)), float(max(yaws))
    if hi - lo < 1e-9:
        hi = lo + 1e-9
    return [lo + (hi - lo) * i / bins for i in range(bins + 1)]


def yaw_bins(yaws: Sequence[float], edges: Sequence[float]) -> list[int]:
    """Bin of each yaw for `edges` (values outside go to the first / last bin)."""
    n = len(edges) - 1
    lo, width = edges[0], (edges[-1] - edges[0]) / n
    return [min(n - 1, max(0, int((float(y) - lo) / width))) for y in yaws]


def balance_factors(key_sets: Sequence[Sequence], max_repeat: int, iters: int = 20) -> list[int]:
    """How often to repeat each entry so that, for every key set at once, the key classes approach
    the largest class's count; at most `max_repeat` copies of an entry.

    Weights are found by raking (iterative proportional fitting): scale each class of one key set
    to the largest class, then the next key set, and so on. The least repeated entries get one
    copy. With one key set this is simply round(c_max / c) copies for a class of count c.
    """
    if max_repeat < 1:
        raise ValueError(f"max_repeat={max_repeat}: must be >= 1")
    n = len(key_sets[0]) if key_sets else 0
    if n == 0:
        return []
    w = [1.0] * n
    for _ in range(iters if len(key_sets) > 1 else 1):
        for keys in key_sets:
            totals: dict = {}
            for k, wi in zip(keys, w):
                totals[k] = totals.get(k, 0.0) + wi
            top = max(totals.values())
            w = [wi * top / totals[k] for k, wi in zip(keys, w)]
        low = min(w)
        w = [wi / low for wi in w]  # keep the scale fixed: the least weighted entry at 1
    return [max(1, min(max_repeat, round(wi))) for wi in w]


def expand(indices: Sequence[int], factors: Sequence[int]) -> list[int]:
    """Each index repeated its factor's times, in order."""
    return [i for i, f in zip(indices, factors) for _ in range(f)]


def parse_rule(text: str) -> tuple[str, str, str]:
    """'col==value' (or !=, <, >) -> (col, op, value)."""
    m = RULE.match(text)
    if not m or not m.group(1) or m.group(3) == "":
        raise ValueError(f"filter rule {text!r}: expected COLUMN==VALUE, COLUMN!=VALUE, COLUMN<VALUE or COLUMN>VALUE")
    return m.group(1), m.group(2), m.group(3)


def _number(s: str) -> float | None:
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def rule_holds(value: str, op: str, target: str) -> bool:
    """Compare as numbers when both sides are numbers, else as strings (< and > need numbers)."""
    a, b = _number(value), _number(target)
    if op in ("<", ">"):
        if a is None or b is None:
            raise ValueError(f"{value!r} {op} {target!r}: < and > compare numbers")
        return a < b if op == "<" else a > b
    equal = a == b if a is not None and b is not None else str(value).strip() == str(target).strip()
    return equal if op == "==" else not equal


def filter_indices(rows: Sequence[dict], rules: Sequence[str], indices: Sequence[int] | None = None) -> list[int]:
    """Indices of rows for which every rule holds."""
    parsed = [parse_rule(r) for r in rules]
    indices = list(range(len(rows))) if indices is None else list(indices)
    out = []
    for i in indices:
        row = rows[i]
        for col, op, target in parsed:
            if col not in row:
                raise ValueError(f"filter rule {col}{op}{target}: no column {col!r} (columns: {sorted(row)})")
            try:
                ok = rule_holds(row[col], op, target)
            except ValueError as e:
                raise ValueError(f"filter rule {col}{op}{target}, row {row.get('file', i)!r}: {e}") from e
            if not ok:
                break
        else:
            out.append(i)
    return out


def curate(yaws: Sequence[float], rows: Sequence[dict] | None = None, rules: Sequence[str] = (),
           balance: str | None = None, bins: int = 9, max_repeat: int = 4) -> list[int]:
    """Filter by `rules`, then repeat to balance `balance`'s classes and yaw; each image at most max_repeat times."""
    n = len(yaws)
    if (rules or balance) and rows is None:
        raise ValueError("filter rules and --balance need an attribute table")
    keep = filter_indices(rows, rules) if rules else list(range(n))
    if not keep:
        raise ValueError("the filter rules leave no images")
    sel = [float(yaws[i]) for i in keep]
    key_sets = [yaw_bins(sel, yaw_bin_edges(sel, bins))]
    if balance:
        if any(balance not in rows[i] for i in keep):
            raise ValueError(f"--balance {balance}: no column {balance!r} in the attribute table")
        key_sets.append([rows[i][balance] for i in keep])
    # Both balancings at once, so neither undoes the other.
    total = balance_factors(key_sets, max_repeat)
    return expand(keep, total)


# ------------------------------------------------------------------------------- I/O and CLI
def read_attributes(csv_path: str | Path, names: Sequence[str], missing: str = "error") -> list[dict | None]:
    """The attribute row of each label name (matched on `file`, else on the file name alone).

    missing="error": every labelled image needs a row; "drop": images without one get None.
    """
    csv_path = Path(csv_path)
    try:
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "file" not in reader.fieldnames:
                raise ValueError(f"{csv_path}: needs a 'file' column (got {reader.fieldnames})")
            rows = list(reader)
    except FileNotFoundError as e:
        raise ValueError(f"{csv_path}: attribute table not found") from e
    by_file = {r["file"]: r for r in rows}
    by_base: dict[str, list[dict]] = {}
    for r in rows:
        by_base.setdefault(PurePosixPath(r["file"]).name, []).append(r)
    out: list[dict | None] = []
    for n in names:
        row = by_file.get(n)
        if row is None:
            cands = by_base.get(PurePosixPath(n).name, [])
            row = cands[0] if len(cands) == 1 else None
        if row is None and missing == "error":
            raise ValueError(f"{csv_path}: no row for image {n!r} (use --missing drop to leave such images out)")
        out.append(row)
    return out


def histogram_text(title: str, counts: dict, width: int = 40) -> str:
    top = max(counts.values()) if counts else 1
    lines = [title]
    for key, c in counts.items():
        lines.append(f"  {str(key):>16} {c:7d} {'#' * max(1 if c else 0, round(width * c / top))}")
    return "\n".join(lines)


def yaw_histogram(yaws: Sequence[float], indices: Sequence[int], edges: Sequence[float]) -> dict[str, int]:
    keys = yaw_bins([float(yaws[i]) for i in indices], edges)
    counts = Counter(keys)
    return {f"{math.degrees(edges[b]):+6.1f}..{math.degrees(edges[b + 1]):+6.1f}": counts.get(b, 0)
            for b in range(len(edges) - 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write an index list that filters and rebalances a dataset.")
    p.add_argument("--data", required=True, type=Path, help="dataset folder or zip (with dataset.json)")
    p.add_argument("--out", required=True, type=Path, help="index list to write (JSON array)")
    p.add_argument("--yaw-bins", type=int, default=9)
    p.add_argument("--max-repeat", type=int, default=4, help="most copies of one image")
    p.add_argument("--attributes", type=Path, help="CSV with a 'file' column and per-image attributes")
    p.add_argument("--filter", action="append", default=[], help="rule COL==V, COL!=V, COL<V or COL>V (repeatable)")
    p.add_argument("--balance", help="attribute column whose classes to make equally frequent")
    p.add_argument("--missing", choices=("error", "drop"), default="error",
                   help="images without an attribute row: fail, or leave them out")
    args = p.parse_args(argv)
    try:
        if args.yaw_bins < 1:
            raise ValueError(f"--yaw-bins={args.yaw_bins}: must be >= 1")
        table = load_labels(args.data)
        yaws = camera.yaw_pitch(table.labels)[0].tolist()
        names = table.names
        rows = None
        keep_all = list(range(len(names)))
        if args.attributes:
            attr = read_attributes(args.attributes, names, args.missing)
            keep_all = [i for i, r in enumerate(attr) if r is not None]
            if len(keep_all) < len(names):
                print(f"{len(names) - len(keep_all)} images have no attribute row and are left out")
            # Curate over the images with rows, then map back to dataset indices.
            rows = [attr[i] for i in keep_all]
            yaws_sel = [yaws[i] for i in keep_all]
        else:
            yaws_sel = yaws
            if args.filter or args.balance:
                raise ValueError("--filter and --balance need --attributes")
        picked = curate(yaws_sel, rows, args.filter, args.balance, args.yaw_bins, args.max_repeat)
        indices = [keep_all[i] for i in picked]
        numbers = {i: file_number(names[i]) for i in set(indices)}
        unnumbered = [names[i] for i, n in numbers.items() if n is None]
        if unnumbered:
            raise DataError(f"{unnumbered[0]}: index lists select images by the number in their file name, "
                            "and this image's name has none")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    edges = yaw_bin_edges(yaws, args.yaw_bins)
    print(histogram_text("yaw histogram before (degrees):", yaw_histogram(yaws, range(len(yaws)), edges)))
    print(histogram_text("yaw histogram after:", yaw_histogram(yaws, indices, edges)))
    if args.balance:
        before = Counter(r[args.balance] for r in rows)
        after = Counter(rows[i][args.balance] for i in picked)
        print(histogram_text(f"{args.balance} before:", dict(sorted(before.items()))))
        print(histogram_text(f"{args.balance} after:", {k: after.get(k, 0) for k in sorted(before)}))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps([numbers[i] for i in indices]))
    print(f"{len(indices)} entries ({len(set(indices))} unique images of {len(names)}) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

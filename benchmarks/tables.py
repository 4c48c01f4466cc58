"""The pages of ``benchmarks/results/``, written from the JSON records beside them.

    python benchmarks/tables.py            # rewrite every page from its records
    python benchmarks/tables.py --check    # exit 1 if a page differs from what its records give

``results.md`` is ``results.py --table`` (the per-seed records ``<method>-seed<seed>.json``, here and in each
subfolder: one setting per folder, e.g. ``budget-0.4pflop/`` for a longer pretraining budget). Every other
page ``<page>.md`` comes from ``<page>.json``: ``title``, ``about`` and ``tables``, each table one measurement
with the command that reproduces it, the machine and the date::

    {"title": "...", "about": "...",
     "columns": [{"key": "variant", "label": "variant"}, {"key": "ips", "label": "images/s", "format": ","}],
     "rows": [{"variant": "sslvit", "ips": 3222}],
     "notes": ["..."], "commands": ["python benchmarks/..."], "machine": "...", "date": "2026-11-22"}

A cell is a number (printed with its column's ``format`` and ``suffix``), a string (as it is), ``[low, high]``
(a range: ``low-high``, or ``low to high`` for signed numbers), ``{"value": v, "range": [low, high]}`` (a
value and its range) or null (``–``). Columns with a ``format`` are numbers and right-aligned.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent / "results"
REQUIRED = ("title", "columns", "rows", "commands", "machine", "date")


def cell(value: Any, column: dict[str, Any]) -> str:
    spec, suffix = column.get("format", ""), column.get("suffix", "")
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        low, high = value
        between = " to " if low < 0 or "+" in spec else "-"  # "-6.85 to +5.85", not "-6.85-+5.85"
        return f"{format(low, spec)}{between}{format(high, spec)}{suffix}"
    if isinstance(value, dict):
        spread = f" [{cell(value['range'], column)}]" if value.get("range") else ""
        return cell(value["value"], column) + spread
    return f"{format(value, spec)}{suffix}"


def table_markdown(table: dict[str, Any], page: str) -> list[str]:
    missing = [key for key in REQUIRED if not table.get(key)]
    if missing:
        raise ValueError(f"{page}: table {table.get('title')!r} has no {', '.join(missing)}")
    columns = table["columns"]
    lines = [f"## {table['title']}", ""]
    lines += [table["about"], ""] if table.get("about") else []
    lines.append("| " + " | ".join(c["label"] for c in columns) + " |")
    lines.append("| " + " | ".join("---:" if "format" in c else "---" for c in columns) + " |")
    lines += ["| " + " | ".join(cell(row.get(c["key"]), c) for c in columns) + " |" for row in table["rows"]]
    lines.append("")
    lines += [f"- {note}" for note in table.get("notes", [])] + ([""] if table.get("notes") else [])
    lines += ["```bash", *table["commands"], "```", "", f"Machine: {table['machine']}. Date: {table['date']}.", ""]
    return lines


def page_markdown(record: dict[str, Any], name: str) -> str:
    lines = [f"# {record['title']}", ""]
    lines += [record["about"], ""] if record.get("about") else []
    lines += [f"Written by `python benchmarks/tables.py` from `{name}.json`: edit the record, not this page.", ""]
    for table in record["tables"]:
        lines += table_markdown(table, name)
    return "\n".join(lines).rstrip("\n") + "\n"


def pages(folder: Path = HERE) -> dict[str, str]:
    """``{path in folder: markdown}`` of every page the records in ``folder`` give: ``results.md`` of the per-seed
    records here and in each subfolder (a table is one setting, so another budget has its own folder), and
    ``<page>.md`` of every other record here."""
    from results import table

    written = {}
    for records in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]:
        if any(records.glob("*-seed*.json")):
            written[(records / "results.md").relative_to(folder).as_posix()] = table(records, write=False)
    for path in sorted(folder.glob("*.json")):
        record = json.loads(path.read_text())
        if isinstance(record, dict) and "tables" in record:
            written[f"{path.stem}.md"] = page_markdown(record, path.stem)
    return written


def build_parser() -> argparse.ArgumentParser:
    from sslvit.cli.parser import ToolParser

    parser = ToolParser(__file__, description=__doc__)
    parser.add_argument("--output", default=str(HERE), help="the folder of the records and their pages")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a page is not up to date")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    folder = Path(args.output)
    stale = []
    for name, text in pages(folder).items():
        path = folder / name
        if path.is_file() and path.read_text() == text:
            continue
        stale.append(name)
        if not args.check:
            path.write_text(text)
    verb = "differ from their records" if args.check else "written"
    print(f"{', '.join(stale)}: {verb}" if stale else "every page is what its records give")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())

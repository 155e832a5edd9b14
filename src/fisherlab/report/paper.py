"""The paper's published numbers (Tables 1-9, supplement included) beside the pipeline's.

Two data files ship with the package, both transcribed from the paper's text:

- ``paper_values.csv`` (:func:`paper_values`): one row per published cell: ``table``
  (1-9), ``row`` and ``column`` as the paper prints them, ``label_noise`` (Tables 3, 8,
  9), ``quantity`` and ``unit``, ``value`` and ``plus_minus`` (the "±" of Tables 2 and 7;
  the paper does not say whether it is a standard deviation or a standard error), and the
  mapping onto the pipeline: ``pipeline_table`` (``table1`` ... ``table9``), ``setting``
  (the setting's name in ``config.yaml``) and ``role`` (the pipeline's column:
  ``eta_star``, ``baseline``, ``gpx``, ``gp``, ``fp``, ``gpr``, ``mixup``).
- ``paper_claims.csv`` (:func:`paper_claims`): the directions the paper draws from its
  tables, each with the paper's words: ``kind`` ``>`` or ``>=`` (``columns`` "A;B": A's
  value above B's, in every row of the table when ``row`` is "*") or ``best`` (the
  highest of ``columns``: ours holds when our highest is the paper's).

:func:`paper_comparison` puts each published cell beside the pipeline's table cell of
the same (table, setting, column); :func:`claim_directions` evaluates each claim on the
paper's values and on ours; :func:`comparison_markdown` renders both. A cell that the
pipeline did not make is "not run", a diverged one "diverged", never dropped or zero;
the pipeline's cells that the paper has no value for (settings beyond the paper, the
SAM column) are listed as "not in the paper".
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd

from ..atomic import write_text_atomic
from .tables import DISPLAY_NAMES, md_row

PAPER_TABLES: tuple[str, ...] = tuple(f"table{i}" for i in range(1, 10))
NOISY_TABLES: tuple[str, ...] = ("table3", "table8", "table9")  # rows keyed by (label noise, setting)

_VALUE_COLUMNS = ("table", "row", "label_noise", "column", "quantity", "unit", "value", "plus_minus",
                  "pipeline_table", "setting", "role", "source")  # fmt: skip
_CLAIM_COLUMNS = ("table", "row", "kind", "columns", "statement")
_KINDS = (">", ">=", "best")

#: The columns of :func:`paper_comparison`'s frame.
COMPARISON_COLUMNS: tuple[str, ...] = (
    "table", "row", "label_noise", "column", "quantity", "unit", "paper", "paper_plus_minus",
    "pipeline_table", "setting", "role", "ours", "ours_std", "ours_n", "ours_runs", "status",
    "difference", "note", "source",
)  # fmt: skip


def _read_packaged(name: str) -> pd.DataFrame:
    with resources.files(__package__).joinpath(name).open("r", encoding="utf-8") as f:
        return pd.read_csv(f, keep_default_na=False, na_values={"value": [""], "plus_minus": [""]})


def _check_frame(frame: pd.DataFrame, what: str, columns: Sequence[str]) -> None:
    """A ``TypeError`` unless ``frame`` is a DataFrame, a ``ValueError`` naming the
    ``columns`` it lacks; ``what`` names it in the message."""
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{what}: expected a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what}: missing columns {missing}; expected {list(columns)}")


def _check_values(paper: pd.DataFrame) -> pd.DataFrame:
    _check_frame(paper, "paper values", _VALUE_COLUMNS)
    paper = paper.copy()
    paper["label_noise"] = pd.to_numeric(paper["label_noise"].replace("", np.nan), errors="raise")
    for col in ("value", "plus_minus"):
        paper[col] = pd.to_numeric(paper[col], errors="raise").astype(float)
    bad = sorted(set(paper["pipeline_table"]) - set(PAPER_TABLES))
    if bad:
        raise ValueError(f"paper values: unknown pipeline_table {bad}; use {list(PAPER_TABLES)}")
    key = ["table", "row", "label_noise", "column"]
    dup = paper[paper[key].astype(str).duplicated(keep=False)]
    if not dup.empty:
        raise ValueError(f"paper values: cells given twice: {dup[key].drop_duplicates().to_dict('records')}")
    return paper


def paper_values() -> pd.DataFrame:
    """The published cells of Tables 1-9 (``paper_values.csv``, see the module docstring);
    ``label_noise`` and ``plus_minus`` are NaN where the paper has none."""
    return _check_values(_read_packaged("paper_values.csv"))


def _check_claims(claims: pd.DataFrame) -> pd.DataFrame:
    _check_frame(claims, "paper claims", _CLAIM_COLUMNS)
    for _, c in claims.iterrows():
        if c["kind"] not in _KINDS:
            raise ValueError(f"paper claims: kind {c['kind']!r} (table {c['table']}); use one of {_KINDS}")
        cols = str(c["columns"]).split(";")
        if len(cols) < 2 or (c["kind"] != "best" and len(cols) != 2):
            raise ValueError(f"paper claims: {c['kind']!r} needs two columns 'A;B' (best: two or more), "
                             f"got {c['columns']!r} (table {c['table']})")  # fmt: skip
    return claims


def paper_claims() -> pd.DataFrame:
    """The directions the paper draws from its tables (``paper_claims.csv``): one row per
    claim, ``row`` "*" standing for every row of the paper's table."""
    return _check_claims(_read_packaged("paper_claims.csv"))


def _find_row(table: pd.DataFrame, setting: str, noise: float) -> pd.DataFrame:
    here = table[table["setting"].astype(str) == setting]
    if not math.isnan(noise):
        here = here[np.isclose(pd.to_numeric(here["label_noise"], errors="coerce"), noise)]
    return here


def _ours(table: pd.DataFrame | None, name: str, setting: str, noise: float, role: str) -> dict[str, Any]:
    """Our cell for one published cell: value, std, counts, status and why."""
    none = {"ours": math.nan, "ours_std": math.nan, "ours_n": 0, "ours_runs": 0}
    if table is None:
        return {**none, "status": "not run", "note": f"{name} is not made by this config"}
    row = _find_row(table, setting, noise)
    if row.empty:
        where = setting if math.isnan(noise) else f"{setting} at label noise {noise:g}"
        return {**none, "status": "not run", "note": f"{where} is not a row of {name}"}
    if len(row) > 1:
        raise ValueError(f"paper_comparison: {name} has {len(row)} rows for {setting!r}")
    if f"{role}_status" not in row.columns:
        return {**none, "status": "not run", "note": f"{name} has no {DISPLAY_NAMES.get(role, role)} column"}
    r = row.iloc[0]
    return _cell_of(r, role)


def _cell_of(r: pd.Series, role: str) -> dict[str, Any]:
    status = r[f"{role}_status"]
    n = int(r.get(f"{role}_n", 0)) if pd.notna(r.get(f"{role}_n", math.nan)) else 0
    runs = int(r.get(f"{role}_runs", 0)) if pd.notna(r.get(f"{role}_runs", math.nan)) else 0
    value = float(r[role]) if pd.notna(r[role]) else math.nan
    std = float(r.get(f"{role}_std", math.nan))
    if status == "missing" or pd.isna(status):
        return {"ours": math.nan, "ours_std": math.nan, "ours_n": 0, "ours_runs": 0, "status": "not run",
                "note": "no run of this cell"}  # fmt: skip
    if status == "diverged":
        return {"ours": math.nan, "ours_std": math.nan, "ours_n": 0, "ours_runs": runs, "status": "diverged",
                "note": f"all {runs} runs diverged"}  # fmt: skip
    note = f"{runs - n} of {runs} runs diverged; the mean is over the others" if status == "partial" else ""
    if status not in ("ok", "partial"):
        raise ValueError(f"paper_comparison: unknown cell status {status!r} (column {role})")
    return {"ours": value, "ours_std": std, "ours_n": n, "ours_runs": runs, "status": status, "note": note}


def _check_tables(tables: Mapping[str, pd.DataFrame]) -> None:
    if not isinstance(tables, Mapping):
        raise TypeError(f"paper_comparison: tables must map names (table1 ... table9) to frames, "
                        f"got {type(tables).__name__}")  # fmt: skip
    for name, table in tables.items():
        if name not in PAPER_TABLES:
            raise ValueError(f"paper_comparison: unknown table {name!r}; use {list(PAPER_TABLES)}")
        if not isinstance(table, pd.DataFrame):
            raise TypeError(f"paper_comparison: {name} must be a pandas DataFrame, got {type(table).__name__}")
        need = ("label_noise", "setting") if name in NOISY_TABLES else ("setting",)
        for col in need:
            if col not in table.columns:
                raise ValueError(f"paper_comparison: {name} has no {col!r} column")


def paper_comparison(tables: Mapping[str, pd.DataFrame], paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each published cell beside the pipeline's.

    ``tables`` maps a table's name (``table1`` ... ``table9``) to the frame the pipeline
    wrote (:func:`~fisherlab.report.tables.results_table` or
    :func:`~fisherlab.report.tables.noisy_table`, e.g. read back from
    ``results/table1.csv``); tables the config does not make are simply absent. ``paper``
    defaults to :func:`paper_values`.

    One row per published cell, in the paper's order, then one per cell of ours that the
    paper has no value for. Columns :data:`COMPARISON_COLUMNS`: ``paper`` and
    ``paper_plus_minus``; ``ours`` (the mean over the cell's finished seeds), ``ours_std``
    (population std), ``ours_n`` and ``ours_runs``; ``difference`` = ours − paper in the
    table's unit (NaN unless both exist); ``status``: "ok", "partial" (some seeds
    diverged), "diverged" (all did), "not run" (the table, its row or the cell was not
    made; ``note`` says which) or "not in the paper"; ``source``: where the paper prints
    the cell.
    """
    _check_tables(tables)
    paper = paper_values() if paper is None else _check_values(paper)
    rows = []
    for _, p in paper.iterrows():
        name = p["pipeline_table"]
        ours = _ours(tables.get(name), name, p["setting"], float(p["label_noise"]), p["role"])
        rows.append({
            "table": int(p["table"]), "row": p["row"], "label_noise": p["label_noise"], "column": p["column"],
            "quantity": p["quantity"], "unit": p["unit"], "paper": p["value"], "paper_plus_minus": p["plus_minus"],
            "pipeline_table": name, "setting": p["setting"], "role": p["role"], **ours, "source": p["source"],
        })  # fmt: skip
    published = {(p["pipeline_table"], p["setting"], round(float(p["label_noise"]), 6)
                  if pd.notna(p["label_noise"]) else None, p["role"]) for _, p in paper.iterrows()}  # fmt: skip
    units = paper.drop_duplicates("pipeline_table").set_index("pipeline_table")[["table", "quantity", "unit"]]
    for name in PAPER_TABLES:
        table = tables.get(name)
        if table is None:
            continue
        roles = [c[: -len("_status")] for c in table.columns if c.endswith("_status")]
        for _, r in table.iterrows():
            noise = float(r["label_noise"]) if name in NOISY_TABLES else math.nan
            key_noise = round(noise, 6) if name in NOISY_TABLES else None
            for role in roles:
                if (name, str(r["setting"]), key_noise, role) in published:
                    continue
                ours = _cell_of(r, role)
                if ours["status"] == "not run":
                    continue  # a cell that neither the paper nor the pipeline has
                meta = units.loc[name] if name in units.index else {"table": int(name[5:]), "quantity": "", "unit": ""}
                rows.append({
                    "table": int(meta["table"]), "row": "", "label_noise": noise,
                    "column": DISPLAY_NAMES.get(role, role), "quantity": meta["quantity"], "unit": meta["unit"],
                    "paper": math.nan, "paper_plus_minus": math.nan, "pipeline_table": name,
                    "setting": str(r["setting"]), "role": role, **ours, "status": "not in the paper",
                    "note": (ours["note"] + "; " if ours["note"] else "") + f"{ours['status']}: the paper has no such cell",
                    "source": "",
                })  # fmt: skip
    out = pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))
    out["difference"] = out["ours"] - out["paper"]
    out["ours_n"] = out["ours_n"].astype(int)
    out["ours_runs"] = out["ours_runs"].astype(int)
    return out


def _holds(kind: str, values: list[float]) -> bool | None:
    if any(math.isnan(v) for v in values):
        return None
    if kind == ">":
        return values[0] > values[1]
    if kind == ">=":
        return values[0] >= values[1]
    raise ValueError(kind)


def claim_directions(comparison: pd.DataFrame, claims: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each claim of ``claims`` (default :func:`paper_claims`), on each row of the paper's
    table it names, evaluated on the paper's values and on ours (a frame of
    :func:`paper_comparison`).

    Columns: ``table``, ``row``, ``label_noise``, ``setting``, ``claim`` (e.g. "FP >
    Baseline", "best of GPx, GP, FP, GPr"), ``paper_holds`` and ``ours_holds`` (True /
    False; ``ours_holds`` is None when a cell of ours that the claim needs is missing or
    diverged), ``paper_best`` / ``ours_best`` (the winning column of a "best" claim),
    ``ours_status`` ("ok"; "partial: FP" when a cell's mean is over the seeds that did not
    diverge; else the statuses of the cells that kept it from being decided)
    and ``statement`` (the paper's words). The paper's own values need not satisfy a
    claim in every row (Table 2: "4 out of 5 settings"); ``paper_holds`` says where.
    """
    claims = paper_claims() if claims is None else _check_claims(claims)
    published = comparison[comparison["status"] != "not in the paper"]
    out = []
    for _, c in claims.iterrows():
        t = int(c["table"])
        cells = published[published["table"] == t]
        keys = cells[["row", "label_noise", "setting"]].drop_duplicates()
        if c["row"] != "*":
            keys = keys[keys["row"] == c["row"]]
            if keys.empty:
                raise ValueError(f"paper claims: table {t} has no row {c['row']!r}")
        cols = str(c["columns"]).split(";")
        for _, k in keys.iterrows():
            here = cells[(cells["row"] == k["row"]) & (cells["label_noise"].fillna(-1) == (
                -1 if pd.isna(k["label_noise"]) else k["label_noise"]))]  # fmt: skip
            by_col = here.set_index("column")
            absent = [x for x in cols if x not in by_col.index]
            if absent:
                raise ValueError(f"paper claims: table {t} has no column {absent} in row {k['row']!r}")
            paper_v = [float(by_col.loc[x, "paper"]) for x in cols]
            ours_v = [float(by_col.loc[x, "ours"]) if by_col.loc[x, "status"] in ("ok", "partial") else math.nan
                      for x in cols]  # fmt: skip
            undecided = sorted({f"{x}: {by_col.loc[x, 'status']}" for x in cols
                                if by_col.loc[x, "status"] not in ("ok", "partial")})  # fmt: skip
            rec: dict[str, Any] = {
                "table": t, "row": k["row"], "label_noise": k["label_noise"], "setting": k["setting"],
                "paper_best": "", "ours_best": "",
            }  # fmt: skip
            if c["kind"] == "best":
                rec["claim"] = "best of " + ", ".join(cols)
                rec["paper_best"] = cols[int(np.argmax(paper_v))]
                rec["paper_holds"] = True  # the paper's best is, by definition, the direction
                if undecided:
                    rec["ours_holds"] = None
                else:
                    rec["ours_best"] = cols[int(np.argmax(ours_v))]
                    rec["ours_holds"] = rec["ours_best"] == rec["paper_best"]
            else:
                rec["claim"] = f"{cols[0]} {c['kind']} {cols[1]}"
                rec["paper_holds"] = _holds(c["kind"], paper_v)
                rec["ours_holds"] = None if undecided else _holds(c["kind"], ours_v)
            statuses = {str(by_col.loc[x, "status"]) for x in cols}
            partial = [x for x in cols if by_col.loc[x, "status"] == "partial"]
            if undecided:
                rec["ours_status"] = "; ".join(undecided) if len(statuses) > 1 else statuses.pop()
            else:
                rec["ours_status"] = f"partial: {', '.join(partial)}" if partial else "ok"
            rec["statement"] = c["statement"]
            out.append(rec)
    columns = ["table", "row", "label_noise", "setting", "claim", "paper_holds", "ours_holds", "paper_best",
               "ours_best", "ours_status", "statement"]  # fmt: skip
    return pd.DataFrame(out, columns=columns)


def _num(x: float, pm: float = math.nan) -> str:
    if pd.isna(x):
        return "no value"  # the status column beside it says why (e.g. diverged)
    return f"{x:.2f}" if pd.isna(pm) else f"{x:.2f} ± {pm:.2f}"


def _ours_num(r: pd.Series) -> str:
    """Our mean, ± the std over seeds when there are several (as in the tables)."""
    return _num(r["ours"], r["ours_std"] if r["ours_n"] > 1 else math.nan)


def _signed(x: float) -> str:
    return "no value" if pd.isna(x) else f"{x:+.2f}"


def _yes(x: Any) -> str:
    undecided = x is None or (isinstance(x, float) and math.isnan(x))  # the status column says why
    return "not decided" if undecided else ("yes" if x else "**no**")


def _row_label(r: pd.Series) -> str:
    noise = "" if pd.isna(r["label_noise"]) else f"{r['label_noise']:.0%} "
    return f"{noise}{r['row'] or r['setting']}"


def comparison_markdown(comparison: pd.DataFrame, directions: pd.DataFrame, note: str = "") -> str:
    """Markdown of :func:`paper_comparison` and :func:`claim_directions`: a summary, the
    directions, then per table the paper's cells beside ours, then ours that the paper
    has no value for. ``note`` (e.g. the config's ``report_notes.paper_comparison``) is
    printed under the title."""
    published = comparison[comparison["status"] != "not in the paper"]
    extra = comparison[comparison["status"] == "not in the paper"]
    compared = published[published["status"].isin(["ok", "partial"])]
    lines = ["# The paper's numbers beside ours", ""]
    if note:
        lines += [note.strip(), ""]
    decided = directions[directions["ours_holds"].notna()]
    lines += [
        f"Published cells (Tables 1-9): {len(published)}; reproduced: {len(compared)}; "
        f"diverged: {int((published['status'] == 'diverged').sum())}; "
        f"not run: {int((published['status'] == 'not run').sum())}. "
        f"Cells of ours with no published value: {len(extra)}.",
        "",
        f"Directions the paper draws: {len(directions)} (claim × row); decided on ours: {len(decided)}, "
        f"of which hold: {int(decided['ours_holds'].astype(bool).sum())}. "
        "Difference = ours − paper, in the table's unit. Paper values: "
        "`fisherlab/report/paper_values.csv`; directions: `fisherlab/report/paper_claims.csv`.",
        "",
        "## Directions, per claim",
        "",
        "Rows of the paper's table where the claim holds, in the paper and in ours (of the rows decided on ours).",
        "",
        md_row(["Table", "Claim", "Paper", "Ours", "Not decided on ours", "The paper's words"]),
        md_row([":---", ":---", ":---", ":---", ":---", ":---"]),
    ]
    for (t, claim), g in directions.groupby(["table", "claim"], sort=False):
        dec = g[g["ours_holds"].notna()]
        lines.append(md_row([t, claim, f"{int(g['paper_holds'].astype(bool).sum())}/{len(g)}",
                            f"{int(dec['ours_holds'].astype(bool).sum())}/{len(dec)}", len(g) - len(dec),
                            g["statement"].iloc[0]]))  # fmt: skip
    lines += [
        "",
        "## Directions, per row",
        "",
        md_row(["Table", "Row", "Claim", "Paper", "Ours", "Ours: status"]),
        md_row([":---", ":---", ":---", ":---", ":---", ":---"]),
    ]
    for _, d in directions.iterrows():
        paper = _yes(d["paper_holds"]) + (f" ({d['paper_best']})" if d["paper_best"] else "")
        ours = _yes(d["ours_holds"]) + (f" ({d['ours_best']})" if d["ours_best"] else "")
        lines.append(md_row([d["table"], _row_label(d), d["claim"], paper, ours, d["ours_status"]]))
    lines.append("")
    for t, cells in published.groupby("table", sort=True):
        first = cells.iloc[0]
        unit = f" ({first['unit']})" if first["unit"] else ""
        lines += [f"## Table {t}: {first['quantity']}{unit}", "",
                  md_row(["Row", "Column", "Setting", "Paper", "Ours", "Difference", "Status"]),
                  md_row([":---", ":---", ":---", "---:", "---:", "---:", ":---"])]  # fmt: skip
        for _, r in cells.iterrows():
            status = r["status"] + (f" ({r['note']})" if r["note"] else "")
            lines.append(md_row([_row_label(r), r["column"], r["setting"], _num(r["paper"], r["paper_plus_minus"]),
                                _ours_num(r), _signed(r["difference"]), status]))  # fmt: skip
        lines.append("")
    lines += ["## Cells of ours that the paper has no value for", ""]
    if extra.empty:
        lines += ["None.", ""]
    else:
        lines += [md_row(["Table", "Setting", "Column", "Ours", "Status"]),
                  md_row([":---", ":---", ":---", "---:", ":---"])]
        for _, r in extra.iterrows():
            lines.append(md_row([r["table"], _row_label(r), r["column"], _ours_num(r), r["note"]]))
        lines.append("")
    return "\n".join(lines)


def write_paper_comparison(
    tables: Mapping[str, pd.DataFrame],
    md_path: str | os.PathLike,
    csv_path: str | os.PathLike,
    directions_csv_path: str | os.PathLike,
    note: str = "",
) -> pd.DataFrame:
    """:func:`paper_comparison` of ``tables`` as CSV, :func:`claim_directions` as CSV and
    both as Markdown, each file written atomically; returns the comparison frame."""
    comparison = paper_comparison(tables)
    directions = claim_directions(comparison)
    write_text_atomic(csv_path, comparison.to_csv(index=False))
    write_text_atomic(directions_csv_path, directions.to_csv(index=False))
    write_text_atomic(md_path, comparison_markdown(comparison, directions, note))
    return comparison


def read_tables(paths: Mapping[str, str | os.PathLike]) -> dict[str, pd.DataFrame]:
    """The pipeline's table CSVs, by name (``{"table1": "results/table1.csv", ...}``)."""
    return {name: pd.read_csv(path) for name, path in paths.items()}

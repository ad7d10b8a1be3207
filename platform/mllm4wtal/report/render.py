"""The formats of a paper-style table (:class:`mllm4wtal.report.tables.Table`): Markdown,
CSV and LaTeX. Cells hold fractions; the formats print percent, mean +- std (n when a row
misses seeds), the difference to the reference row and its paired-t p value."""

from __future__ import annotations

import csv
import io

from mllm4wtal.report.stats import PairedTest, Summary
from mllm4wtal.report.tables import Table, column_label


def _pct(v: float | None, decimals: int) -> str:
    return "–" if v is None else f"{v * 100:.{decimals}f}"


def _cell(s: Summary, row_n: int, decimals: int) -> str:
    if s.mean is None:
        return "–"
    text = _pct(s.mean, decimals)
    if s.std is not None:
        text += f" ± {s.std * 100:.{decimals}f}"
    if s.n != row_n:
        text += f" (n={s.n})"
    return text


def _diff(d: PairedTest | None, decimals: int) -> tuple[str, str]:
    if d is None:
        return "(reference)", ""
    if d.mean is None:
        return "–", d.note
    text = f"{d.mean * 100:+.{decimals}f}"
    if d.std is not None:
        text += f" ± {d.std * 100:.{decimals}f}"
    p = f"{d.p:.3g}" if d.p is not None else f"n/a: {d.note}"
    return text, p


def _paper(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}"


def _caption(table: Table) -> str:
    what = "study" if table.kind == "ablation" else "sweep"
    if table.tested:
        return (f"{what} '{table.title}' (MLflow experiment '{table.experiment}'): test mAP "
                f"(%) of each run's best.pt, chosen on the select videos, once; 'select' = "
                f"the choosing figure, 'select-test' = its optimism; mean ± std over seeds")
    when = "last evaluation" if table.at == "final" else "best evaluation by " + table.metric
    return (f"{what} '{table.title}' (MLflow experiment '{table.experiment}'): mAP (%) at the "
            f"{when} of each run, mean ± std over seeds")


def to_markdown(table: Table, decimals: int = 1) -> str:
    pcols = set(table.paper_columns)
    head = ["Variant", "n"]
    for c in table.columns:
        head.append(column_label(c))
        if c in pcols:
            head.append(f"{column_label(c)} paper")
    head += [f"Δ {column_label(table.metric)}", "p (paired t)"]
    lines = [f"# {_caption(table)}", ""]
    if table.paper:
        p = table.paper
        lines += [f"Paper: {p.get('source', '')}" + (f", table {p['table']}" if p.get("table")
                                                     else "")
                  + (f" ({p['note']})" if p.get("note") else "") + ".", ""]
    lines += [f"Δ: difference to the row's reference on `{table.metric}`, mean ± std over the "
              "seeds both rows share, with the two-sided paired t-test over those seeds.", "",
              "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table.rows:
        cells = [_md(r.label), str(r.n)]
        for c in table.columns:
            cells.append(_cell(r.cells[c], r.n, decimals))
            if c in pcols:
                cells.append(_paper(r.paper.get(c)))
        d, p = _diff(r.diff, decimals)
        if r.diff is not None and r.reference:
            d += f" vs {r.reference}"
        cells += [_md(d), _md(p)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Variants:", ""]
    for r in table.rows:
        seeds = ", ".join(map(str, r.seeds)) or "none finished"
        lines.append(f"- **{_md(r.label)}**: {_md(r.description) or '(base config)'} "
                     f"(seeds {seeds})")
    if table.notes:
        lines += ["", "Notes:", ""] + [f"- {_md(n)}" for n in table.notes]
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_csv(table: Table) -> str:
    """One line per row; values in percent; empty where there is none."""
    out = io.StringIO()
    w = csv.writer(out)
    head = ["variant", "description", "reference", "n", "seeds"]
    for c in table.columns:
        head += [f"{c} mean (%)", f"{c} std (%)", f"{c} n", f"{c} paper (%)"]
    head += ["delta metric", "delta mean (%)", "delta std (%)", "delta n", "t", "p", "note"]
    w.writerow(head)

    def num(v: float | None, scale: float = 100.0) -> str:
        return "" if v is None else f"{v * scale:.6g}"

    for r in table.rows:
        line = [r.label, r.description, r.reference or "", r.n,
                " ".join(map(str, r.seeds))]
        for c in table.columns:
            s = r.cells[c]
            line += [num(s.mean), num(s.std), s.n, num(r.paper.get(c), 1.0)]
        d = r.diff
        if d is None:
            line += [table.metric, "", "", "", "", "", "reference"]
        else:
            line += [table.metric, num(d.mean), num(d.std), d.n, num(d.t, 1.0),
                     num(d.p, 1.0), d.note]
        w.writerow(line)
    return out.getvalue()


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
          "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
          "^": r"\textasciicircum{}"}


def _tex(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in str(text))


def to_latex(table: Table, decimals: int = 1) -> str:
    """A booktabs table (``\\usepackage{booktabs}``); paper figures in grey brackets
    (``\\usepackage[table]{xcolor}`` for the grey; drop ``\\color{gray}`` without it)."""
    pcols = set(table.paper_columns)
    ncol = 2 + len(table.columns) + 2
    head = ["Variant", "$n$"]
    for c in table.columns:
        head.append(_tex(column_label(c)))
    head += [f"$\\Delta$ {_tex(column_label(table.metric))}", "$p$"]
    caption = _tex(_caption(table)).replace("±", r"$\pm$")
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             f"\\caption{{{caption}"
             + (". Paper figures in brackets" if pcols else "") + ".}",
             r"\begin{tabular}{l r " + "c" * (ncol - 2) + "}", r"\toprule",
             " & ".join(head) + r" \\", r"\midrule"]
    for r in table.rows:
        cells = [_tex(r.label), str(r.n)]
        for c in table.columns:
            s = r.cells[c]
            cell = "--" if s.mean is None else f"${s.mean * 100:.{decimals}f}"
            if s.mean is not None:
                cell += f" \\pm {s.std * 100:.{decimals}f}$" if s.std is not None else "$"
            if c in pcols and c in r.paper:
                cell += f" {{\\color{{gray}}({r.paper[c]:.1f})}}"
            cells.append(cell)
        d = r.diff
        if d is None:
            cells += ["ref.", ""]
        elif d.mean is None:
            cells += ["--", ""]
        else:
            cell = f"${d.mean * 100:+.{decimals}f}"
            cell += f" \\pm {d.std * 100:.{decimals}f}$" if d.std is not None else "$"
            cells += [cell, f"{d.p:.3g}" if d.p is not None else "n/a"]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"

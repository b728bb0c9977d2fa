"""HTML report and JSON of a shift analysis: EMI per split, EMID against the bound, the bound's terms, a scatter."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from mmlens.html import HtmlReport
from mmlens.shift.analysis import ShiftResult


def _fmt_ci(ci: list[float] | None) -> str:
    return f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""


def _scatter(rows: list[dict[str, Any]], x: str, y: str, xlabel: str, ylabel: str, title: str):
    from matplotlib.figure import Figure  # no pyplot: no global figure registry, no backend switch

    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    families = sorted({r.get("family", "all") for r in rows})
    for fam in families:
        pts = [r for r in rows if r.get("family", "all") == fam]
        ax.scatter([r[x] for r in pts], [r[y] for r in pts], label=fam, s=22)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if len(families) > 1:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def write_shift_report(
    result: ShiftResult, out_dir: str | os.PathLike, *, title: str = "Distribution-shift risk (EMI)"
) -> Path:
    """Write ``index.html`` + ``data.json`` (the result's JSON) into ``out_dir`` (atomic); returns index.html."""
    data = result.to_dict()
    cfg = result.config
    report = HtmlReport(
        title,
        subtitle=f"ID split: {result.id_split} · {len(result.rows)} splits · estimator "
        f"{cfg.estimator.kind} ({cfg.estimator_data}) · bound {cfg.bound}",
        data=data,
    )
    corr = result.correlations
    summary = report.section("Summary")
    emid_b = corr.get("emid_bound")
    if emid_b:
        summary.text(
            f"Across {emid_b['n']} shifted splits, Pearson r(EMID, bound) = {emid_b['pearson']:.3f} "
            f"(95% bootstrap CI {_fmt_ci(emid_b['pearson_ci'])}, p = {emid_b['pearson_p']:.2g}); "
            f"Spearman = {emid_b['spearman']:.3f}."
        )
    for key in ("emi_accuracy", "emi_relative_preference", "emi_win_rate"):
        if key in corr:
            c = corr[key]
            summary.text(
                f"r(EMI, {key[4:]}) = {c['pearson']:.3f} (CI {_fmt_ci(c['pearson_ci'])}), "
                f"Spearman {c['spearman']:.3f}, over {c['n']} splits."
            )
    summary.text(
        "EMI = I(query; response) - I(query; reference) with one frozen estimator; EMID = EMI(ID) - "
        "EMI(split), positive when the split is worse. The bound uses RJSD, a lower bound on JSD: it is a "
        "correlational proxy, not a certified bound. Every divergence comes with a permutation null; an "
        "EMI difference inside the bootstrap intervals is not meaningful.",
        note=True,
    )
    table = []
    for r in result.rows:
        row = {
            "split": r["split"],
            "family": r.get("family", ""),
            "n": r["n"],
            "EMI": r["emi"],
            "EMI 95% CI": _fmt_ci(r.get("emi_ci")),
            "I(q;resp)": r["mi_model"],
            "I(q;ref)": r["mi_reference"],
        }
        if "accuracy" in r:
            row["accuracy"] = r["accuracy"]
        if "emid" in r:
            row |= {"EMID": r["emid"], "bound": r["bound"]}
        table.append(row)
    report.section("EMI per split").table(table)
    term_rows = []
    for r in result.rows:
        if "terms" not in r:
            continue
        tr: dict[str, Any] = {"split": r["split"]}
        for key in ("J_v", "J_t", "J_P", "J_Q"):
            t = r["terms"].get(key)
            tr[key] = t["value"] if t else math.nan
            tr[f"{key} null"] = t["null_mean"] if t else math.nan
            tr[f"{key} p"] = t["p_value"] if t else math.nan
        term_rows.append(tr)
    if term_rows:
        sec = report.section("Bound terms (RJSD, nats) with permutation nulls")
        sec.text(
            "J_v: ID vs split images; J_t: ID vs split text queries; J_P: ID responses vs references; "
            "J_Q: split responses vs references. 'null' is the mean RJSD of random relabellings (the "
            "small-sample bias); p is the permutation p-value.",
            note=True,
        )
        sec.table(term_rows)
    ood = [r for r in result.rows if "emid" in r]
    if len(ood) >= 2:
        r = (emid_b or {}).get("pearson", math.nan)
        fig = _scatter(
            ood, "bound", "emid", f"bound ({cfg.bound})", "EMID", f"EMID against the bound (Pearson r = {r:.2f})"
        )
        report.section("EMID against the bound").figure(fig, "One point per shifted split, coloured by family.")
    acc = [r for r in result.rows if isinstance(r.get("accuracy"), (int, float))]
    if len(acc) >= 2:
        r = corr.get("emi_accuracy", {}).get("pearson", math.nan)
        fig = _scatter(acc, "accuracy", "emi", "accuracy", "EMI", f"EMI against accuracy (Pearson r = {r:.2f})")
        report.section("EMI against accuracy").figure(fig, "One point per split.")
    return report.write(out_dir)

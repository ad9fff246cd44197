"""Render a convergence :class:`~analysis.compare.Report` as Markdown, LaTeX (booktabs) and JSON.

Per schedule: the final metrics; the difference to POTO per metric (paired by seed: Δ [CI], paired p,
Holm p, seeds won; otherwise labelled "unpaired": Welch); the convergence speed-up with its bootstrap
interval; and on AP the power line (seeds needed for 80% power, smallest detectable difference).
COCO metrics are logged as fractions; tables show AP points (x100, two decimals), as papers do.
The JSON keeps the exact logged fractions.
"""
from __future__ import annotations

import math
from typing import Optional

from analysis.compare import Report, VariantResult
from analysis.runs import FINAL_METRICS
from analysis.power import PowerAnalysis
from analysis.stats import Comparison, SpeedupInterval, Summary

UNPAIRED = "unpaired"


def points(value: float) -> str:
    return f"{100 * value:.2f}"


def summary_cell(summary: Optional[Summary], *, pm: str = "±") -> str:
    if summary is None:
        return "–"
    if summary.std is None:
        return points(summary.mean)
    return f"{points(summary.mean)} {pm} {points(summary.std)}"


def p_cell(p: Optional[float]) -> str:
    if p is None:
        return "n/a"
    if math.isnan(p):
        return "undefined"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def effect_cell(comparison: Optional[Comparison]) -> str:
    """"+1.10 [-0.38, +2.58]" in AP points; no interval with fewer than two values a side."""
    if comparison is None:
        return "–"
    if comparison.ci is None:
        return f"{100 * comparison.delta:+.2f}"
    low, high = comparison.ci
    return f"{100 * comparison.delta:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]"


def wins_cell(comparison: Optional[Comparison]) -> str:
    """"4/5" seeds where the variant is higher; ties are said ("3/5, 1 tie"); "–" when unpaired."""
    if comparison is None or comparison.wins is None:
        return "–"
    ties = comparison.ties
    return f"{comparison.wins}/{comparison.n_variant}" + (f", {ties} tie{'s' if ties > 1 else ''}" if ties else "")


def variant_cell(result: VariantResult) -> str:
    return f"{result.label} ({UNPAIRED})" if result.paired is False else result.label


def speed_cells(result: VariantResult) -> list[str]:
    """[POTO's final AP, epochs POTO needs, epochs this variant needs, speed-up, its interval, the share of
    resamples that never reach the target] as text."""
    if result.target_ap is None:
        return ["–"] * 6
    reach = str(result.reach_epoch) if result.reach_epoch is not None else f"never (≤ {int(result.curve.epochs.max())})"
    base = str(result.baseline_epochs) if result.baseline_epochs is not None else "–"
    speed = f"{result.speedup:.2f}×" if result.speedup is not None else "–"
    return [points(result.target_ap), base, reach, speed, *interval_cells(result.speedup_ci)]


def interval_cells(ci: Optional[SpeedupInterval]) -> list[str]:
    if ci is None:
        return ["–", "–"]
    bound = lambda x: "never" if x is None else f"{x:.2f}×"  # noqa: E731
    share = ci.never_share
    return [f"[{bound(ci.low)}, {bound(ci.high)}]" + ("" if ci.paired else f" {UNPAIRED}"),
            "–" if share is None else f"{100 * share:.1f}%"]


def power_line(result: VariantResult) -> str:
    """"n = 5 pairs, sd of the difference 1.20 AP: 80% power needs 9 pairs for the observed +1.10; 5 pairs
    detect |Δ| >= 1.90 AP" (AP points)."""
    pw: Optional[PowerAnalysis] = result.power
    if pw is None:
        return f"not computable ({result.power_missing})"
    pct = f"{100 * pw.power:.0f}%"
    if pw.paired:
        n, unit, spread = f"{pw.n_variant} pairs", "pairs", "sd of the difference"
    else:
        n, unit, spread = f"{pw.n_variant} vs {pw.n_baseline} runs", "runs per arm", f"{UNPAIRED}, pooled sd"
    needs = (f"{pct} power needs {pw.n_needed} {unit} for the observed {100 * pw.effect:+.2f}" if pw.n_needed
             else f"no n reaches {pct} power for the observed {100 * pw.effect:+.2f}" if pw.effect
             else "no observed difference to power")
    return f"n = {n}, {spread} {100 * pw.sd:.2f} AP: {needs}; {n} detect |Δ| >= {100 * pw.detectable:.2f} AP"


def _compared(report: Report, panel: str) -> list[VariantResult]:
    return [r for r in report.results if r.variant.panel == panel and r.baseline is not None
            and r.variant is not r.baseline]


def _ci_pct(report: Report) -> str:
    return f"{100 * report.confidence:g}%"


def to_markdown(report: Report) -> str:
    q = report.query
    lines = ["# Convergence report", "",
             f"Runs: {len(q.records)} finished runs of {q.describe_filters()}"
             f" ({len(q.excluded)} excluded, see the last section).", "",
             "COCO metrics on the validation split at each run's last evaluation, in AP points (×100): "
             "mean ± sample std over seeds; n = runs.", ""]
    for panel in report.panels:
        lines += [f"## Schedule {panel}", ""] + _markdown_panel(report, panel)
    lines += ["## Could not compute", ""]
    lines += [f"- {note}" for note in report.notes] or ["- Nothing: every number above was computed."]
    return "\n".join(lines) + "\n"


def _markdown_panel(report: Report, panel: str) -> list[str]:
    rows = [r for r in report.results if r.variant.panel == panel]
    compared, ci = _compared(report, panel), _ci_pct(report)
    lines = ["### Final metrics", "", "| Variant | n | seeds | " + " | ".join(FINAL_METRICS) + " |",
             "| --- | ---: | --- | " + " | ".join("---:" for _ in FINAL_METRICS) + " |"]
    lines += [f"| {r.label} | {r.n} | {','.join(r.seeds)} | "
              + " | ".join(summary_cell(r.final.get(m)) for m in FINAL_METRICS) + " |" for r in rows]
    lines += ["", "### Difference to the POTO (o2o) baseline", "",
              f"Paired by seed: Δ = mean over seeds of (variant − baseline) in AP points [{ci} t-interval], "
              "p = paired t-test, Holm p = Holm's step-down adjustment over the six metrics of one comparison, "
              "wins = seeds where the variant is higher. Rows marked unpaired (the seed sets differ): difference "
              "of means [Welch interval], Welch's p. n/a: fewer than 2 runs a side.", "",
              "| Variant | baseline | metric | Δ [" + ci + " CI] | p | Holm p | wins |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for r in compared:
        for i, m in enumerate(FINAL_METRICS):
            head = f"| {variant_cell(r)} | {r.baseline.label} |" if i == 0 else "| | |"
            p, holm = (p_cell(r.versus[m].p), p_cell(r.holm[m])) if m in r.versus else ("–", "–")
            lines.append(f"{head} {m} | {effect_cell(r.versus.get(m))} | {p} | {holm} | {wins_cell(r.versus.get(m))} |")
    lines += ["", "### Convergence speed", "",
              "Epochs until the mean val/AP curve first reaches the baseline's final mean AP; "
              f"speed-up = baseline's epochs / variant's epochs; {ci} CI: percentile bootstrap over seed pairs "
              f"({report.bootstrap} resamples; unpaired: each side resampled on its own); never reached = share "
              "of resamples where the variant's mean curve never gets there (a bound among them reads never).", "",
              "| Variant | final AP | baseline's final AP | baseline's epochs | epochs to reach it | speed-up "
              f"| {ci} CI | never reached |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r.label} | {summary_cell(r.final.get('AP'))} | " + " | ".join(speed_cells(r)) + " |" for r in rows]
    if compared:
        lines += ["", "### Power (AP)", "",
                  "Two-sided t-test at α 0.05 (paired: on the seed differences), the observed difference and "
                  "spread taken as true.", ""]
        lines += [f"- {r.label} vs {r.baseline.label}: {power_line(r)}." for r in compared]
    return lines + [""]


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)


def _tex(cell: str) -> str:
    cell = tex_escape(cell)
    for text, tex in (("±", r"$\pm$"), ("×", r"$\times$"), ("–", "--"), ("≤", r"$\leq$"), ("<0.001", r"$<$0.001"),
                      ("|Δ|", r"$|\Delta|$"), ("Δ", r"$\Delta$"), (">=", r"$\geq$")):
        cell = cell.replace(text, tex)
    return cell


def to_latex(report: Report) -> str:
    """Four booktabs tables (final metrics, differences, speed, power); one block of rows per schedule."""
    ci = tex_escape(_ci_pct(report))
    out = ["% Generated by python -m analysis.convergence; needs \\usepackage{booktabs}.",
           f"% Runs: {tex_escape(report.query.describe_filters())}", ""]

    def table(caption: str, header: list[str], rows_fn, cols: str) -> None:
        out.extend([r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{caption}}}",
                    rf"\begin{{tabular}}{{{cols}}}", r"\toprule", " & ".join(header) + r" \\", r"\midrule"])
        for i, panel in enumerate(report.panels):
            if i:
                out.append(r"\midrule")
            out.append(rf"\multicolumn{{{len(header)}}}{{l}}{{\emph{{schedule {tex_escape(panel)}}}}} \\")
            out.extend(" & ".join(_tex(c) for c in row) + r" \\" for row in rows_fn(panel))
        out.extend([r"\bottomrule", r"\end{tabular}", r"\end{table}", ""])

    table("COCO metrics (val) at the last evaluation, mean $\\pm$ std over seeds (AP points).",
          ["Variant", "$n$", *FINAL_METRICS],
          lambda panel: [[r.label, str(r.n)] + [summary_cell(r.final.get(m)) for m in FINAL_METRICS]
                         for r in report.results if r.variant.panel == panel], "l" + "r" * (1 + len(FINAL_METRICS)))
    table(f"Difference to the POTO (o2o) baseline in AP points: paired by seed, {ci} $t$-interval, paired $t$-test "
          "$p$, Holm-adjusted $p$ over the six metrics, seeds won; unpaired rows: Welch.",
          ["Variant", "metric", f"$\\Delta$ [{ci} CI]", "$p$", "Holm $p$", "wins"],
          lambda panel: [[variant_cell(r) if i == 0 else "", m, effect_cell(r.versus.get(m)),
                          p_cell(r.versus[m].p) if m in r.versus else "–",
                          p_cell(r.holm[m]) if m in r.holm else "–", wins_cell(r.versus.get(m))]
                         for r in _compared(report, panel) for i, m in enumerate(FINAL_METRICS)], "llrrrr")
    table(f"Convergence: epochs until the mean val AP reaches the POTO baseline's final mean AP; {ci} percentile "
          f"bootstrap interval of the speed-up over seed pairs ({report.bootstrap} resamples).",
          ["Variant", "final AP", "POTO final AP", "POTO epochs", "epochs", "speed-up", f"{ci} CI", "never"],
          lambda panel: [[r.label, summary_cell(r.final.get("AP"))] + speed_cells(r)
                         for r in report.results if r.variant.panel == panel], "lrrrrrrr")
    table("Power on AP (two-sided $t$-test, $\\alpha = 0.05$, 80\\% power, the observed difference and spread "
          "taken as true).", ["Variant", "power"],
          lambda panel: [[variant_cell(r), power_line(r)] for r in _compared(report, panel)], "ll")
    if report.notes:
        out += ["% Could not compute:"] + [f"% - {note}" for note in report.notes]
    return "\n".join(out) + "\n"


def to_json(report: Report) -> dict:
    """Exact numbers (fractions, as logged) for scripts and tests; JSON has no NaN: null instead."""
    def summary(s: Summary) -> dict:
        return {"mean": s.mean, "std": s.std, "n": s.n, "ci95": list(s.ci) if s.ci else None}

    return {
        "filters": report.query.describe_filters(), "confidence": report.confidence, "bootstrap": report.bootstrap,
        "variants": [{
            "label": r.label, "schedule": r.variant.panel, "groups": r.variant.groups, "n": r.n, "seeds": r.seeds,
            "run_ids": [run.run_id for run in r.variant.runs],
            "final": {m: summary(s) for m, s in r.final.items()},
            # each run's own numbers, so that a later report can pool more seeds with these
            "runs": [{"run_id": run.run_id, "seed": run.seed, "final": dict(run.final),
                      "curve": {str(epoch): ap for epoch, ap in sorted(run.curve.items())}}
                     for run in r.variant.runs],
            "baseline": r.baseline.label if r.baseline else None, "paired": r.paired,
            "versus_baseline": {m: _comparison(c, r.holm.get(m)) for m, c in r.versus.items()},
            "power_ap": _power(r),
            "difference_curve": _curve(r.difference) if r.difference is not None else None,
            "seed_differences": {seed: {str(e): d for e, d in diffs.items()}
                                 for seed, diffs in r.seed_differences.items()},
            "curve": {"epochs": r.curve.epochs.tolist(), "mean": r.curve.mean.tolist(), "n": r.curve.n.tolist()},
            "target_ap": r.target_ap, "baseline_epochs": r.baseline_epochs, "reach_epoch": r.reach_epoch,
            "speedup": r.speedup, "speedup_ci": _interval(r.speedup_ci),
        } for r in report.results],
        "excluded": [{"run_id": e.run_id, "run_name": e.run_name, "status": e.status, "reason": e.reason}
                     for e in report.query.excluded],
        "notes": report.notes,
    }


def _comparison(c: Comparison, holm: Optional[float]) -> dict:
    return {"paired": c.paired, "delta": c.delta, "ci": list(c.ci) if c.ci else None, "p": _json_p(c.p),
            "p_holm": _json_p(holm), "n_variant": c.n_variant, "n_baseline": c.n_baseline, "sd": c.sd,
            "wins": c.wins, "ties": c.ties, "losses": c.losses}


def _power(r: VariantResult) -> Optional[dict]:
    if r.power is None:
        return None if r.power_missing is None else {"missing": r.power_missing}
    pw = r.power
    return {"paired": pw.paired, "n_variant": pw.n_variant, "n_baseline": pw.n_baseline, "effect": pw.effect,
            "sd": pw.sd, "n_needed": pw.n_needed, "detectable": pw.detectable, "power": pw.power, "alpha": pw.alpha}


def _interval(ci: Optional[SpeedupInterval]) -> Optional[dict]:
    """Bounds as numbers, or "never" (the bound falls among the resamples that never reach the target)."""
    if ci is None:
        return None
    return {"low": "never" if ci.low is None else ci.low, "high": "never" if ci.high is None else ci.high,
            "paired": ci.paired, "resamples": ci.resamples, "never": ci.never, "never_share": ci.never_share,
            "undefined": ci.undefined, "confidence": ci.confidence}


def _curve(c) -> dict:
    nan_free = lambda a: [None if math.isnan(x) else float(x) for x in a]  # noqa: E731
    return {"epochs": c.epochs.tolist(), "mean": nan_free(c.mean), "low": nan_free(c.low), "high": nan_free(c.high),
            "n": c.n.tolist()}


def _json_p(p: Optional[float]) -> Optional[float] | str:
    """JSON has no NaN: an undefined p-value (zero variance) is the string "undefined"."""
    return "undefined" if p is not None and math.isnan(p) else p

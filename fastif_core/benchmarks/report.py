"""Plain-text tables of a ``bench.json`` result (printed by ``fastif bench``; no torch)."""

from __future__ import annotations

from typing import Any


def _num(x: Any, fmt: str = ".3g") -> str:
    return "—" if x is None else format(x, fmt)


def _pm(stat: dict[str, Any]) -> str:
    return "—" if stat.get("mean") is None else f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def speed_lines(result: dict[str, Any]) -> list[str]:
    s = result["settings"]
    lines = [
        f"Speed (Table 1): {len(result['speed']['single']['rows']['full']['per_example'])} timed test examples, "
        f"N={result['num_train']}, J={s['depth']}, original B={s['original_batch']}, fast B=1"
        + (" (scaled down from the paper's J=1000, B=128)" if s["scaled_down"] else ""),
        f"  {'row':<18}{'median s':>10}{'q1':>9}{'q3':>9}{'speed-up':>10}",
    ]
    for name, r in result["speed"]["single"]["rows"].items():
        sec = r["seconds"]
        lines.append(
            f"  {name:<18}{_num(sec['median']):>10}{_num(sec['q1']):>9}{_num(sec['q3']):>9}"
            f"{_num(r['speedup_vs_full'], '.1f'):>9}×"
        )
    multi = result["speed"].get("multi")
    if multi:
        lines.append(f"  on {multi['devices']}:")
        for name, r in multi["rows"].items():
            lines.append(f"  {name:<18}{r['seconds']['median']:>10.3g}{'':>18}{r['speedup_vs_full']:>9.1f}×")
    return lines


def other_lines(result: dict[str, Any]) -> list[str]:
    lat, eng = result["latency"], result["engine"]
    sec = lat["seconds"]
    lissa = lat["config"]["s_test"]
    lines = [
        f"One click (k={lat['config']['k']}, J={lissa['depth']}, B={lissa['batch_size']}): total {sec['total']:.3g} s = "
        + ", ".join(f"{k} {sec[k]:.3g}" for k in ("knn", "test_gradient", "s_test", "scoring")),
        f"Engine: JVP scoring {eng['scoring']['jvp']['examples_per_s']:.1f}/s vs reference "
        f"{eng['scoring']['reference']['examples_per_s']:.1f}/s = {eng['jvp_speedup_vs_reference']:.1f}×; "
        f"forward {eng['forward']['examples_per_s']:.1f}/s, scoring costs {eng['scoring_cost_vs_forward']:.2f}× "
        "a forward",
        "HVP s/example: " + ", ".join(f"{k} {v['seconds_per_example']:.3g}" for k, v in eng["hvp"].items()),
    ]
    geometry = result["speed"]["single"].get("s_test", {})
    lines.append(
        "s_test geometry, mean ± std: "
        + "; ".join(
            f"{p}: cos(s_test, ∇L_test) {_pm(g['cos_with_gradient'])}, cos(s_test, original) {_pm(g['cos_with_original'])}"
            for p, g in geometry.items()
        )
    )
    lines.append("Quality (Table 3), correlation with full over the kNN candidates, mean ± std:")
    lines.append(f"  {'row':<18}{'pearson':>16}{'spearman':>16}{'kendall':>16}")
    for name, r in result["quality"]["rows"].items():
        g = r["by_group"]["all"]
        lines.append(f"  {name:<18}{_pm(g['pearson']):>16}{_pm(g['spearman']):>16}{_pm(g['kendall']):>16}")
    return lines


def recall_lines(result: dict[str, Any]) -> list[str]:
    rec = result["recall"]
    lines = [f"kNN recall R@m (k = {rec['ks']}; random = k/N):"]
    for m in rec["ms"]:
        for group in ("correct", "incorrect"):
            for kind in ("helpful", "harmful", "unsigned"):
                curve = rec["by_group"][group][str(m)][kind]
                if curve:
                    lines.append(f"  R@{m:<4} {group:<10}{kind:<9}" + " ".join(f"{x:.2f}" for x in curve))
        lines.append(f"  R@{m:<4} {'random':<19}" + " ".join(f"{x:.2f}" for x in rec["random"]))
    return lines


def retrain_lines(result: dict[str, Any]) -> list[str]:
    lines = []
    grid = result["lissa_tradeoff"]
    ref = grid["reference"]
    lines.append(f"s_test trade-off vs J={ref['depth']} B={ref['batch_size']} T={ref['repeats']}:")
    for p in grid["points"]:
        lines.append(
            f"  J={p['depth']:<5} B={p['batch_size']:<4} T={p['repeats']:<3} {p['seconds']:>8.3g} s  "
            f"error {_num(p['error_norm'], '.3f')}  influence r {_num(p['influence_pearson'], '.3f')}"
        )
    for name in ("convex", "transformer"):
        r = result["retrain"].get(name)
        if not r:
            continue
        lines.append(
            f"Retraining check ({name}): Pearson(predicted, actual) = "
            f"{_num(r['pearson_predicted_vs_actual'], '.3f')}; signs {r['signs_at_max_m']}"
        )
        for kind, by_m in r["by_kind"].items():
            lines.append(
                f"  {kind:<8}"
                + "  ".join(
                    f"m={m}: {_num(v['actual']['mean'], '+.2e')} (pred {_num(v['predicted']['mean'], '+.2e')})"
                    for m, v in by_m.items()
                )
            )
    return lines


def summary_text(result: dict[str, Any]) -> str:
    """Every headline table of a bench result, one section after the other."""
    lines = speed_lines(result) + other_lines(result) + recall_lines(result) + retrain_lines(result)
    if result["plots"].get("png_error"):
        lines.append(f"note: {result['plots']['png_error']}")
    if result.get("non_finite"):
        shown = ", ".join(f"{n['path']}={n['value']}" for n in result["non_finite"][:5])
        lines.append(f"note: {len(result['non_finite'])} non-finite value(s) written as null ({shown})")
    return "\n".join(lines)


def solver_text(result: dict[str, Any]) -> str:
    """The solver comparison (``fastif bench --section solvers``) as a plain table."""
    summary = result.get("summary", {})
    lines = [
        f"s_test solvers vs the paper's LiSSA averaged over T={result['ref_repeats']} "
        f"({len(result['examples'])} test examples, k={result['k']}):",
        f"{'solver':<16}{'median s':>10}{'HVPs':>8}{'Pearson':>10}{'top10 help':>12}{'top10 harm':>12}"
        f"{'rel err':>9}  meets",
    ]
    for name, row in summary.get("table", {}).items():
        if not row["runs"]:
            lines.append(f"{name:<16}  failed: {row['failures'][0][:90] if row['failures'] else '-'}")
            continue
        lines.append(
            f"{name:<16}{row['seconds_median']:>10.1f}{row['hvps_median']:>8.0f}{row['pearson']['mean']:>10.4f}"
            f"{row['overlap_helpful']['mean']:>12.2f}{row['overlap_harmful']['mean']:>12.2f}"
            f"{row['rel_error']['mean']:>9.3f}  {row['meets']}"
        )
    held = [e["reference"].get("held_out_repetition") for e in result.get("examples", [])]
    held = [h for h in held if h]
    if held:
        mean = lambda key: sum(h[key]["mean"] for h in held) / len(held)  # noqa: E731
        secs = [e["reference"]["seconds_per_repeat"] for e in result["examples"]]
        lines.append(
            f"{'paper (1 rep.)':<16}{sorted(secs)[len(secs) // 2]:>10.1f}{result['reference'].get('depth', 0):>8}{mean('pearson'):>10.4f}"
            f"{mean('overlap_helpful'):>12.2f}{mean('overlap_harmful'):>12.2f}{mean('rel_error'):>9.3f}"
            f"  (one reference repetition vs the mean of the other T-1)"
        )
    lines.append(f"choice (fastest meeting Pearson >= 0.99, overlap >= 0.8): {summary.get('choice')}")
    for name, lat in result.get("latency", {}).items():
        sec = lat["seconds"]
        lines.append(
            f"click ({name}): total {sec['total']:.1f} s = kNN {sec['knn']:.3f} + test gradient "
            f"{sec['test_gradient']:.2f} + s_test {sec['s_test']:.1f} + scoring {sec['scoring']:.1f}"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------- damping (--section damping)
def damping_text(result: dict[str, Any]) -> str:
    """The headline table (markdown): one row per μ, the metrics' means over all tests."""
    base = f"{result['settings']['base_mu']:g}"
    lines = [
        f"| μ | converged / tests | iterations | seconds | Pearson vs dot (correct / incorrect) | Spearman "
        f"vs dot | top-10 help / harm vs dot | Pearson vs μ={base} | top-10 help / harm vs μ={base} "
        "| curvature share |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for mu, s in result.get("summary", {}).items():
        a, c, i = s["all"], s.get("correct", {}), s.get("incorrect", {})
        d, b = a["vs_dot"], a["vs_base"]
        lines.append(
            f"| {mu} | {a['converged']} / {a['tests']} | {_num(a['iterations_median'], '.4g')} | "
            f"{_num(a['seconds_median'], '.4g')} | {_num(d['pearson']['mean'], '.4g')} ({_mean4(c, 'pearson')} / "
            f"{_mean4(i, 'pearson')}) | {_num(d['spearman']['mean'], '.4g')} | {_num(d['top10_helpful']['mean'], '.4g')} / "
            f"{_num(d['top10_harmful']['mean'], '.4g')} | {_num(b['pearson']['mean'], '.4g')} | "
            f"{_num(b['top10_helpful']['mean'], '.4g')} / {_num(b['top10_harmful']['mean'], '.4g')} | "
            f"{_num(a['curvature_share']['mean'], '.4g')} |"
        )
    return "\n".join(lines)


def _mean4(group: dict[str, Any], metric: str) -> str:
    return _num(group["vs_dot"][metric]["mean"], ".4g") if group else "—"


def damping_retrain_text(result: dict[str, Any]) -> str:
    """The retraining table (markdown): one row per μ."""
    noise = result.get("noise_floor")
    floor = (
        "not yet measured"
        if noise is None
        else f"seeds {noise['seeds'][0]} and {noise['seeds'][1]}, mean |Δ loss| "
        f"{noise['abs_change']['mean']:.4g}, max {noise['max']:.4g}"
    )
    lines = [
        f"fine-tunings: {result['done']} of {result['planned']} planned ({result['ran_now']} by this run); "
        f"noise floor: {floor}",
        "",
        "| μ | pairs | Pearson | Spearman | sign agreement | slope actual/predicted | above noise | "
        "mean actual (predicted) helpful / harmful / random, largest m |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for mu, row in result["by_mu"].items():
        m = max((int(k.split("/")[1]) for k in row["by_kind"]), default=None)
        cells = []
        for kind in ("helpful", "harmful", "random"):
            s = row["by_kind"].get(f"{kind}/{m}")
            cells.append("—" if s is None else f"{s['actual']:+.3g} ({s['predicted']:+.3g})")
        lines.append(
            f"| {mu} | {row['pairs']} | {_num(row['pearson'])} | {_num(row['spearman'])} | "
            f"{_num(row['sign_agreement'])} | {_num(row['slope_actual_on_predicted'])} | "
            f"{'—' if row['above_noise'] is None else row['above_noise']} | {' / '.join(cells)} |"
        )
    return "\n".join(lines)

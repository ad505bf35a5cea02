"""`immunity report --html PATH`: one self-contained HTML file (figures embedded as PNG data
URIs, no scripts, no network) with the leaderboard, every table and the figures that read better
as pictures: the bounded worst case per defense, the HS-helpfulness frontier over every attack,
and resistance curves (HS after vs the attacker's budget) where the store holds a budget sweep.
"""

from __future__ import annotations

import base64
import html
import io
from datetime import UTC, datetime
from statistics import mean

from ..engine.result import RunResult
from .analysis import attack_outcomes, attack_steps, defense_label, setting, short_settings
from .tables import by_attack_table, conditions_table, defense_overview, leaderboard, markdown_table

BUDGET_KEYS = {"epochs", "max_steps", "n", "batch_size"}


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError("report --html draws its figures with matplotlib: pip install 'immunity[plots]'") from err
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def worst_case_figure(results: list[RunResult], guard_helpful: float, guard_fa: float):
    """Per defense: bounded worst-case HS (bars) and the unbounded worst case (markers)."""
    plt = _pyplot()
    rows = []
    for label, outcomes in attack_outcomes(results, guard_helpful, guard_fa).items():
        capable = [o["hs"] for o in outcomes if o["capable"]]
        rows.append((label, max(capable) if capable else float("nan"), max(o["hs"] for o in outcomes)))
    rows.sort(key=lambda r: (r[1] != r[1], r[1]))  # defenses with no capable attack last
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.2))
    ys = range(len(rows))
    ax.barh(ys, [100 * r[1] for r in rows], color="#4c72b0", label="bounded worst case")
    ax.scatter([100 * r[2] for r in rows], ys, color="#c44e52", marker="|", s=200, label="worst case")
    ax.set_yticks(list(ys), [r[0] for r in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("HS after the attack (%), lower is better")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def frontier_figure(results: list[RunResult]):
    """Every (defense, attack setting): benign helpfulness after vs the HS the attacker reached."""
    plt = _pyplot()
    short = short_settings(results)
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.defense, short[setting(r)]), []).append(r)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    attacks = sorted({a for _, a in groups})
    colors = plt.get_cmap("tab10")
    for (defense, attack), runs in sorted(groups.items()):
        hs = [v for v in (r.attacker_hs() for r in runs) if v is not None]
        helpful = [v for v in (r.helpful_after for r in runs) if v is not None]
        if len(hs) < len(runs) or len(helpful) < len(runs):  # a point needs every seed measured
            continue
        ax.scatter(100 * mean(helpful), 100 * mean(hs), color=colors(attacks.index(attack) % 10), s=25)
        ax.annotate(defense, (100 * mean(helpful), 100 * mean(hs)), fontsize=6, alpha=0.7)
    for i, attack in enumerate(attacks):
        ax.scatter([], [], color=colors(i % 10), label=attack[:40])
    ax.set_xlabel("benign helpfulness after the attack (%)")
    ax.set_ylabel("HS after the attack (%)")
    ax.set_xlim(-2, 102)
    ax.set_ylim(-2, 102)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    return fig


def budget_sweeps(results: list[RunResult]) -> dict[tuple[str, str, str], list[tuple[float, float]]]:
    """(defense, budget, the rest of the setting) -> [(budget value, mean HS after)] for fine-tuning
    attacks whose stored settings differ only in their budget (at least three values): optimizer
    steps (from epochs or max_steps, `attack_steps`) or the number of samples n."""
    sweeps: dict[tuple[str, str, str], dict[float, list[float]]] = {}
    for r in results:
        config = r.attack_config
        if not BUDGET_KEYS <= set(config) or r.hs_after is None:
            continue
        for budget, value, varied in (
            ("steps", attack_steps(r), {"epochs", "max_steps"}),
            ("samples n", config["n"], {"n"}),
        ):
            rest = str(sorted((k, v) for k, v in config.items() if k not in varied))
            sweeps.setdefault((defense_label(r), budget, rest), {}).setdefault(float(value), []).append(r.hs_after)
    return {k: sorted((b, mean(v)) for b, v in points.items()) for k, points in sweeps.items() if len(points) >= 3}


def resistance_figure(sweeps):
    plt = _pyplot()
    budgets = sorted({k[1] for k in sweeps})
    fig, axes = plt.subplots(1, len(budgets), figsize=(6 * len(budgets), 4), squeeze=False)
    for ax, budget in zip(axes[0], budgets):
        for (defense, key, _), points in sorted(sweeps.items()):
            if key == budget:
                ax.plot([p[0] for p in points], [100 * p[1] for p in points], marker="o", label=defense)
        ax.set_xlabel(f"attack {budget}")
        ax.set_xscale("log")
        ax.set_ylabel("HS after (%)")
        ax.set_ylim(-2, 102)
        ax.legend(fontsize=6, ncol=2)
    return fig


def markdown_to_html(text: str) -> str:
    """Our report's markdown (pipe tables, '- ' lists, paragraphs) as HTML."""
    out: list[str] = []
    table: list[str] = []
    items: list[str] = []

    def flush():
        if table:
            rows = [
                [html.escape(c.strip()) for c in line.strip().strip("|").split("|")]
                for line in table
                if not set(line.replace("|", "").strip()) <= {"-"}
            ]
            head, body = rows[0], rows[1:]
            out.append(
                "<table><thead><tr>"
                + "".join(f"<th>{c}</th>" for c in head)
                + "</tr></thead><tbody>"
                + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in body)
                + "</tbody></table>"
            )
            table.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            table.append(line)
        elif line.startswith("- "):
            items.append(line[2:])
        else:
            flush()
            if line.strip():
                out.append(f"<p>{html.escape(line)}</p>")
    flush()
    return "\n".join(out)


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; font-size: 12px; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; }
th { background: #f0f0f0; }
img { max-width: 100%; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 2em; }
"""


def html_report(
    results: list[RunResult],
    store: str,
    guard_helpful: float = 0.8,
    guard_fa: float = 0.8,
    top: int = 3,
    phi: float = 0.5,
) -> str:
    """The whole report as one HTML document."""
    if not results:
        raise ValueError("no results to report")
    sections = [
        (
            "Leaderboard: bounded worst case over every stored attack, the four conditions, cost",
            markdown_to_html(defense_overview(results, phi, guard_helpful, guard_fa)),
        ),
        (
            "Bounded worst case per defense",
            f'<img alt="bounded worst case per defense" src="data:image/png;base64,'
            f'{_png(worst_case_figure(results, guard_helpful, guard_fa))}">',
        ),
        (
            "HS after vs benign helpfulness after, every defense and attack",
            f'<img alt="HS-helpfulness frontier" src="data:image/png;base64,{_png(frontier_figure(results))}">',
        ),
    ]
    sweeps = budget_sweeps(results)
    if sweeps:
        sections.append(
            (
                "Resistance: HS after vs the attacker's budget",
                f'<img alt="resistance curves" src="data:image/png;base64,{_png(resistance_figure(sweeps))}">',
            )
        )
    sections += [
        ("Rosati et al.'s four conditions", markdown_to_html(conditions_table(results, phi))),
        (
            "Worst case, top-n and bounded worst case",
            markdown_to_html(leaderboard(results, "bounded-worst-case", top, guard_helpful, guard_fa)),
        ),
        ("Defenses x attacks (HS after, helpfulness after)", markdown_to_html(by_attack_table(results))),
        ("Every configuration", markdown_to_html(markdown_table(results))),
    ]
    _pyplot().close("all")
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    models = ", ".join(sorted({r.model for r in results}))
    judges = ", ".join(sorted({r.judge for r in results}))
    seeds = ",".join(map(str, sorted({r.seed for r in results})))
    body = "\n".join(f"<h2>{html.escape(title)}</h2>\n{content}" for title, content in sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>immunity report</title>'
        f"<style>{STYLE}</style></head><body>\n<h1>immunity report</h1>\n"
        f"<p>Store {html.escape(store)}; {len(results)} runs; models {html.escape(models)}; judges "
        f"{html.escape(judges)}; seeds {seeds}; made {stamp}.</p>\n{body}\n</body></html>\n"
    )

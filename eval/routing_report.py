"""Routing report of a checkpoint: what its experts learned, as plots and a Markdown page.

    .venv/bin/python eval/routing_report.py runs/my-run --out runs/my-run/report
    .venv/bin/python eval/routing_report.py runs/my-run/checkpoints/step_000800 --earlier \\
        runs/my-run/checkpoints/step_000400 --sequences-per-domain 64 data=embedded

Routes the first ``--sequences-per-domain`` validation sequences of each domain (the data of the
run, or any data override as in train.py) and reports per MoE layer:

- load per expert, as a layers × experts heatmap of load / fair share (1 = balanced), and MaxVio
  over the whole set (MaxVio_global of Wang et al. 2408.15664);
- the domain × expert selection frequency p(expert | domain) and the mutual information
  I(domain; expert) (Qiu et al. 2501.11873), against its ceiling H(domain) of the routed tokens
  (log D for D domains of equal size: every domain on experts of its own);
- TopK score sum and router entropy;
- the co-activation matrix P(j selected | i selected);
- token-id specialisation (OpenMoE 2402.01739): how deterministic the experts are given the token id;
- routing saturation against an earlier checkpoint of the same run (``--earlier``; for a run
  directory with several checkpoints, the first one by default): the share of the final selections
  the earlier checkpoint already made.

Writes OUT/report.md (embedding the PNGs), OUT/report.json and the plots.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from matplotlib.axes import Axes
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure  # no pyplot: files only, no display, no global figure state
from model_and_data import eval_data, load

from moe.analysis import collect_routing, summarise
from moe.checkpoint import list_checkpoints
from moe.data.packing import first_per_domain
from moe.types import site_order

SCALARS = {  # report.json key → column title
    "max_vio": "MaxVio", "load_entropy": "load entropy", "dead_experts": "dead", "domain_mi": "I(domain; expert)",
    "topk_score_sum": "TopK score sum", "router_entropy": "router entropy",
    "token_determinism": "token-id determinism", "token_determinism_baseline": "(id-blind)",
    "token_mi_ratio": "I(id; expert)/H(expert)", "saturation": "saturation",
}


def default_earlier(path: Path) -> Path | None:
    """The first checkpoint of a run directory that holds more than one."""
    checkpoints = list_checkpoints(path) if not (path / "meta.json").exists() else []
    return checkpoints[0] if len(checkpoints) > 1 else None


def _grid(n: int) -> tuple[Figure, list[Axes]]:
    cols = min(n, 4)
    rows = -(-n // cols)
    fig = Figure(figsize=(3.6 * cols, 3.0 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat[:n])


def plot_load_heatmap(summaries, out: Path) -> None:
    layers = sorted(summaries, key=site_order)
    E = max(len(summaries[layer].load_share_E) for layer in layers)
    # one row per routed site, each against its own fair share; a site with fewer experts (MoA's attention
    # experts beside the FFN's) leaves its extra cells blank (NaN)
    relative_LE = torch.full((len(layers), E), float("nan"), dtype=torch.float64)
    for row, layer in enumerate(layers):
        share_E = summaries[layer].load_share_E
        relative_LE[row, :len(share_E)] = share_E * len(share_E)
    fig = Figure(figsize=(max(4.0, 0.45 * E + 2), max(2.5, 0.45 * len(layers) + 1.5)))
    ax = fig.subplots()
    # diverging around the fair share: blue under-used, white balanced, red over-used
    norm = TwoSlopeNorm(vmin=0.0, vcenter=1.0, vmax=max(2.0, float(relative_LE.nan_to_num(0.0).max())))
    image = ax.imshow(relative_LE.numpy(), cmap="coolwarm", norm=norm)
    ax.set(xlabel="expert", ylabel="layer", title="load / fair share", yticks=range(len(layers)), yticklabels=layers)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def plot_matrices(summaries, attribute: str, title: str, ylabels, out: Path, vmax: float | None = None) -> None:
    layers = sorted(summaries, key=site_order)
    fig, axes = _grid(len(layers))
    for ax, layer in zip(axes, layers):
        matrix = getattr(summaries[layer], attribute).numpy()
        image = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
        ax.set(title=f"layer {layer}", xlabel="expert")
        if ylabels is not None:
            ax.set(yticks=range(len(ylabels)), yticklabels=ylabels)
        fig.colorbar(image, ax=ax)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def to_markdown(path: str, header: dict, summaries, plots: dict[str, str]) -> str:
    layers = sorted(summaries, key=site_order)
    names = [n for n in SCALARS if n in summaries[layers[0]].scalars]
    lines = [f"# Routing report: {path}", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()] + [""]
    lines += ["| layer | " + " | ".join(SCALARS[n] for n in names) + " |", "|---" * (len(names) + 1) + "|"]
    for layer in layers:
        lines.append(f"| {layer} | " + " | ".join(f"{summaries[layer].scalars[n]:.4g}" for n in names) + " |")
    lines.append("")
    for title, file in plots.items():
        lines += [f"## {title}", "", f"![{title}]({file})", ""]
    return "\n".join(lines)


def routing_report(path: str, out: Path, overrides: list[str] | None = None, *, earlier: str | None = None,
                   sequences_per_domain: int = 32, batch_size: int = 8, device: str = "cpu") -> dict:
    """Write the report into ``out``; returns what report.json holds."""
    overrides = overrides or []
    model, config = load(path, device=device)
    data = eval_data(path, config, overrides, model)
    ids = first_per_domain(data.val.domain_ids, sequences_per_domain)
    inputs, domain_ids = data.val.input_ids[ids, :-1], data.val.domain_ids[ids]
    traces = collect_routing(model, inputs, domain_ids, batch_size=batch_size, device=device)
    if not traces:
        raise ValueError(f"{path} is a dense model: it has no MoE layer to report on")
    earlier = earlier or default_earlier(Path(path))
    earlier_traces = None
    if earlier is not None:
        earlier_model, _ = load(earlier, device=device)
        earlier_traces = collect_routing(earlier_model, inputs, domain_ids, batch_size=batch_size, device=device)
    summaries = summarise(traces, data.domains, earlier_traces)

    out.mkdir(parents=True, exist_ok=True)
    plots = {"Load per expert": "load_heatmap.png", "Domain × expert selection frequency": "domain_expert.png",
             "Co-activation P(column selected | row selected)": "coactivation.png"}
    plot_load_heatmap(summaries, out / plots["Load per expert"])
    plot_matrices(summaries, "domain_freq_DE", "p(expert | domain)", data.domains,
                  out / plots["Domain × expert selection frequency"])
    plot_matrices(summaries, "coactivation_EE", "co-activation", None,
                  out / plots["Co-activation P(column selected | row selected)"], vmax=1.0)
    share_D = torch.bincount(domain_ids, minlength=len(data.domains)).double() / len(domain_ids)
    ceiling = float(-(share_D[share_D > 0] * share_D[share_D > 0].log()).sum())
    header = {"tokens routed": len(inputs) * inputs.shape[1], "domains": ", ".join(data.domains),
              "I(domain; expert) ceiling H(domain)": round(ceiling, 6),
              "sequences per domain": sequences_per_domain, "saturation against": str(earlier) if earlier else "n/a"}
    (out / "report.md").write_text(to_markdown(path, header, summaries, plots))
    layers = {}
    for layer in sorted(summaries, key=site_order):
        s = summaries[layer]
        layers[str(layer)] = {**s.scalars, "load_share": s.load_share_E.tolist(),
                              "domain_freq": s.domain_freq_DE.tolist(), "coactivation": s.coactivation_EE.tolist()}
    report = {"model": str(path), **header, "layers": layers}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="a moe-lab checkpoint or run directory, or a Hugging Face MoE directory")
    parser.add_argument("overrides", nargs="*", help="data config overrides, as for train.py (data=hf ...)")
    parser.add_argument("--out", type=Path, help="output directory (default: PATH/report)")
    parser.add_argument("--earlier", help="an earlier checkpoint of the same run, for routing saturation")
    parser.add_argument("--sequences-per-domain", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    out = args.out or Path(args.path) / "report"
    try:
        report = routing_report(args.path, out, args.overrides, earlier=args.earlier,
                                sequences_per_domain=args.sequences_per_domain, batch_size=args.batch_size,
                                device=args.device)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"routing_report.py: error: {err}")
    print(f"wrote {out / 'report.md'}")
    return report


if __name__ == "__main__":
    main()

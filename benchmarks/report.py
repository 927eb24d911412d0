"""The result table and charts of benchmarks/run.py, from its rows."""

import os

MODEL_MODES = ("forward", "extract", "head", "finetune")
RECIPE_MODES = ("seed_recipe", "tlfast_recipe")
INPUT_MODES = ("bare_decode", "pipeline", "pipeline_cached", "idg")
# Execution order, whatever the order of --modes: each backbone's model modes,
# then the recipes (seed_recipe before tlfast_recipe, so that the speed-ups
# can go into the tlfast rows), then the input modes. The table sorts so too.
ALL_MODES = MODEL_MODES + RECIPE_MODES + INPUT_MODES


def _key(row):
    order = {m: i for i, m in enumerate(ALL_MODES)}
    return (order.get(row["mode"], 99), row["backbone"], row["precision"],
            row.get("cache", ""))


def format_table(rows):
    """The rows as a fixed-width table, then extract/forward ratios and the
    recipe speed-ups."""
    lines = [f"{'mode':<16}{'backbone':<17}{'precision':<16}{'images/s':>10}"
             f"{'median ms':>11}{'p90 ms':>10}{'compile s':>11}{'seconds':>10}"
             "  notes"]
    for row in sorted(rows, key=_key):
        notes = []
        if "error" in row:
            notes.append(f"ERROR {row['error'][:60]}")
        if "cache" in row:
            notes.append(f"cache={row['cache']}")
        if row.get("speedup_vs_seed"):
            notes.append(f"{row['speedup_vs_seed']:.1f}x vs seed")
        if "val_accuracy" in row:
            notes.append(f"val_acc={row['val_accuracy']:.3f}")
        if row["mode"] == "head" and "error" not in row:
            notes.append(f"{row['epochs']} epochs x {row['examples']} x "
                         f"{row['feature_dim']}; steady "
                         f"{row['steady_images_per_sec']:.0f}/s")
        fmt = lambda k, spec: format(row[k], spec) if row.get(k) is not None else ""
        lines.append(
            f"{row['mode']:<16}{row['backbone'] or '-':<17}"
            f"{row['precision'] or '-':<16}{fmt('images_per_sec', '.1f'):>10}"
            f"{fmt('median_step_ms', '.1f'):>11}{fmt('p90_step_ms', '.1f'):>10}"
            f"{fmt('compile_seconds', '.2f'):>11}{fmt('seconds', '.2f'):>10}"
            f"  {'; '.join(notes)}".rstrip())
    ok = {(r["mode"], r["backbone"], r["precision"]): r for r in rows
          if "error" not in r}
    ratios = []
    for (mode, backbone, precision), row in sorted(ok.items()):
        forward_row = ok.get(("forward", backbone, precision))
        if mode == "extract" and forward_row:
            ratio = row["images_per_sec"] / forward_row["images_per_sec"]
            ratios.append(f"  {backbone:<17}{precision:<16}{ratio:6.2f}")
    if ratios:
        lines += ["", "extract / forward (1.0: the input side keeps up with "
                  "the model):"] + ratios
    speedups = [f"  {r['backbone']:<17}{r['precision']:<16}{r['cache']:<6}"
                f"{r['speedup_vs_seed']:7.1f}x  ({r['seconds']:.1f}s)"
                for r in sorted(rows, key=_key) if r["mode"] == "tlfast_recipe"
                and r.get("speedup_vs_seed")]
    if speedups:
        lines += ["", "tlfast_recipe speed-up over seed_recipe:"] + speedups
    return "\n".join(lines)


def plot(rows, folder):
    """One PNG bar chart per mode: images/s (seconds for the recipes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(folder, exist_ok=True)
    paths = []
    # The two recipes share one chart: the point is their comparison.
    charts = [(m, (m,)) for m in MODEL_MODES + INPUT_MODES]
    charts.insert(len(MODEL_MODES), ("recipes", RECIPE_MODES))
    for mode, members in charts:
        mode_rows = sorted((r for r in rows if r["mode"] in members), key=_key)
        if not mode_rows:
            continue
        recipe = mode == "recipes"
        field = "seconds" if recipe else "images_per_sec"
        labels = ["\n".join(filter(None, [r["mode"] if recipe else "",
                                          r["backbone"], r["precision"],
                                          r.get("cache")])) or mode
                  for r in mode_rows]
        values = [0.0 if "error" in r else r[field] for r in mode_rows]
        fig, ax = plt.subplots(figsize=(max(4, 1.3 * len(values) + 1.5), 4))
        bars = ax.bar(range(len(values)), values, color="tab:blue")
        for bar, r, v in zip(bars, mode_rows, values):
            text = "OOM/error" if "error" in r else f"{v:.3g}"
            if r.get("speedup_vs_seed"):
                text += f"\n{r['speedup_vs_seed']:.1f}x faster"
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, v),
                        ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(values)), labels, fontsize=8)
        ax.set_ylabel("wall seconds (lower is better)" if recipe
                      else "images/s (higher is better)")
        first = mode_rows[0]
        ax.set_title(f"{mode}: batch {first['batch_size']}, {first['backend']}, "
                     f"{first['device']} ({first['cpu_count']} cores)",
                     fontsize=9)
        if recipe and max(values, default=0) > 50 * min(
                (v for v in values if v > 0), default=1):
            ax.set_yscale("log")  # Warm runs are otherwise invisible.
        ax.margins(y=0.15)
        fig.tight_layout()
        path = os.path.join(folder, f"{mode}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths

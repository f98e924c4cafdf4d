#!/usr/bin/env python
"""Regenerate docs/results.md: the zoo's FS accuracy table, the frontier, and the plots.

    .venv/bin/python scripts/make_results.py            # full run: 10k test images, ~20 min on 2 cores
    .venv/bin/python scripts/make_results.py --quick    # smoke test: small subsets, few K, writes to build/

For each zoo model (weights missing: skipped, with a note) it

1. measures the ANN on the full Fashion-MNIST test set;
2. evaluates candidate operating points (K x alpha policy, and a per-layer grid
   allocation) with the float32 FS twin of :mod:`fs_hw.convert.search` on a validation
   slice of the *train* set and on the test set;
3. picks the operating point on the validation slice only (fewest spikes per neuron
   whose validation accuracy loss is within the tolerance);
4. converts the model there with :func:`fs_hw.convert.from_torch`, runs the reference
   backend (float64, fast mode) on the full test set, and predicts Loihi's accuracy
   with the Loihi integer profile where that is feasible in time;
5. writes ``fs_hw/zoo/networks/<name>.fsnet`` (with its evaluation in the metadata).

Data (all deterministic): a fixed permutation (seed 0) of the 60k train images; its
first 2000 images calibrate, the next ones validate. The zoo models were trained on
all 60k train images, so the validation slice is not unseen data; it is still never
the test set.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import platform
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

RELU_GOAL = (0.1, 0.7)  # (max accuracy loss in points, max spikes per neuron)
FITTED_GOAL = 0.5
RELU_TOL = (0.05, 1.0)  # (validation loss in points, validation flips in %) allowed when picking a point (ReLU)
FITTED_TOL = (0.25, 2.5)  # ... models with fitted codes
PERCENTILES = ("percentile:99.9", "percentile:99.99", "max")
LAYERWISE_BITS = (3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 7.0, 8.0)
LAYERWISE_LAMBDAS = (10.0, 20.0, 40.0, 80.0, 160.0, 320.0)
SEED = 0
NETWORKS_DIR = ROOT / "fs_hw" / "zoo" / "networks"
LOIHI_TOML = ROOT / "deploy_configs" / "loihi.toml"
ACC500 = 500  # images of the stored per-network check
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@dataclass
class Settings:
    quick: bool = False
    n_calib: int = 2000
    n_val_small: int = 58000  # validation images for small networks (<= SMALL FS layers, fast to run)
    n_val: int = 10000
    n_val_deep: int = 5000  # validation images for networks deeper than DEEP layers
    n_test: int | None = None  # None: all 10k
    Ks: tuple[int, ...] = (3, 4, 5, 6, 7, 8)
    Ks_deep: tuple[int, ...] = (4, 5, 6, 7, 8)
    layerwise_images: int = 1000
    layerwise_images_deep: int = 500
    loihi_images: int | None = None  # None: all test images
    loihi_images_deep: int = 2000
    batch: int = 128  # twin and ANN batch (small batches are faster on CPU)
    ref_batch: int = 100
    threads: int = 2

    @classmethod
    def make(cls, quick: bool, threads: int) -> Settings:
        if not quick:
            return cls(threads=threads)
        return cls(quick=True, n_calib=500, n_val_small=1000, n_val=1000, n_val_deep=500, n_test=1000,
                   Ks=(4, 6), Ks_deep=(4, 6),
                   layerwise_images=200, layerwise_images_deep=100, loihi_images=300, loihi_images_deep=100,
                   threads=threads)


DEEP = 8  # ReLU layers above which a network counts as deep (smaller validation set, fewer K)
SMALL = (4, 10000)  # at most this many FS layers and FS neurons: small (validated on all other train images)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -------------------------------------------------------------------------------------------
# data


def load_data(settings: Settings) -> dict[str, np.ndarray]:
    from fs_hw.data import load_dataset

    x_train, y_train = load_dataset("fashion-mnist", "train")
    x_test, y_test = load_dataset("fashion-mnist", "test")
    perm = np.random.default_rng(SEED).permutation(len(x_train))
    cal = perm[: settings.n_calib]
    val = perm[settings.n_calib: settings.n_calib + max(settings.n_val_small, settings.n_val, settings.n_val_deep)]
    n_test = len(x_test) if settings.n_test is None else settings.n_test
    return {
        "x_cal": x_train[cal], "y_cal": y_train[cal],
        "x_val": x_train[val], "y_val": y_train[val],
        "x_test": x_test[:n_test], "y_test": y_test[:n_test],
        "cal_indices": cal, "val_indices": val,
    }


# -------------------------------------------------------------------------------------------
# one model


@dataclass
class Point:
    """One candidate operating point and its twin measurements."""

    method: str  # "percentile" | "layerwise" | "code"
    policy: str  # alpha policy description
    K: int
    alphas: dict[str, float]
    val_loss: float = math.nan
    val_flip: float = math.nan
    test_loss: float = math.nan
    spikes_per_neuron: float = math.nan  # on the validation slice
    test_spikes_per_neuron: float = math.nan
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {"method": self.method, "policy": self.policy, "K": self.K, "val_loss": self.val_loss,
                "val_flip": self.val_flip, "test_loss": self.test_loss,
                "spikes_per_neuron": self.spikes_per_neuron, "test_spikes_per_neuron": self.test_spikes_per_neuron}


def ann_accuracy(model: Any, x: np.ndarray, y: np.ndarray, batch: int = 500) -> tuple[float, np.ndarray]:
    import torch

    preds = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            preds.append(model(torch.as_tensor(x[i:i + batch])).argmax(1).numpy())
    p = np.concatenate(preds)
    return 100.0 * float((p == y).mean()), p


def candidates(twin: Any, data: dict, settings: Settings, name: str) -> list[Point]:
    """The candidate list of one model (without measurements)."""
    from fs_hw.codes import published_codes, shipped_codes

    if twin.functions:  # fitted codes: K is set by the codes that exist
        ks = None
        for fn in twin.functions:
            have = {c.K for c in list(shipped_codes().values()) + list(published_codes().values())
                    if c.provenance is not None and c.provenance.function == fn}
            ks = have if ks is None else ks & have
        ks = sorted(ks or [])
        if settings.quick:
            ks = ks[-1:]
        alphas = twin.alphas("percentile:99.9") if twin.relu_layers else {}
        return [Point("code", "fitted codes" + (" + percentile:99.9" if alphas else ""), k, alphas) for k in ks]
    deep = len(twin.relu_layers) > DEEP
    Ks = settings.Ks_deep if deep else settings.Ks
    points = []
    for policy in PERCENTILES:
        if deep and policy == "max" and not settings.quick:
            Ks_here = tuple(k for k in Ks if k >= 5)
        else:
            Ks_here = Ks
        for K in Ks_here:
            points.append(Point("percentile", policy, K, twin.alphas(policy)))
    return points


def measure(twin: Any, point: Point, data: dict, ann_val: np.ndarray, ann_test: np.ndarray,
            acc_val: float, acc_test: float, settings: Settings, x_val: np.ndarray, y_val: np.ndarray) -> None:
    logits, spikes = twin.run(x_val, point.K, point.alphas, batch_size=settings.batch)
    p = logits.argmax(1)
    point.val_loss = acc_val - 100.0 * float((p == y_val).mean())
    point.val_flip = 100.0 * float((p != ann_val).mean())
    point.spikes_per_neuron = twin.spikes_per_neuron(spikes, len(x_val))
    logits, spikes = twin.run(data["x_test"], point.K, point.alphas, batch_size=settings.batch)
    p = logits.argmax(1)
    point.test_loss = acc_test - 100.0 * float((p == data["y_test"]).mean())
    point.test_spikes_per_neuron = twin.spikes_per_neuron(spikes, len(data["x_test"]))
    point.extra["test_predictions"] = p


def evaluate_model(name: str, data: dict, settings: Settings, *, write_network: Path | None = None,
                   loihi: bool = True, layerwise: bool = True) -> dict[str, Any]:
    """Everything the results table says about one zoo model (see the module docstring)."""
    import torch

    from fs_hw import zoo
    from fs_hw.convert import from_torch
    from fs_hw.convert.search import FSTwin, layer_table, layerwise_alphas, select
    from fs_hw.ir import save_network
    from fs_hw.reference.simulator import run_reference

    t_model = time.perf_counter()
    model = zoo.load(name)
    x_cal, x_test, y_test = data["x_cal"], data["x_test"], data["y_test"]
    acc_test, ann_test = ann_accuracy(model, x_test, y_test)
    twin = FSTwin(model, x_cal[:2], x_cal)
    deep = len(twin.relu_layers) > DEEP
    small = len(twin.acts) <= SMALL[0] and sum(twin.neurons.values()) <= SMALL[1]
    n_val = settings.n_val_deep if deep else (settings.n_val_small if small else settings.n_val)
    x_val, y_val = data["x_val"][:n_val], data["y_val"][:n_val]
    acc_val, ann_val = ann_accuracy(model, x_val, y_val)
    log(f"{name}: ANN test {acc_test:.2f}% val {acc_val:.2f}% ({len(twin.acts)} FS layers, "
        f"{sum(twin.neurons.values())} FS neurons, {len(x_val)} validation images)")

    points = candidates(twin, data, settings, name)
    t0 = time.perf_counter()
    for i, pt in enumerate(points):
        t = time.perf_counter()
        measure(twin, pt, data, ann_val, ann_test, acc_val, acc_test, settings, x_val, y_val)
        log(f"{name}: [{i + 1}/{len(points)}] K={pt.K} {pt.policy}: val loss {pt.val_loss:+.2f} "
            f"(flips {pt.val_flip:.2f}%), test loss {pt.test_loss:+.2f}, {pt.spikes_per_neuron:.3f} spikes/neuron "
            f"({time.perf_counter() - t:.0f} s)")
    if layerwise and twin.relu_layers and not twin.functions:
        n_lw = settings.layerwise_images_deep if deep else settings.layerwise_images
        x_lw = data["x_cal"][:n_lw]
        base = twin.alphas("percentile:99.99")
        total = len(twin.relu_layers) * len(LAYERWISE_BITS)
        done = [0]
        t = time.perf_counter()

        def tick():
            done[0] += 1
            if done[0] % max(1, total // 4) == 0 or done[0] == total:
                log(f"{name}: layer-wise table {done[0]}/{total} ({time.perf_counter() - t:.0f} s)")

        table = layer_table(twin, x_lw, base, LAYERWISE_BITS, progress=tick)
        seen = set()
        for lam in LAYERWISE_LAMBDAS:
            K, alphas, bits = layerwise_alphas(twin, table, base, lam)
            key = tuple(sorted(bits.items()))
            if key in seen:
                continue
            seen.add(key)
            pt = Point("layerwise", f"layer-wise grids (lambda={lam:g})", K, alphas, extra={"bits": bits})
            t = time.perf_counter()
            measure(twin, pt, data, ann_val, ann_test, acc_val, acc_test, settings, x_val, y_val)
            points.append(pt)
            log(f"{name}: layer-wise lambda={lam:g} K={K}: val loss {pt.val_loss:+.2f}, test loss {pt.test_loss:+.2f}, "
                f"{pt.spikes_per_neuron:.3f} spikes/neuron ({time.perf_counter() - t:.0f} s)")
    t_search = time.perf_counter() - t0

    tol = FITTED_TOL if twin.functions else RELU_TOL
    chosen = select([{**p.row(), "i": i} for i, p in enumerate(points)], *tol)
    op = points[chosen["i"]]
    log(f"{name}: chosen on validation: K={op.K} {op.policy} (val loss {op.val_loss:+.2f}, "
        f"{op.spikes_per_neuron:.3f} spikes/neuron)")

    # the operating point, converted and run on the reference backend (float64)
    t = time.perf_counter()
    policy_arg: Any = dict(op.alphas) if op.alphas else "percentile:99.9"
    net = from_torch(model, x_cal[:2], x_cal, K=op.K, alpha_policy=policy_arg, name=name,
                     metadata={"dataset": "fashion-mnist", "zoo_model": name, "ann_test_accuracy": acc_test / 100.0,
                               "classes": CLASSES,
                               "description": f"zoo {name} on Fashion-MNIST, FS-converted at the operating point "
                                              "chosen by scripts/make_results.py"})
    t_convert = time.perf_counter() - t
    t = time.perf_counter()
    res = run_reference(net, x_test, "fast", batch_size=settings.ref_batch, library="torch")
    t_ref = time.perf_counter() - t
    fs_acc = 100.0 * float((res.predictions == y_test).mean())
    inp = net.input.name
    hidden = {k: v for k, v in res.neurons.items() if k != inp}
    per_layer = {k: float(res.spike_counts[k].mean()) / hidden[k] for k in hidden}
    spikes_img = sum(float(res.spike_counts[k].mean()) for k in hidden)
    twin_agree = 100.0 * float((op.extra["test_predictions"] == res.predictions).mean())
    log(f"{name}: reference on {len(x_test)} test images: FS {fs_acc:.2f}% (ANN {acc_test:.2f}%), "
        f"{res.spikes_per_neuron(input_name=inp):.3f} spikes/neuron, twin agrees on {twin_agree:.2f}% "
        f"({t_ref:.0f} s)")

    out: dict[str, Any] = {
        "name": name, "ann": acc_test, "ann_val": acc_val, "fs": fs_acc, "loss": acc_test - fs_acc, "K": op.K,
        "policy": op.policy, "method": op.method, "val_loss": op.val_loss, "val_flip": op.val_flip,
        "tolerance": tol, "spikes_per_neuron": res.spikes_per_neuron(input_name=inp),
        "neurons": int(sum(hidden.values())), "spikes_per_image": spikes_img, "time_steps": int(res.time_steps),
        "per_layer": per_layer, "twin_agreement": twin_agree, "n_test": len(x_test), "n_val": len(x_val),
        "alphas": op.alphas, "points": [p.row() for p in points], "chosen_index": chosen["i"],
        "times": {"convert_s": t_convert, "reference_s": t_ref, "search_s": t_search},
        "zoo_test_accuracy": zoo.metadata(name).get("test_accuracy"),
        "layers": len(twin.acts),
    }
    if op.method == "layerwise":
        out["bits"] = op.extra["bits"]

    if loihi:
        out["loihi"] = loihi_prediction(net, x_test, y_test, res.predictions, settings, deep)
    acc500 = 100.0 * float((res.predictions[:ACC500] == y_test[:ACC500]).mean()) if len(x_test) >= ACC500 else None
    out["acc500"] = acc500
    if write_network is not None:
        meta = dict(net.metadata)
        meta["evaluation"] = {
            "dataset": "fashion-mnist test",
            "first_500_accuracy": acc500,
            "test_accuracy": fs_acc,
            "test_images": len(x_test),
            "ann_test_accuracy": acc_test,
            "spikes_per_neuron": out["spikes_per_neuron"],
            "backend": "reference (fast, float64)",
        }
        meta["operating_point"] = {
            "method": op.method, "policy": op.policy, "K": op.K,
            "chosen_by": f"fewest spikes per neuron with validation accuracy loss <= {tol[0]} points and "
                         f"flips <= {tol[1]} % "
                         f"({len(x_val)} train images held out from calibration)",
            "validation_loss": op.val_loss, "script": "scripts/make_results.py",
        }
        net = net.replace(metadata=meta)
        write_network.parent.mkdir(parents=True, exist_ok=True)
        save_network(net, write_network, overwrite=True)  # this script owns these files
        out["network_file"] = str(write_network.relative_to(ROOT)) if write_network.is_relative_to(ROOT) \
            else str(write_network)
    out["times"]["total_s"] = time.perf_counter() - t_model
    del torch
    return out


def loihi_prediction(net: Any, x: np.ndarray, y: np.ndarray, fs_pred: np.ndarray, settings: Settings,
                     deep: bool) -> dict[str, Any]:
    """Accuracy under Loihi's quantization: the reference in Loihi's integer profile."""
    try:
        from fs_hw_loihi.backend import LoihiBackend
    except ImportError as e:
        return {"status": f"fs-hw-loihi not installed ({e})"}
    from fs_hw.errors import FSHWError
    from fs_hw.reference.simulator import run_reference

    cfg = tomllib.loads(LOIHI_TOML.read_text()).get("target", {})
    n = settings.loihi_images_deep if deep else settings.loihi_images
    n = len(x) if n is None else min(n, len(x))
    t = time.perf_counter()
    try:
        # what fs-deploy does: ranges measured on training images of the network's data set
        q = LoihiBackend().quantize(net, cfg)
        inet, prof, notes = q.network, q.profile, q.notes
    except FSHWError as e:
        log(f"Loihi profile refused: {e}")
        return {"status": f"profile refused: {type(e).__name__}: {e}"}
    t_prof = time.perf_counter() - t
    t = time.perf_counter()
    r = run_reference(inet, x[:n], "fast", profile=prof, batch_size=250)
    t_run = time.perf_counter() - t
    acc = 100.0 * float((r.predictions == y[:n]).mean())
    fs_sub = 100.0 * float((fs_pred[:n] == y[:n]).mean())
    agree = 100.0 * float((r.predictions == fs_pred[:n]).mean())
    log(f"Loihi-profile prediction on {n} images: {acc:.2f}% (float FS {fs_sub:.2f}% on the same images, "
        f"agreement {agree:.2f}%; profile {t_prof:.0f} s, int64 run {t_run:.0f} s)")
    return {"status": "ok", "accuracy": acc, "images": n, "fs_same_images": fs_sub, "agreement": agree,
            "profile_s": t_prof, "run_s": t_run, "s_per_10k": t_run / n * 10000, "notes": len(notes),
            "coarsened": [s for s in notes if s.startswith("membrane range")]}


# -------------------------------------------------------------------------------------------
# plots and the document


def pareto(points: list[dict], key: str = "test_loss", spk: str = "test_spikes_per_neuron") -> list[int]:
    order = sorted(range(len(points)), key=lambda i: (points[i][spk], points[i][key]))
    best, out = math.inf, []
    for i in order:
        if points[i][key] < best - 1e-12:
            out.append(i)
            best = points[i][key]
    return out


def plots(results: list[dict], img: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img.mkdir(parents=True, exist_ok=True)
    files = {}
    # accuracy vs K
    n = len(results)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, r in zip(axes.flat, results):
        by = {}
        for p in r["points"]:
            if p["method"] in ("percentile", "code"):
                by.setdefault(p["policy"], []).append(p)
        for pol, pts in by.items():
            pts = sorted(pts, key=lambda p: p["K"])
            ax.plot([p["K"] for p in pts], [r["ann"] - p["test_loss"] for p in pts], "o-", label=pol, ms=4)
        ax.axhline(r["ann"], color="k", ls="--", lw=1, label="ANN")
        ax.plot([r["K"]], [r["fs"]], "r*", ms=12, label="chosen (reference)")
        ax.set_title(r["name"])
        ax.set_xlabel("K")
        ax.set_ylabel("test accuracy (%)")
        lo = min(r["ann"] - p["test_loss"] for p in r["points"])
        ax.set_ylim(max(lo, r["ann"] - 5) - 0.2, r["ann"] + 0.5)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    files["k"] = "img/results_accuracy_vs_k.png"
    fig.savefig(img / "results_accuracy_vs_k.png", dpi=90)
    plt.close(fig)

    # spikes per layer of the deepest model
    deepest = max(results, key=lambda r: (r["layers"], r["neurons"]))
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(deepest["per_layer"])), 3.6))
    names = list(deepest["per_layer"])
    ax.bar(range(len(names)), [deepest["per_layer"][k] for k in names])
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=75, fontsize=7)
    ax.axhline(deepest["spikes_per_neuron"], color="r", ls="--", lw=1, label="network mean")
    ax.set_ylabel("spikes per neuron")
    ax.set_title(f"{deepest['name']}: spikes per layer (K={deepest['K']}, {deepest['policy']}, test set)")
    ax.legend()
    fig.tight_layout()
    files["layers"] = "img/results_spikes_per_layer.png"
    files["layers_model"] = deepest["name"]
    fig.savefig(img / "results_spikes_per_layer.png", dpi=90)
    plt.close(fig)

    # frontier: all points, and a zoom on the goal region
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    markers = {"percentile": "o", "layerwise": "s", "code": "^"}
    for ax, zoom in zip(axes, (False, True)):
        for j, r in enumerate(results):
            c = f"C{j}"
            for m, mk in markers.items():
                pts = [p for p in r["points"] if p["method"] == m]
                if pts:
                    ax.scatter([p["test_spikes_per_neuron"] for p in pts], [p["test_loss"] for p in pts], c=c,
                               marker=mk, s=18, alpha=0.6)
            fr = pareto(r["points"])
            ax.plot([r["points"][i]["test_spikes_per_neuron"] for i in fr],
                    [r["points"][i]["test_loss"] for i in fr], "-", c=c, lw=1, label=r["name"])
            ax.scatter([r["spikes_per_neuron"]], [r["loss"]], c=c, marker="*", s=160, edgecolors="k", zorder=5)
        ax.axhline(RELU_GOAL[0], color="gray", ls=":", lw=1)
        ax.axvline(RELU_GOAL[1], color="gray", ls=":", lw=1)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xlabel("spikes per neuron (all hidden FS neurons, silent ones included)")
        ax.set_ylabel("accuracy loss, ANN - FS (points, test)")
        if zoom:
            ax.set_xlim(0.35, 1.6)
            ax.set_ylim(-0.25, 0.8)
            ax.set_title("zoom on the goal (dotted: 0.1 points, 0.7 spikes/neuron)")
        else:
            ax.set_ylim(-0.4, 3.0)
            ax.set_xlim(0, max(2.2, max(r["spikes_per_neuron"] for r in results) + 0.2))
            ax.set_title("o percentile x K, s layer-wise grids, ^ fitted codes; * chosen (reference)")
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    files["frontier"] = "img/results_frontier.png"
    fig.savefig(img / "results_frontier.png", dpi=90)
    plt.close(fig)
    return files


def _f(v: Any, fmt: str = ".2f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, fmt)


def write_markdown(path: Path, results: list[dict], skipped: list[str], files: dict, settings: Settings,
                   command: str, total_s: float) -> None:
    L: list[str] = []
    L.append("# Results: FS conversion of the model zoo on Fashion-MNIST")
    L.append("")
    L.append("Regenerate with (from the repository root; "
             f"{'QUICK smoke run, subsets only' if settings.quick else 'about 20 minutes on 2 cores'}):")
    L.append("")
    L.append("```sh")
    L.append(command)
    L.append("```")
    L.append("")
    L.append(f"Generated {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')} in {total_s / 60:.1f} min on "
             f"{platform.machine()}, {settings.threads} torch thread(s). Test set: "
             f"{'the full 10k' if settings.n_test is None else f'the first {settings.n_test}'} Fashion-MNIST "
             "test images. Every number in the main table comes from the converted network run on the "
             "reference backend (float64, fast mode).")
    L.append("")
    L.append("## The table")
    L.append("")
    L.append("| model | ANN (%) | FS (%) | loss (pts) | spikes/neuron | K | α policy | neurons | spikes/image | "
             "time steps | Loihi-predicted (%) |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        lo = r.get("loihi", {})
        if lo.get("status") == "ok":
            li = f"{lo['accuracy']:.2f}"
            if lo["images"] != r["n_test"]:
                li += f" ({lo['images']} imgs; FS {lo['fs_same_images']:.2f})"
        else:
            li = "n/a" + (" (†)" if lo else "")
        L.append(f"| {r['name']} | {r['ann']:.2f} | {r['fs']:.2f} | {r['loss']:+.2f} | {r['spikes_per_neuron']:.3f} | "
                 f"{r['K']} | {r['policy']} | {r['neurons']} | {r['spikes_per_image']:.0f} | {r['time_steps']} | "
                 f"{li} |")
    L.append("")
    L.append("- **loss** = ANN − FS in percentage points (negative: FS is better). **spikes/neuron** = all spikes "
             "of all hidden FS neurons divided by their number (silent neurons included) and by the number of "
             "images, as the paper counts; the input code's spikes are not counted (the paper left the input "
             "analog). **neurons** = hidden FS neurons. **time steps** = steps from the first input spike until "
             "the read-out is complete (stages × K).")
    L.append("- **α policy**: `percentile:p` = each ReLU layer's α is the p-th percentile of its positive "
             "pre-activations on the calibration images; `max` = the largest; `layer-wise grids` = the per-layer "
             "allocation of `fs_hw.convert.search` (each layer's grid chosen from a table of output KL divergence "
             "vs. spikes, trade-off λ); `fitted codes` = the shipped fitted swish/sigmoid code of that K. "
             "Half-step offsets are on everywhere.")
    L.append("- **Loihi-predicted**: the reference run on `LoihiBackend().quantize(network, "
             "deploy_configs/loihi.toml [target])` (per-step weights, membrane ranges from 200 training images) "
             "in its int64 profile, which predicts the chip bit for bit. "
             "Where fewer images were used (the int64 convolutions are slow), the float FS accuracy on the "
             "same images is given next to it.")
    notes_l = [(r["name"], r["loihi"]["status"]) for r in results
               if r.get("loihi", {}).get("status") not in (None, "ok")]
    for n, s in notes_l:
        L.append(f"- † {n}: {s}")
    coarse = [(r["name"], r["loihi"]["coarsened"]) for r in results if r.get("loihi", {}).get("coarsened")]
    for n, c in coarse:
        L.append(f"- {n} on Loihi: {c[0]}")
    for s in skipped:
        L.append(f"- skipped: {s}")
    L.append("")
    L.append("### Goals (issue 4)")
    L.append("")
    L.append(f"ReLU models: loss ≤ {RELU_GOAL[0]} points at ≤ {RELU_GOAL[1]} spikes per neuron; swish network: "
             f"loss ≤ {FITTED_GOAL} points.")
    L.append("")
    L.append("| model | goal | chosen point | met? | best test point on the frontier within the loss goal |")
    L.append("|---|---|---|---|---|")
    for r in results:
        fitted = r["method"] == "code"
        goal = f"≤ {FITTED_GOAL} pts" if fitted else f"≤ {RELU_GOAL[0]} pts at ≤ {RELU_GOAL[1]} spk/n"
        relu_met = r["loss"] <= RELU_GOAL[0] and r["spikes_per_neuron"] <= RELU_GOAL[1]
        met = (r["loss"] <= FITTED_GOAL) if fitted else relu_met
        lim = FITTED_GOAL if fitted else RELU_GOAL[0]
        ok = [p for p in r["points"] if p["test_loss"] <= lim]
        best = min(ok, key=lambda p: p["test_spikes_per_neuron"]) if ok else None
        bs = (f"{best['test_spikes_per_neuron']:.3f} spk/n, loss {best['test_loss']:+.2f} (K={best['K']}, "
              f"{best['policy']}; twin)") if best else "none"
        L.append(f"| {r['name']} | {goal} | {r['loss']:+.2f} pts at {r['spikes_per_neuron']:.3f} spk/n | "
                 f"{'yes' if met else 'no'} | {bs} |")
    L.append("")
    L.append("The last column looks at the *test* set and is not a fair operating point (chosen on test); it "
             "shows how far the frontier reaches, given the ±0.1-point noise of a 10k test set (one image = "
             "0.01 points; FS and ANN disagree on 0.5–2 % of the images at these spike counts, and those "
             "flips go both ways).")
    L.append("")
    L.append("## How the operating point is chosen")
    L.append("")
    L.append(f"- Calibration: {settings.n_calib} train images (a fixed permutation of the train set, seed {SEED}, "
             "first images). They set every α (the percentile policies) and the input code's range.")
    L.append(f"- Validation: the next train images of that permutation: {settings.n_val_small} (all the others) for "
             f"the small networks (≤ {SMALL[0]} FS layers and ≤ {SMALL[1]} FS neurons), {settings.n_val} for the "
             f"others and {settings.n_val_deep} for networks with more than {DEEP} ReLU layers. "
             "The zoo was trained on all 60k train images, so this "
             "slice is not unseen data; it is never the test set.")
    L.append(f"- Candidates: ReLU networks: K ∈ {list(settings.Ks)} ({list(settings.Ks_deep)} for deep ones) × "
             f"α policy ∈ {list(PERCENTILES)}, plus layer-wise grids for λ ∈ {list(LAYERWISE_LAMBDAS)}; networks "
             "with fitted codes: every K a shipped code exists for. Each candidate is measured with the float32 FS "
             "twin (`fs_hw.convert.search.FSTwin`: the converter's own graph and α, FS codes in torch).")
    L.append(f"- Choice: the fewest spikes per neuron (on validation) among candidates whose validation accuracy "
             f"loss is ≤ {RELU_TOL[0]} points and whose predictions differ from the ANN's on ≤ {RELU_TOL[1]} % of "
             f"the validation images (ReLU networks; half the loss goal, and a cap on flips, which are far less "
             f"noisy than the loss), or ≤ {FITTED_TOL[0]} points and ≤ {FITTED_TOL[1]} % (fitted codes). "
             "If none qualifies, the smallest validation loss.")
    L.append("- The chosen point is converted with `from_torch` and run on the reference backend: those are the "
             "table's numbers, and `fs_hw/zoo/networks/<name>.fsnet` is that network (its metadata records the "
             "accuracy on the first 500 test images, checked by tests/test_results.py).")
    L.append("")
    L.append("| model | validation loss (pts) | validation flips (%) | twin/reference agreement on test (%) | "
             "search (s) | reference run (s) | model total (s) |")
    L.append("|---|---|---|---|---|---|---|")
    for r in results:
        t = r["times"]
        L.append(f"| {r['name']} | {r['val_loss']:+.2f} | {r['val_flip']:.2f} | {r['twin_agreement']:.2f} | "
                 f"{t['search_s']:.0f} | {t['reference_s']:.0f} | {t['total_s']:.0f} |")
    L.append("")
    L.append("## Plots")
    L.append("")
    L.append(f"![accuracy vs K]({files['k']})")
    L.append("")
    L.append("Test accuracy against K for each α policy (twin), the ANN (dashed) and the chosen point "
             "(red star, reference).")
    L.append("")
    L.append(f"![spikes per layer]({files['layers']})")
    L.append("")
    L.append(f"Spikes per neuron in each FS layer of {files['layers_model']} at its operating point (reference, "
             "test set).")
    L.append("")
    L.append(f"![frontier]({files['frontier']})")
    L.append("")
    L.append("## The frontier: accuracy loss against spikes per neuron")
    L.append("")
    L.append("Every evaluated candidate (twin, float32): validation loss and spikes on the validation slice, test "
             "loss and spikes on the test set. **P** marks the Pareto front on test, **→** the chosen point.")
    L.append("")
    for r in results:
        L.append(f"### {r['name']} (ANN {r['ann']:.2f} %)")
        L.append("")
        L.append("| | method | α policy | K | val loss | val flips (%) | spikes/neuron (val) | test loss | "
                 "spikes/neuron (test) |")
        L.append("|---|---|---|---|---|---|---|---|---|")
        fr = set(pareto(r["points"]))
        order = sorted(range(len(r["points"])), key=lambda i: r["points"][i]["test_spikes_per_neuron"])
        for i in order:
            p = r["points"][i]
            mark = ("→" if i == r["chosen_index"] else "") + ("P" if i in fr else "")
            L.append(f"| {mark} | {p['method']} | {p['policy']} | {p['K']} | {p['val_loss']:+.2f} | "
                     f"{p['val_flip']:.2f} | {p['spikes_per_neuron']:.3f} | {p['test_loss']:+.2f} | "
                     f"{p['test_spikes_per_neuron']:.3f} |")
        L.append("")
    L.append("## Notes")
    L.append("")
    L.append("- Spikes depend on a layer's grid s = α·2^-K, not on K itself: an unclipped input x costs "
             "popcount(round(x/s)) spikes whatever K is. K sets where the code clips (α = s·2^K), the input "
             "code's resolution and the latency (time steps = stages × K). A coarser grid is the only way to "
             "fewer spikes, and the layer-wise allocation spends the resolution where the output is sensitive.")
    L.append("- Accuracy loss and spikes meet the goal only at the edge: at about 0.7 spikes per neuron FS and "
             "ANN disagree on roughly 0.7–1 % of the images, and the net loss of those flips is about 0.1 point "
             "with a sampling noise of the same size. Validation and test losses of the same candidate differ by "
             "up to ±0.2 points (see the frontier tables).")
    L.append("- Tried during development and not kept (exploration on the twin, not regenerated here): "
             "fine-tuning the weights through the FS code (straight-through estimator, BatchNorm frozen, 1–4 epochs, "
             "SGD or Adam; LeNet at K=4: −0.68 → −0.60 points, the fine-tuned ANN itself moved by −0.14 to −0.20), "
             "an activation (spike) penalty during that fine-tuning (fewer spikes, but the ANN lost as much), "
             "per-channel bias correction of the quantization error (changes within ±0.1 point), a Fisher-weighted "
             "analytic grid allocation (worse than the measured layer-wise table), and a larger K at the same grid "
             "(same spikes, no consistent gain).")
    L.append("")
    L.append("## Per-layer α of the chosen points")
    L.append("")
    for r in results:
        if r["alphas"]:
            items = ", ".join(f"`{k}` {v:.4g}" for k, v in r["alphas"].items())
            L.append(f"- {r['name']} (K={r['K']}): {items}")
    L.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(L) + "\n")


# -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    from fs_hw.zoo import ZOO

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: small subsets, few K; writes under build/")
    ap.add_argument("--models", nargs="*", default=list(ZOO), help="zoo models (default: all)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--out", type=Path, default=None, help="results file (default docs/results.md; "
                    "build/results-quick/results.md with --quick)")
    ap.add_argument("--no-networks", action="store_true", help="do not write fs_hw/zoo/networks/*.fsnet")
    ap.add_argument("--no-loihi", action="store_true", help="skip the Loihi-profile predictions")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    settings = Settings.make(args.quick, args.threads)
    out = args.out or (ROOT / "build" / "results-quick" / "results.md" if args.quick else ROOT / "docs" / "results.md")
    out = out.resolve()
    write_nets = not args.no_networks and not args.quick
    command = ".venv/bin/python scripts/make_results.py" + (" --quick" if args.quick else "")
    if args.models != list(ZOO):
        command += " --models " + " ".join(args.models)
    if args.threads != 2:
        command += f" --threads {args.threads}"

    t0 = time.perf_counter()
    data = load_data(settings)
    log(f"data: {len(data['x_cal'])} calibration, {len(data['x_val'])} validation (train), "
        f"{len(data['x_test'])} test images; torch threads {torch.get_num_threads()}")
    from fs_hw.errors import MissingDependencyError
    from fs_hw.zoo.models import weights_paths

    results, skipped = [], []
    for name in args.models:
        npz, _ = weights_paths(name)
        if not npz.is_file():
            msg = f"{name}: weights {npz.relative_to(ROOT)} missing (train with: python scripts/train_zoo.py {name})"
            log("skip " + msg)
            skipped.append(msg)
            continue
        try:
            r = evaluate_model(name, data, settings,
                               write_network=(NETWORKS_DIR / f"{name}.fsnet") if write_nets else None,
                               loihi=not args.no_loihi)
        except MissingDependencyError as e:
            log(f"skip {name}: {e}")
            skipped.append(f"{name}: {e}")
            continue
        results.append(r)
        log(f"{name}: done in {r['times']['total_s']:.0f} s (elapsed {time.perf_counter() - t0:.0f} s)")
    if not results:
        log("no model could be evaluated")
        return 1
    files = plots(results, out.parent / "img")
    total = time.perf_counter() - t0
    write_markdown(out, results, skipped, files, settings, command, total)
    raw = ROOT / "build" / ("results-quick.json" if args.quick else "results.json")
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps({"command": command, "total_s": total, "results": results, "skipped": skipped},
                              indent=1, default=float) + "\n")
    log(f"wrote {out} ({total / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`ptray landscape RESULT_DIR`: the cross-entropy surface around a trained prompt, as in the PTP paper's figure.

The loss L(θ + a·d1 + b·d2) is evaluated on a grid of (a, b), where θ is the trained prompt (the method's trainable
tensors; an encoder's head stays as trained) and d1, d2 are two directions:

* `gradient`: d1 along the loss gradient at θ, d2 a seeded random direction orthogonal to it; both scaled to the norm
  of θ, so a = 1 moves the prompt by its own length.
* `random`: two seeded random directions, filter-normalised (Li et al., 2018): each prompt vector's slice of a
  direction has that vector's norm, so the picture does not depend on the prompt's scale.

The single number for comparing methods is the mean loss increase over the grid points within `radius` of θ:
mean(L(θ + a·d1 + b·d2) - L(θ)) over a² + b² <= radius². Flatter surroundings give a smaller number.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ptray.layout import ADAPTER_FILE, LANDSCAPE_DIR, LANDSCAPE_FILE, RESULT_FILE, write_json

SPLITS = ("train", "selection", "report")
DIRECTIONS = ("gradient", "random")


def check_args(result_dir: Path, directions: str, points: int, span: float, radius: float, split: str) -> dict:
    """Every check that needs no model, so a typo fails in a second. Returns the result.json."""
    from ptray.core.export import trained_result

    result = trained_result(result_dir, "look around")
    if directions not in DIRECTIONS:
        raise ValueError(f"directions {directions!r}: allowed {', '.join(DIRECTIONS)}")
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: allowed {', '.join(SPLITS)}")
    if points < 3 or points % 2 == 0:
        raise ValueError(f"points {points}: give an odd number >= 3, so the grid passes through the trained prompt")
    if not span > 0:
        raise ValueError(f"span {span}: must be > 0 (the grid covers [-span, span] along both directions)")
    if not 0 < radius <= span:
        raise ValueError(f"radius {radius}: must be in (0, span={span}]; the mean loss increase is taken within it")
    spacing = 2 * span / (points - 1)
    if radius < spacing:
        raise ValueError(f"radius {radius} holds no grid point but the trained prompt (grid spacing {spacing:g}): "
                         f"raise radius or points")
    return result


def landscape(result_dir: str | Path, directions: str = "gradient", points: int = 11, span: float = 1.0,
              radius: float = 0.5, split: str = "train", max_examples: int | None = None, seed: int = 0,
              out_dir: str | Path | None = None, data_dir: str | None = None, progress: bool = True) -> dict:
    """Evaluate the loss surface around the prompt of one trained seed; write landscape.json and landscape.png."""
    import torch
    from tqdm.auto import tqdm
    from safetensors.torch import load_file

    from ptray.config import config_from_dict
    from ptray.core.data import batches
    from ptray.core.loop import loss_fn
    from ptray.core.train import load_model, prepare, seed_everything

    result_dir = Path(result_dir)
    result = check_args(result_dir, directions, points, span, radius, split)
    config = result["config"]
    if data_dir is not None:
        config = {**config, "task": {**config["task"], "data_dir": data_dir}}
    cfg = config_from_dict(config, str(result_dir / RESULT_FILE))
    p = prepare(cfg)
    seed_everything(cfg.source_seeds()["init"])  # the head as training built it
    model, encoder, data = load_model(cfg, p)
    state = load_file(str(result_dir / ADAPTER_FILE))
    trainable = {k for k, v in model.named_parameters() if v.requires_grad}
    if set(state) != trainable:
        raise ValueError(
            f"{result_dir}/{ADAPTER_FILE} holds {sorted(state)}, but method {cfg.method.name!r} trains "
            f"{sorted(trainable)}: this method saves its prompt in another form, which the landscape cannot restore"
        )
    model.load_trainable_state(state)
    model.eval()

    items = data[split][:max_examples]
    device = p.device
    pad_id = encoder.tokenizer.pad_token_id
    batch_list = [{k: v.to(device) for k, v in b.items()}
                  for _, b in batches(items, cfg.train.eval_batch_size, pad_id)]
    n = sum(b["labels"].shape[0] for b in batch_list)

    def total_loss() -> torch.Tensor:
        # Mean over examples (batches may differ in size).
        return sum(loss_fn(model, b) * b["labels"].shape[0] for b in batch_list) / n

    params = [v for k, v in model.named_parameters() if v.requires_grad and k.startswith("method.")]
    theta = [v.detach().clone() for v in params]
    gen = torch.Generator().manual_seed(seed)
    if directions == "gradient":
        model.zero_grad(set_to_none=True)
        total_loss().backward()
        d1 = [v.grad.detach().clone() for v in params]
        d2 = [torch.randn(v.shape, generator=gen).to(v) for v in params]
        # Gram-Schmidt: d2 without its component along d1.
        coef = _dot(d2, d1) / _dot(d1, d1)
        d2 = [b - coef * a for a, b in zip(d1, d2)]
        norm = math.sqrt(_dot(theta, theta))
        d1, d2 = ([x * (norm / math.sqrt(_dot(d, d))) for x in d] for d in (d1, d2))
    else:
        d1, d2 = ([_filter_normalised(torch.randn(v.shape, generator=gen).to(v), v) for v in theta] for _ in range(2))

    coords = np.linspace(-span, span, points)
    losses = np.empty((points, points))
    grid = [(i, j) for i in range(points) for j in range(points)]
    with torch.no_grad():
        # points^2 full passes over the split: minutes on a CPU, so say how far it is (on stderr).
        for i, j in tqdm(grid, desc=f"landscape {points}x{points} on {n} {split} examples", unit="point",
                         disable=not progress):
            for v, t, x, y in zip(params, theta, d1, d2):
                v.copy_(t + float(coords[i]) * x + float(coords[j]) * y)
            losses[i, j] = float(total_loss())
        for v, t in zip(params, theta):
            v.copy_(t)

    center = losses[points // 2, points // 2]
    aa, bb = np.meshgrid(coords, coords, indexing="ij")
    inside = aa ** 2 + bb ** 2 <= radius ** 2 + 1e-12
    out = {
        "result_dir": str(result_dir), "seed": result["seed"], "method": cfg.method.name,
        "config_id": result.get("config_id"), "label": result.get("label"),
        "directions": directions, "split": split, "n_examples": n, "span": span, "points": points,
        "radius": radius, "grid": coords.tolist(), "loss": losses.tolist(), "center_loss": float(center),
        "mean_loss_increase": float(np.mean(losses[inside] - center)), "n_inside": int(inside.sum()),
        "prompt_norm": math.sqrt(_dot(theta, theta)),
    }
    path = (Path(out_dir) if out_dir is not None else result_dir / LANDSCAPE_DIR) / LANDSCAPE_FILE
    write_json(path, out)
    out["png"] = str(plot_landscape(out, path.with_suffix(".png")))
    return out


def plot_landscape(d: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    coords, loss = np.asarray(d["grid"]), np.asarray(d["loss"])
    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    # Rows of `loss` follow d1 (x axis), so transpose for contourf's [y, x] layout.
    cs = ax.contourf(coords, coords, loss.T, levels=20, cmap="viridis")
    ax.contour(coords, coords, loss.T, levels=cs.levels, colors="white", linewidths=0.3, alpha=0.5)
    fig.colorbar(cs, ax=ax, label=f"cross-entropy ({d['split']}, {d['n_examples']} examples)")
    ax.plot([0], [0], marker="*", color="red", markersize=12, label=f"trained prompt (loss {d['center_loss']:.3f})")
    ax.add_patch(plt.Circle((0, 0), d["radius"], fill=False, linestyle="--", color="white",
                            label=f"radius {d['radius']}: mean increase {d['mean_loss_increase']:.3f}"))
    if d["directions"] == "gradient":
        ax.set_xlabel("gradient direction (× prompt norm)")
        ax.set_ylabel("orthogonal direction (× prompt norm)")
    else:
        ax.set_xlabel("random direction 1 (filter-normalised)")
        ax.set_ylabel("random direction 2 (filter-normalised)")
    ax.set_aspect("equal")
    ax.set_title(f"{d['method']}, seed {d['seed']}: loss around the trained prompt", fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=7, ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)
    return path


def _dot(xs, ys) -> float:
    return float(sum((x.double() * y.double()).sum() for x, y in zip(xs, ys)))


def _filter_normalised(d, theta):
    """Scale each vector along the last axis (one prompt token) of `d` to the norm of the same vector of `theta`."""
    return d * (theta.norm(dim=-1, keepdim=True) / d.norm(dim=-1, keepdim=True).clamp(min=1e-12))

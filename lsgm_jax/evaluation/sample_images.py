"""Pictures of samples: a PNG grid for images, a scatter plot for 2-D data."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image


def image_grid(images: np.ndarray, *, centered: bool = True, max_images: int = 256,
               pad: int = 1) -> np.ndarray:
  """Tiles NHWC images into one uint8 HxWxC grid (as square as possible).

  Args:
    images: [N, H, W, C] floats in [-1, 1] (``centered``) or [0, 1].
    centered: the data range.
    max_images: at most this many are shown.
    pad: pixels between tiles.
  Returns:
    uint8 array [rows*(H+pad)+pad, cols*(W+pad)+pad, C].
  """
  images = np.asarray(images[:max_images], np.float32)
  if centered:
    images = (images + 1.0) / 2.0
  images = np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8)
  n, h, w, c = images.shape
  cols = int(math.ceil(math.sqrt(n)))
  rows = int(math.ceil(n / cols))
  grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
  for i in range(n):
    r, k = divmod(i, cols)
    y, x = pad + r * (h + pad), pad + k * (w + pad)
    grid[y:y + h, x:x + w] = images[i]
  return grid


def save_image_grid(images: np.ndarray, path: str, *, centered: bool = True,
                    upscale: int = 0) -> None:
  """Writes the grid of ``images`` as PNG; small images are upscaled for viewing."""
  grid = image_grid(images, centered=centered)
  if grid.shape[-1] == 1:
    grid = grid[..., 0]
  img = Image.fromarray(grid)
  if upscale == 0:
    upscale = max(1, 256 // max(images.shape[1], 1) // 2)
  if upscale > 1:
    img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
  img.save(path)


def save_scatter(samples: np.ndarray, path: str, reference: np.ndarray | None = None,
                 title: str = "") -> None:
  """Scatter plot of 2-D samples, beside held-out data when ``reference`` is given."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  panels = [("samples", samples)] if reference is None else [
      ("held-out data", reference), ("samples", samples)]
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
  points = np.concatenate([p for _, p in panels])
  lo, hi = np.percentile(points, 0.5, axis=0), np.percentile(points, 99.5, axis=0)
  margin = 0.1 * (hi - lo)
  for ax, (name, pts) in zip(axes[0], panels):
    ax.scatter(pts[:, 0], pts[:, 1], s=1.5, alpha=0.5, color="tab:blue" if name == "samples"
               else "tab:gray")
    ax.set_title(f"{name} (n={len(pts)})")
    ax.set_xlim(lo[0] - margin[0], hi[0] + margin[0])
    ax.set_ylim(lo[1] - margin[1], hi[1] + margin[1])
    ax.set_aspect("equal")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def save_figure(samples: np.ndarray, path: str, *, data_info, reference=None,
                data_centered: bool = True) -> None:
  """A scatter plot for 2-D data, else an image grid."""
  if data_info.is_2d:
    save_scatter(samples, path, reference=reference)
  else:
    save_image_grid(samples, path, centered=data_centered)

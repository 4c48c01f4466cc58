"""Figure plumbing shared by the visualizations: image grids of a known pixel size, PNG and array output.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas (no pyplot, no global state,
no display needed). A grid figure is exactly ``grid_size_px(rows, cols, panel_px, note_lines)`` pixels:

    width  = cols * (panel_px + GAP_PX) + GAP_PX
    height = TITLE_PX + rows * (panel_px + GAP_PX) + note_lines * NOTE_LINE_PX
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch.utils.data import Dataset

DPI = 100
GAP_PX = 4  # between panels and around the grid
TITLE_PX = 34  # band above the grid: up to two lines of column title
NOTE_LINE_PX = 15  # one line of the explanatory note under the grid
TITLE_PT, NOTE_PT = 9, 8
GREY = 0.5  # fill of hidden patches, in [0, 1] pixel space


def to_pixels(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo ``Normalize(mean, std)``: images [N, C, H, W] -> displayable pixels [N, C, H, W] in [0, 1]."""
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images * std_t + mean_t).clamp(0.0, 1.0)


def evenly_spaced_images(dataset: Dataset, count: int) -> torch.Tensor:
    """``count`` images [count, C, H, W] spread evenly over ``dataset`` (deterministic).

    Spreading rather than taking the first ones shows several classes of a class-sorted ImageFolder.
    """
    if count < 1:
        raise ValueError(f"the number of images must be positive, got {count}")
    total = len(dataset)
    if total == 0:
        raise ValueError("the dataset is empty")
    count = min(count, total)
    index = torch.linspace(0, total - 1, count).round().long().tolist()
    return torch.stack([dataset[i][0] for i in index])


def note_lines(note: str | None, width_px: int) -> list[str]:
    """The note wrapped to the figure width (about 0.6 em per character)."""
    if not note:
        return []
    chars = max(20, int(width_px / (NOTE_PT * DPI / 72 * 0.6)))
    return [line for paragraph in note.split("\n") for line in textwrap.wrap(paragraph, chars)]


def grid_size_px(rows: int, cols: int, panel_px: int, num_note_lines: int = 0) -> tuple[int, int]:
    """(width, height) in pixels of an :func:`image_grid` figure."""
    width = cols * (panel_px + GAP_PX) + GAP_PX
    height = TITLE_PX + rows * (panel_px + GAP_PX) + num_note_lines * NOTE_LINE_PX
    return width, height


def image_grid(
    columns: Sequence[torch.Tensor | np.ndarray],
    titles: Sequence[str],
    panel_px: int = 128,
    note: str | None = None,
) -> Figure:
    """A grid of images, one column per entry of ``columns`` (each [rows, 3, H, W] in [0, 1]).

    Every panel is a ``panel_px`` square (images are scaled with nearest-neighbour interpolation, so
    patches stay sharp); ``titles`` head the columns; ``note`` is wrapped under the grid.
    """
    if len(columns) != len(titles):
        raise ValueError(f"{len(columns)} columns but {len(titles)} titles")
    if panel_px < 16:
        raise ValueError(f"panel_px must be at least 16, got {panel_px}")
    rows, cols = len(columns[0]), len(columns)
    width, _ = grid_size_px(rows, cols, panel_px)
    lines = note_lines(note, width)
    width, height = grid_size_px(rows, cols, panel_px, len(lines))
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    # one font size for all titles, shrunk until the longest title line fits its panel (~0.6 em per character)
    longest = max(len(line) for title in titles for line in title.split("\n"))
    title_pt = min(TITLE_PT, max(6.0, (panel_px + GAP_PX) / (0.6 * longest) * 72 / DPI))
    for c, (column, title) in enumerate(zip(columns, titles, strict=True)):
        left = GAP_PX + c * (panel_px + GAP_PX)
        fig.text(
            (left + panel_px / 2) / width,
            1 - TITLE_PX / 2 / height,
            title,
            ha="center",
            va="center",
            fontsize=title_pt,
            linespacing=1.1,
        )
        for r in range(rows):
            top = TITLE_PX + r * (panel_px + GAP_PX)
            ax = fig.add_axes((left / width, 1 - (top + panel_px) / height, panel_px / width, panel_px / height))
            image = column[r]
            image = image.detach().float().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
            ax.imshow(np.clip(image.transpose(1, 2, 0), 0.0, 1.0), interpolation="nearest")
            ax.set_axis_off()
    for i, line in enumerate(lines):
        y = height - (len(lines) - i - 0.5) * NOTE_LINE_PX
        fig.text(GAP_PX / width, 1 - y / height, line, ha="left", va="center", fontsize=NOTE_PT, color="0.25")
    return fig


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG of exactly its pixel size (no tight bounding box), creating folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=fig.dpi, format="png", facecolor=fig.get_facecolor())
    return path


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render ``fig`` to an RGB array [H, W, 3] uint8 (for loggers such as TensorBoard)."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()

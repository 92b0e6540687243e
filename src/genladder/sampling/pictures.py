"""Pictures of samples: the class grid (grid.png) and the generation animation (process.gif).

Every picture tensor here is float RGB in [0, 1], shape (..., 3, H, W); grayscale data is
repeated over the three channels. Images are upscaled with nearest-neighbour interpolation
so that single pixels stay visible.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from genladder.runtime import atomic_path

MAX_FRAMES = 60
GRID_COLUMNS = 10  # samples per class shown in grid.png
GRID_MIN_SIDE = 64  # grid.png cells are upscaled to at least this many pixels
GIF_MIN_SIDE = 48  # smaller in process.gif, whose noisy frames compress poorly
FRAME_MS = 80  # display time of one animation frame
LAST_FRAME_MS = 1500  # the finished images stay on screen before the GIF loops

# Colour of pixels that autoregression has not generated yet. It is distinct from every
# grey level; for RGB data it can coincide with a real pixel colour.
UNKNOWN_RGB = (0.25, 0.45, 0.85)
PAD_VALUE = 0.5


def display_scale(height: int, min_side: int = GRID_MIN_SIDE) -> int:
    """Return the integer upscale factor that makes an image at least `min_side` pixels tall."""
    return max(1, math.ceil(min_side / height))


def to_rgb(images: torch.Tensor) -> torch.Tensor:
    """Repeat a single channel to RGB; (B, 1 or 3, H, W) -> (B, 3, H, W)."""
    if images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1)
    if images.shape[1] != 3:
        raise ValueError(f"pictures need 1 or 3 channels, got {images.shape[1]}")
    return images


def levels_picture(images: torch.Tensor, levels: int) -> torch.Tensor:
    """Map integer levels 0..L-1 (B, C, H, W) to RGB floats in [0, 1]."""
    return to_rgb(images.float() / (levels - 1))


def unit_picture(x: torch.Tensor) -> torch.Tensor:
    """Map floats in [-1, 1] (B, C, H, W) to RGB in [0, 1], clipping values outside."""
    return to_rgb((x.float().clamp(-1.0, 1.0) + 1.0) / 2.0)


def partial_picture(images: torch.Tensor, known: torch.Tensor, levels: int) -> torch.Tensor:
    """Show the known pixels of (B, C, H, W) levels and paint the rest in UNKNOWN_RGB.

    `known` is a bool mask (B, 1, H, W) or (B, H, W).
    """
    rgb = levels_picture(images, levels)
    if known.dim() == 3:
        known = known.unsqueeze(1)
    colour = torch.tensor(UNKNOWN_RGB, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    return torch.where(known, rgb, colour)


def side_by_side(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Join two (B, 3, H, W) pictures along the width with a one-pixel grey divider."""
    divider = torch.full_like(left[..., :1], PAD_VALUE)
    return torch.cat([left, divider, right], dim=-1)


def frame_states(total_steps: int, max_frames: int = MAX_FRAMES) -> list[int]:
    """Return the sampler states to film, out of 0..total_steps (state s = after s steps).

    Keeps every state when there are at most `max_frames`, else `max_frames` evenly spaced
    states; the first and the last state are always included.
    """
    if total_steps + 1 <= max_frames:
        return list(range(total_steps + 1))
    spaced = np.linspace(0, total_steps, max_frames).round().astype(int)
    return sorted(set(spaced.tolist()))


class FrameTrace:
    """Frames of a few images of one batch, taken at selected states of a sampler.

    Samplers call :meth:`record` after every step; it renders the traced images only when
    the state is one of the filmed states.
    """

    def __init__(self, indices: torch.Tensor, total_steps: int, max_frames: int = MAX_FRAMES):
        self.indices = indices  # (K,) positions of the traced images within the batch
        self.states = set(frame_states(total_steps, max_frames))
        self.frames: list[torch.Tensor] = []

    def record(self, state: int, render: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Store render(indices), a (K, 3, H, W') picture, if `state` is filmed."""
        if state in self.states and len(self.indices) > 0:
            self.frames.append(render(self.indices).float().cpu())

    def stack(self) -> torch.Tensor:
        """Return the frames as one tensor (F, K, 3, H, W')."""
        if not self.frames:
            raise ValueError("no frames were recorded")
        return torch.stack(self.frames)


def upscale(pictures: torch.Tensor, scale: int) -> torch.Tensor:
    """Upscale (B, 3, H, W) pictures by an integer factor with nearest-neighbour interpolation."""
    if scale == 1:
        return pictures
    return F.interpolate(pictures, scale_factor=scale, mode="nearest")


def to_uint8(picture: torch.Tensor) -> np.ndarray:
    """Convert one (3, H, W) float picture in [0, 1] to an (H, W, 3) uint8 array."""
    return (picture.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()


def tile(pictures: torch.Tensor, columns: int, padding: int, pad_value: float = PAD_VALUE) -> torch.Tensor:
    """Lay out (N, 3, H, W) pictures row by row, at most `columns` per row, into one (3, H', W') picture.

    Every cell is surrounded by `padding` pixels of `pad_value`, as in torchvision's
    make_grid. It is written out here because importing torchvision loads torch._dynamo,
    about 1.3 s of start-up in every sample stage, of which autoregressive ones use nothing else.
    """
    count, channels, height, width = pictures.shape
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    canvas = torch.full(
        (channels, rows * (height + padding) + padding, columns * (width + padding) + padding),
        pad_value,
        dtype=pictures.dtype,
    )
    for index, picture in enumerate(pictures):
        row, column = divmod(index, columns)
        top = padding + row * (height + padding)
        left = padding + column * (width + padding)
        canvas[:, top : top + height, left : left + width] = picture
    return canvas


def class_grid(images: torch.Tensor, labels: torch.Tensor, levels: int, columns: int = GRID_COLUMNS) -> torch.Tensor:
    """Arrange the first `columns` samples of every class in one row per class.

    images: uint8 levels (N, C, H, W); returns an RGB picture (3, H', W').
    Classes with fewer samples get grey cells.
    """
    classes = torch.unique(labels).tolist()
    columns_shown = min(columns, int(torch.bincount(labels).max()))
    blank = torch.full((3, images.shape[2], images.shape[3]), PAD_VALUE)
    cells = []
    for cls in classes:
        rows = levels_picture(images[labels == cls][:columns_shown], levels)
        cells.extend(rows)
        cells.extend([blank] * (columns_shown - len(rows)))
    scale = display_scale(images.shape[2])
    return tile(upscale(torch.stack(cells), scale), columns_shown, padding=2)


def save_png(path: Path, picture: torch.Tensor) -> None:
    """Write a (3, H, W) picture in [0, 1] to `path` as PNG, atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(to_uint8(picture)).save(tmp, format="PNG")


def save_gif(path: Path, frames: torch.Tensor) -> None:
    """Write frames (F, K, 3, H, W) as an endlessly looping GIF, the K images in one row, atomically.

    Images are two source pixels apart, wider than the one-pixel divider of side_by_side.
    """
    if frames.dim() != 5 or frames.shape[0] == 0:
        raise ValueError(f"frames must have shape (F, K, 3, H, W) with F >= 1, got {tuple(frames.shape)}")
    scale = display_scale(frames.shape[3], GIF_MIN_SIDE)
    pictures = []
    for frame in frames:
        grid = tile(upscale(frame, scale), frame.shape[0], padding=2 * scale)
        pictures.append(Image.fromarray(to_uint8(grid)))
    durations = [FRAME_MS] * (len(pictures) - 1) + [LAST_FRAME_MS]
    with atomic_path(path) as tmp:
        pictures[0].save(
            tmp, format="GIF", save_all=True, append_images=pictures[1:], duration=durations, loop=0
        )

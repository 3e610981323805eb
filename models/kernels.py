"""conv1's kernels as the paper shows them (Figure 3): a grid of small RGB
images, one block per tower, and how colourful each kernel is."""

from __future__ import annotations

import numpy as np

SCALE = 4        # screen pixels a side per kernel pixel
GAP = 2          # pixels between cells of a grid
BLOCK_GAP = 8    # pixels between the towers' blocks
COLUMNS = 16     # kernels a row: the paper's figure has 48 a tower, 3 rows of 16


def colourfulness(kernels: np.ndarray) -> np.ndarray:
  """(towers, kernels a tower): the share of each kernel's variance that
  lies in its colour, i.e. in how each pixel's R, G and B differ from
  their mean. 0: the same weights in every channel (colour-agnostic); 1:
  no grey component at all (colour-specific)."""
  w = np.moveaxis(np.float64(kernels), -1, 1)          # (towers, n, k, k, 3)
  w = w - w.mean(axis=(2, 3, 4), keepdims=True)
  colour = w - w.mean(axis=-1, keepdims=True)
  total = np.square(w).sum(axis=(2, 3, 4))
  return np.square(colour).sum(axis=(2, 3, 4)) / np.maximum(total, 1e-30)


def mosaic(cells: np.ndarray, columns: int, gap: int = GAP) -> np.ndarray:
  """(n, h, w, 3) uint8 cells -> rows of `columns`, `gap` white pixels apart."""
  n, h, w, channels = cells.shape
  columns = min(columns, n)
  rows = -(-n // columns)
  out = np.full((rows * (h + gap) - gap, columns * (w + gap) - gap, channels),
                255, np.uint8)
  for i, cell in enumerate(cells):
    r, c = divmod(i, columns)
    out[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = cell
  return out


def filter_grid(kernels: np.ndarray) -> np.ndarray:
  """conv1's kernels as one uint8 RGB image: a block per tower, top to
  bottom, COLUMNS kernels a row, each kernel scaled to [0, 255] on its own
  (its channels together, so grey stays grey) and enlarged SCALE times."""
  w = np.moveaxis(kernels, -1, 1)                      # (towers, n, k, k, 3)
  low = w.min(axis=(2, 3, 4), keepdims=True)
  high = w.max(axis=(2, 3, 4), keepdims=True)
  cells = np.uint8(np.round(255 * (w - low) / np.maximum(high - low, 1e-30)))
  cells = cells.repeat(SCALE, axis=2).repeat(SCALE, axis=3)
  blocks = [mosaic(tower, COLUMNS) for tower in cells]
  space = np.full((BLOCK_GAP, blocks[0].shape[1], 3), 255, np.uint8)
  return np.concatenate([part for block in blocks for part in (space, block)][1:])

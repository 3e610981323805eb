"""The paper's view of an image, and windows of it, as uint8 pixels.

The paper stored each image with its shorter side scaled to 256 and the
central square kept (section 2); training crops a random window of that
square and evaluation its centre or its ten patches (section 4.1). Here a
window is decoded straight from the encoded image: only the region under
it, shrunk by libjpeg where it can, then resampled. Per-image TensorFlow
ops; the lighting offsets are drawn in NumPy (data/batching.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TypeVar

import ml_collections
import numpy as np
import tensorflow as tf

T = TypeVar('T')

# The downscalings libjpeg does while decoding; the last, 8 again, is
# followed by an area reduction (see _window).
_JPEG_RATIOS = (1, 2, 4, 8, 8)
# data.jpeg_dct: libjpeg's exact integer inverse DCT, or its fast one, which
# shifts the colours slightly (docs/data.md has by how much).
DCT_METHODS = {'accurate': 'INTEGER_ACCURATE', 'fast': 'INTEGER_FAST'}


def _window(shape: tf.Tensor, *, resize_size: int, top: tf.Tensor,
            left: tf.Tensor, size: int) -> tuple[tf.Tensor, ...]:
  """Where the paper's (size, size) window at (top, left) lies in the image.

  `shape` is the image's (height, width). Returns the index in _JPEG_RATIOS
  of the largest shrink that keeps the window at least `size`; the integer
  factor `reduce` by which an image shrunk by 8 is then area-reduced, so
  that the bilinear resampling after it never shrinks by 2 or more (where
  it would alias); and, in the image shrunk by both, the window's corner and
  side and the image's (height, width), rounded as libjpeg and the area
  reduction round: float32, whole numbers. Few ops, as each op costs
  tf.data about a microsecond an example.
  """
  shape = tf.cast(shape, tf.float32)
  square = tf.reduce_min(shape)
  scale = square / resize_size  # image pixels per pixel of the paper's view
  ratio_index = tf.reduce_sum(
      tf.cast(scale >= tf.constant((2, 4, 8, 16), tf.float32), tf.int32))
  reduce = tf.maximum(tf.floor(scale / 8), 1)  # above 1 only from scale 16
  ratio = tf.gather(tf.constant(_JPEG_RATIOS, tf.float32), ratio_index) * reduce
  # Rounded, not truncated: the window falls within half a decoded pixel.
  corner = tf.round((tf.floor((shape - square) / 2) + scale * tf.cast(
      tf.stack([top, left]), tf.float32)) / ratio)
  shrunk = tf.floor(tf.math.ceil(shape * reduce / ratio) / reduce)
  side = tf.maximum(tf.minimum(tf.round(size * scale / ratio),
                               tf.reduce_min(shrunk - corner)), 1)
  return ratio_index, reduce, corner, side, shrunk


Region = tuple[tf.Tensor, tf.Tensor, tf.Tensor]  # pixels, window corner, side


def _jpeg_region(encoded: tf.Tensor, *, dct_method: str, **where) -> Region:
  """Decodes a JPEG around the window only, shrunk by libjpeg where it can."""
  ratio_index, reduce, corner, side, shrunk = _window(
      tf.io.extract_jpeg_shape(encoded)[:2], **where)
  # libjpeg-turbo blends each pixel's chroma with its neighbour's; at a
  # cropped edge it has no neighbour. One pixel more on each side brings
  # them in, so the window's pixels are those of a full decode. Its left
  # edge goes down to a multiple of 16, the widest block: libjpeg decodes
  # whole blocks anyway, and TensorFlow then need not shift every row.
  low = tf.floor(tf.maximum(corner - 1, 0) / [1, 16]) * [1, 16]
  high = tf.minimum(corner + side + 1, shrunk)
  region = tf.cast(tf.concat([low, high - low], 0), tf.int32)

  def decode(ratio: int) -> tf.Tensor:
    return tf.io.decode_and_crop_jpeg(encoded, region, channels=3, ratio=ratio,
                                      dct_method=dct_method)

  def decode_and_reduce() -> tf.Tensor:
    # The region of the image shrunk by 8, averaged over `reduce` squares.
    pixels = tf.io.decode_and_crop_jpeg(
        encoded, region * tf.cast(reduce, tf.int32), channels=3, ratio=8,
        dct_method=dct_method)
    reduced = tf.image.resize(pixels, region[2:], method='area')
    return tf.cast(tf.round(reduced), tf.uint8)

  pixels = tf.switch_case(ratio_index, [
      *(lambda r=r: decode(r) for r in _JPEG_RATIOS[:-1]), decode_and_reduce])
  return pixels, tf.cast(corner - low, tf.int32), tf.cast(side, tf.int32)


def _other_region(encoded: tf.Tensor, *, resize_size: int, top: tf.Tensor,
                  left: tf.Tensor, size: int) -> Region:
  """A PNG, GIF or BMP (rare: ImageNet has one): the paper's view itself,
  scaled whole with antialiasing (its shorter side may be many times
  resize_size), its window exactly `size`."""
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scaled = tf.maximum(tf.cast(tf.round(
      shape * resize_size / tf.reduce_min(shape)), tf.int32), resize_size)
  view = tf.cast(tf.round(tf.image.resize(image, scaled, antialias=True)),
                 tf.uint8)
  corner = (scaled - resize_size) // 2 + tf.stack([top, left])
  return view, corner, tf.constant(size)


def bilinear(image: tf.Tensor, size: int) -> tf.Tensor:
  """(H, W, 3) uint8 -> (size, size, 3) uint8, bilinear (half-pixel centres).

  In 8-bit fixed point (QuantizedResizeBilinear, weights in 1/128ths), one
  op instead of a float resize, a rounding and a cast; within 2.5 levels of
  float bilinear, without bias (tests/test_input_pipeline.py).
  """
  resized = tf.raw_ops.QuantizedResizeBilinear(
      images=tf.bitcast(image, tf.quint8)[tf.newaxis], size=[size, size],
      min=0.0, max=255.0, half_pixel_centers=True)[0]
  return tf.bitcast(resized, tf.uint8)[0]


def decode_crop(encoded: tf.Tensor, *, resize_size: int, top: tf.Tensor,
                left: tf.Tensor, size: int, dct: str = 'accurate',
                resample: bool = True) -> tf.Tensor:
  """A window of the image as the paper stored it, as uint8 pixels.

  The paper's view of an image is its central square scaled to
  (resize_size, resize_size); this returns that view's (size, size) window
  at (top, left). It maps the window back onto the encoded image and decodes
  only that, letting libjpeg shrink by 2, 4 or 8 while decoding where the
  window is that much larger than `size`; bilinear resampling does the rest.
  Up to half a decoded pixel in where the window falls, this is scaling
  then cropping, at a fraction of the cost. Non-JPEG files (PNGs named
  .JPEG, ...) are decoded and scaled whole; grayscale and CMYK files come
  out RGB. `dct` is a key of DCT_METHODS. `resample=False` is for images
  known to be the paper's view already (the prepared copy), whose windows
  are exactly `size`.
  """
  where = dict(resize_size=resize_size, top=top, left=left, size=size)
  # Only decoding is branched on: in tf.data, the same ops ran slower
  # inside a branch than outside one.
  pixels, corner, side = tf.cond(
      tf.io.is_jpeg(encoded),
      lambda: _jpeg_region(encoded, dct_method=DCT_METHODS[dct], **where),
      lambda: _other_region(encoded, **where))
  image = tf.slice(pixels, tf.concat([corner, [0]], 0), [side, side, 3])
  # The window is under twice `size` (_window sees to it), where bilinear
  # needs no antialiasing; an exact fit comes out unchanged. Decided per
  # dataset, not per image: a branch on the window's side costs more than
  # it saves.
  if resample:
    return bilinear(image, size)
  return tf.ensure_shape(image, [size, size, 3])


def decode_central_square(encoded: tf.Tensor, size: int, dct: str = 'accurate',
                          resample: bool = True) -> tf.Tensor:
  """The paper's view: shorter side scaled to `size`, the central square."""
  return decode_crop(encoded, resize_size=size, top=0, left=0, size=size,
                     dct=dct, resample=resample)


def eval_corners(resize_size: int, size: int, ten_crop: bool) -> np.ndarray:
  """Where evaluation's crops lie in the paper's (resize_size, resize_size)
  view (section 4.1): (top, left) of the centre crop, (2,), or of the ten
  crops' five patches, the four corners then the centre, (5, 2). The other
  five are their reflections, made in the compiled step
  (trainer.standardize) rather than decoded and sent twice."""
  far = resize_size - size
  mid = far // 2
  if not ten_crop:
    return np.array([mid, mid], np.int32)
  return np.array([(0, 0), (0, far), (far, 0), (far, far), (mid, mid)], np.int32)


def crops(image: tf.Tensor, corners: np.ndarray, size: int) -> tf.Tensor:
  """The (size, size) windows of `image` at `corners` (eval_corners):
  (size, size, C) for one corner, (n, size, size, C) for n."""
  if corners.ndim == 1:
    return image[corners[0]:corners[0] + size, corners[1]:corners[1] + size]
  return tf.stack([crops(image, corner, size) for corner in corners])


def lighting_offset(alpha: np.ndarray, eigval: np.ndarray,
                    eigvec: np.ndarray) -> np.ndarray:
  """The paper's PCA lighting (section 4.1), sum_i alpha_i l_i p_i, in 0-255
  pixel units.

  `alpha` is (..., 3); eigval (variances) and eigvec are those of the
  covariance of pixels scaled to [0, 1], the units the paper's formula is
  applied in here, hence the 255.
  """
  return 255.0 * (alpha * eigval) @ np.transpose(eigvec)


def lighting_std(eigval: np.ndarray, eigvec: np.ndarray,
                 sigma: float) -> np.ndarray:
  """The standard deviation per channel, in 0-255 pixels, of
  lighting_offset with alpha_i ~ N(0, sigma): 255 sigma sqrt(sum_i
  l_i^2 p_ci^2)."""
  return 255.0 * sigma * np.sqrt(np.square(eigvec) @ np.square(eigval))


def skip_undecodable(ds: tf.data.Dataset,
                     data: ml_collections.ConfigDict) -> tf.data.Dataset:
  """Drops examples that fail to decode when data.skip_corrupt is set; the
  callers count the gaps. Otherwise explain_errors names the setting."""
  return ds.ignore_errors() if data.skip_corrupt else ds


def explain_errors(items: Iterator[T]) -> Iterator[T]:
  """Passes `items` through; a decoding error names data.skip_corrupt."""
  try:
    yield from items
  except tf.errors.OpError as e:  # undecodable, unreadable, missing...
    raise ValueError(
        f'An image could not be read or decoded: {e.message.splitlines()[0]}. '
        'Set --config.data.skip_corrupt=True to skip (and count) such images.'
    ) from e


def why_unreadable(path: str) -> str:
  """Why the file at `path` is no image the pipeline reads: TensorFlow's
  error, read and decoded on its own."""
  try:
    tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
  except tf.errors.OpError as e:
    # Without TensorFlow's '{{function_node ...}}' and '[Op:...]' wrapping.
    return re.sub(r'\{\{.*?\}\}\s*|\s*\[Op:.*', '', e.message.splitlines()[0])
  return 'it decodes alone, but not as the paper\'s view'

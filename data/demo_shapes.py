"""DemoShapes: a small synthetic image dataset embedded in the repository.

ImageNet takes days to obtain and prepare, so the code paths that read data
(input pipeline, trainer, evaluation) would otherwise go untested until then.
This TFDS builder generates a 10-class classification task of shapes and
textures (discs, rings, squares, triangles, crosses, stars, and patches of
horizontal, vertical or diagonal stripes and checkerboards) as 80x80 RGB JPEGs.
Foreground and background colours, position, scale, rotation and pixel noise
vary per image, so the task is not trivial, yet a small CNN learns it to over
90% accuracy in a couple of minutes on a CPU.

Nothing is downloaded: `_split_generators` ignores the download manager and the
images are rasterised with NumPy coordinate grids from a seeded generator, one
generator per example, so every preparation yields the same bytes whatever the
order in which TFDS consumes the examples.

Usage (importing this module registers the builder with TFDS):

  from data import demo_shapes  # noqa: F401
  builder = tfds.builder('demo_shapes', data_dir=...)       # 8000 / 1000
  builder = tfds.builder('demo_shapes/tiny', data_dir=...)  # 320 / 100
  builder.download_and_prepare()
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow_datasets as tfds

NAME = 'demo_shapes'  # TFDS's name for DemoShapes
IMAGE_SIZE = 80

CLASS_NAMES = (
    'disc',
    'ring',
    'square',
    'triangle',
    'cross',
    'star',
    'horizontal_stripes',
    'vertical_stripes',
    'diagonal_stripes',
    'checkerboard',
)

# Minimum |luma(foreground) - luma(background)| (0-255), so every shape is
# visible after JPEG compression and noise.
_MIN_LUMA_CONTRAST = 70.0
_LUMA = np.array([0.299, 0.587, 0.114])

# Split name -> index mixed into the seed, so train and validation differ.
_SPLIT_IDS = {'train': 0, 'validation': 1}

Mask = np.ndarray  # bool (IMAGE_SIZE, IMAGE_SIZE)


@dataclasses.dataclass(eq=False)
class DemoShapesConfig(tfds.core.BuilderConfig):
  """Sizes and seed of one DemoShapes variant."""
  num_train: int = 8000
  num_validation: int = 1000
  seed: int = 0


def _grid() -> tuple[np.ndarray, np.ndarray]:
  """Pixel-centre coordinates (y, x), each (IMAGE_SIZE, IMAGE_SIZE)."""
  c = np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5
  return np.meshgrid(c, c, indexing='ij')


_YY, _XX = _grid()


def _frame(cy: float, cx: float,
           angle: float) -> tuple[np.ndarray, np.ndarray]:
  """Coordinates relative to (cy, cx), rotated by `angle` (radians)."""
  dy, dx = _YY - cy, _XX - cx
  c, s = np.cos(angle), np.sin(angle)
  return c * dx + s * dy, -s * dx + c * dy


# Each drawer gets the generator, the centre and a size (half-extent, pixels)
# and returns the foreground mask. Shapes rotate freely; textures only jitter,
# since their orientation is the class.

def _disc(rng, cy, cx, r):
  u, v = _frame(cy, cx, 0.0)
  return u * u + v * v <= r * r


def _ring(rng, cy, cx, r):
  u, v = _frame(cy, cx, 0.0)
  d2 = u * u + v * v
  inner = r * rng.uniform(0.45, 0.7)
  return (d2 <= r * r) & (d2 >= inner * inner)


def _square(rng, cy, cx, r):
  u, v = _frame(cy, cx, rng.uniform(0, np.pi / 2))
  half = 0.8 * r
  return (np.abs(u) <= half) & (np.abs(v) <= half)


def _triangle(rng, cy, cx, r):
  # Equilateral triangle with circumradius r: inside all three edges, whose
  # outward normals are 120 degrees apart at distance r / 2.
  u, v = _frame(cy, cx, rng.uniform(0, 2 * np.pi))
  inside = np.ones_like(u, dtype=bool)
  for k in range(3):
    a = 2 * np.pi * k / 3
    inside &= np.cos(a) * u + np.sin(a) * v <= r / 2
  return inside


def _cross(rng, cy, cx, r):
  u, v = _frame(cy, cx, rng.uniform(0, np.pi / 2))
  w = r * rng.uniform(0.22, 0.32)
  au, av = np.abs(u), np.abs(v)
  return ((au <= w) & (av <= r)) | ((av <= w) & (au <= r))


def _star(rng, cy, cx, r):
  # Five-pointed star: the radius oscillates between the inner and outer
  # radius with the polar angle (a triangle wave gives straight-ish edges).
  u, v = _frame(cy, cx, rng.uniform(0, 2 * np.pi))
  phi = np.arctan2(v, u)
  t = np.abs(((phi * 5 / (2 * np.pi)) % 1.0) * 2 - 1)  # 1 at tips, 0 between
  inner = r * rng.uniform(0.38, 0.48)
  return np.sqrt(u * u + v * v) <= inner + (r - inner) * t


def _patch(rng, cy, cx, r, angle) -> tuple[np.ndarray, np.ndarray, Mask]:
  """A rectangular patch, and texture coordinates rotated by `angle`."""
  aspect = rng.uniform(0.75, 1.33)
  hy, hx = r * aspect ** 0.5, r / aspect ** 0.5
  region = (np.abs(_YY - cy) <= hy) & (np.abs(_XX - cx) <= hx)
  u, v = _frame(cy, cx, angle)
  return u, v, region


def _stripes(rng, cy, cx, r, angle):
  u, v, region = _patch(rng, cy, cx, r, angle)
  period = rng.uniform(5.0, 9.0)
  phase = rng.uniform(0, period)
  return region & (((v + phase) % period) < period / 2)


def _horizontal_stripes(rng, cy, cx, r):
  return _stripes(rng, cy, cx, r, rng.uniform(-0.15, 0.15))


def _vertical_stripes(rng, cy, cx, r):
  return _stripes(rng, cy, cx, r, np.pi / 2 + rng.uniform(-0.15, 0.15))


def _diagonal_stripes(rng, cy, cx, r):
  # Either diagonal, so horizontal flips keep the class.
  direction = rng.choice([-1.0, 1.0])
  return _stripes(rng, cy, cx, r,
                  direction * np.pi / 4 + rng.uniform(-0.15, 0.15))


def _checkerboard(rng, cy, cx, r):
  u, v, region = _patch(rng, cy, cx, r, rng.uniform(-0.15, 0.15))
  cell = rng.uniform(3.0, 5.5)
  return region & ((np.floor(u / cell) + np.floor(v / cell)) % 2 == 0)


_DRAWERS: tuple[Callable[..., Mask], ...] = (
    _disc, _ring, _square, _triangle, _cross, _star,
    _horizontal_stripes, _vertical_stripes, _diagonal_stripes, _checkerboard,
)
assert len(_DRAWERS) == len(CLASS_NAMES)


def _contrasting_colours(
    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Random foreground and background RGB colours that differ in luma."""
  while True:
    fg, bg = rng.uniform(0, 255, size=(2, 3))
    if abs(_LUMA @ fg - _LUMA @ bg) >= _MIN_LUMA_CONTRAST:
      return fg, bg


def render(label: int, rng: np.random.Generator) -> np.ndarray:
  """Draws one image of class `label`: uint8 (IMAGE_SIZE, IMAGE_SIZE, 3).

  Centres stay within the middle of the canvas and sizes leave most of the
  object inside a 64x64 crop of the image.
  """
  cy, cx = rng.uniform(26, 54, size=2)
  r = rng.uniform(11, 22)
  mask = _DRAWERS[label](rng, cy, cx, r)
  fg, bg = _contrasting_colours(rng)
  image = np.where(mask[..., None], fg.astype(np.float32),
                   bg.astype(np.float32))
  # Uniform rather than Gaussian noise: as good here, and cheaper to draw.
  noise = rng.random(image.shape, dtype=np.float32) - np.float32(0.5)
  image += np.float32(rng.uniform(10, 40)) * noise
  return np.clip(np.round(image), 0, 255).astype(np.uint8)


def generate(num_examples: int, *, seed: int,
             split_id: int) -> Iterator[tuple[int, int, np.ndarray]]:
  """Yields (index, label, image) with classes in rotation (balanced).

  Each example has its own generator seeded by (seed, split_id, index), so an
  example does not depend on those drawn before it.
  """
  for index in range(num_examples):
    label = index % len(CLASS_NAMES)
    rng = np.random.default_rng([seed, split_id, index])
    yield index, label, render(label, rng)


class DemoShapes(tfds.core.GeneratorBasedBuilder):
  """Synthetic 10-class shapes and textures, 80x80 RGB; generated locally."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
      DemoShapesConfig(
          name='full', num_train=8000, num_validation=1000,
          description='8000 training and 1000 validation images.'),
      DemoShapesConfig(
          name='tiny', num_train=320, num_validation=100,
          description='320 training and 100 validation images, for tests.'),
  ]
  DEFAULT_CONFIG_NAME = 'full'

  def _info(self) -> tfds.core.DatasetInfo:
    # tfds.core.DatasetInfo directly: dataset_info_from_configs wants package
    # metadata files, and this builder is a single module.
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(
                shape=(IMAGE_SIZE, IMAGE_SIZE, 3), encoding_format='jpeg'),
            'label': tfds.features.ClassLabel(names=list(CLASS_NAMES)),
        }),
        supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Everything is generated locally.
    return {
        'train': self._generate_examples('train', self.builder_config.num_train),
        'validation': self._generate_examples(
            'validation', self.builder_config.num_validation),
    }

  def _generate_examples(self, split: str, num_examples: int):
    for index, label, image in generate(
        num_examples, seed=self.builder_config.seed,
        split_id=_SPLIT_IDS[split]):
      yield index, {'image': image, 'label': label}

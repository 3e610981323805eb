"""Synthetic ImageNet-like photographs, as an image folder to benchmark on.

  python -m tools.synthetic_photos DIR [--num_images=2048] [--num_classes=4]

writes 500x375 JPEGs of smooth shading, shapes with edges and fine texture
to DIR/train/class<k>/ and a tenth as many to DIR/validation/class<k>/.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter



def photo(rng: np.random.Generator, width: int = 500,
          height: int = 375) -> Image.Image:
  """A photograph-like image: shading, objects with edges, fine texture.

  JPEG's cost depends on content; flat or pure-noise images decode faster or
  slower than photographs, so this mixes what photographs have.
  """
  coarse = rng.uniform(0, 255, (4, 5, 3)).astype(np.uint8)
  image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
  draw = ImageDraw.Draw(image)
  for _ in range(rng.integers(4, 12)):
    x0, y0 = rng.uniform(-50, width), rng.uniform(-50, height)
    x1, y1 = x0 + rng.uniform(20, 250), y0 + rng.uniform(20, 200)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
    shape((x0, y0, x1, y1), fill=colour)
  image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))
  texture = rng.normal(0, rng.uniform(4, 12), (height, width, 1))
  pixels = np.asarray(image, np.float32) + texture
  return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_folder(root: str, num_images: int, *, num_classes: int = 4,
                seed: int = 0) -> None:
  """Writes num_images photographs to root/train and a tenth as many to
  root/validation, in `num_classes` class folders."""
  rng = np.random.default_rng(seed)
  for split, count in (('train', num_images), ('validation', num_images // 10)):
    for i in range(count):
      directory = os.path.join(root, split, f'class{i % num_classes}')
      os.makedirs(directory, exist_ok=True)
      photo(rng).save(os.path.join(directory, f'{i:06d}.jpg'), quality=90)


if __name__ == '__main__':
  parser = argparse.ArgumentParser(description=make_folder.__doc__)
  parser.add_argument('root')
  parser.add_argument('--num_images', type=int, default=2048)
  parser.add_argument('--num_classes', type=int, default=4)
  args = parser.parse_args()
  make_folder(args.root, args.num_images, num_classes=args.num_classes)

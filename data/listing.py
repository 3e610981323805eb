"""The image files of a folder's image directories, listed once and kept
beside the data, so that a folder of a million images is not stat'ed again
at every start.

The listing is ROOT/.listing/images.npz (hidden, like the statistics'
cache): every image directory's file names and sizes, and the directory's
modification time when it was listed. A directory's modification time
changes whenever a file in it is added, removed or renamed, so comparing
them (one stat per directory, not per file) tells whether the listing still
holds; where one differs, that directory is listed again, with a warning
naming what changed. Files rewritten in place under the same name keep the
listing (their sizes are recorded as they were). A folder that cannot be
written is listed at every start, as without the cache. Only process 0
writes it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from collections.abc import Sequence

import jax
import numpy as np
from absl import logging

import run_files

EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')
LISTING = os.path.join('.listing', 'images.npz')
_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Files:
  """One image directory's image files, sorted by name."""
  names: tuple[str, ...]
  sizes: tuple[int, ...]


def _modified(root: str, directories: Sequence[str]) -> dict[str, int]:
  return {d: os.stat(os.path.join(root, d)).st_mtime_ns for d in directories}


def _list(root: str, directory: str) -> Files:
  """Image files by extension; links are followed, and entries that are
  neither files nor folders (a broken link, a link loop) are named in a
  warning and left out."""
  names, sizes, unusable = [], [], []
  path = os.path.join(root, directory)
  with os.scandir(path) as entries:
    for entry in sorted(entries, key=lambda e: e.name):
      if not entry.name.lower().endswith(EXTENSIONS):
        continue
      try:
        info = entry.stat()  # follows links
      except OSError:
        unusable.append(entry.path)
        continue
      if stat.S_ISDIR(info.st_mode):
        continue
      names.append(entry.name)
      sizes.append(info.st_size)
  if unusable:
    logging.warning('Left out %d entries of %s that are neither folders nor '
                    'files (broken links or link loops): %s', len(unusable),
                    path, ', '.join(unusable[:5]) +
                    (', ...' if len(unusable) > 5 else ''))
  return Files(tuple(names), tuple(sizes))


def _read(path: str) -> tuple[dict[str, int], dict[str, Files]] | None:
  try:
    with np.load(path) as f:
      meta = json.loads(f['meta'].tobytes())
      names = f['names'].tobytes().decode().split('\n')
      sizes = f['sizes'].tolist()
  except (OSError, ValueError, KeyError, EOFError):
    return None
  if meta.get('version') != _VERSION:
    return None
  files, start = {}, 0
  for directory, count in zip(meta['directories'], meta['counts']):
    files[directory] = Files(tuple(names[start:start + count]),
                             tuple(sizes[start:start + count]))
    start += count
  return dict(zip(meta['directories'], meta['modified'])), files


def _write(path: str, modified: dict[str, int], files: dict[str, Files]) -> None:
  directories = list(files)
  meta = dict(version=_VERSION, directories=directories,
              modified=[modified[d] for d in directories],
              counts=[len(files[d].names) for d in directories])
  names = '\n'.join(n for d in directories for n in files[d].names)
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with run_files.atomic_write(path, 'wb') as f:
      np.savez(f, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
               names=np.frombuffer(names.encode(), np.uint8),
               sizes=np.array([s for d in directories for s in files[d].sizes],
                              np.int64))
  except OSError as e:  # a read-only folder is listed at every start
    logging.info('Could not keep the listing of the images in %s (%s); it is '
                 'made again at every start.', path, e)


def _changes(old: dict[str, int], new: dict[str, int]) -> str:
  parents = {os.path.dirname(d) for d in new} & {os.path.dirname(d) for d in old}
  added = sorted(d for d in new.keys() - old.keys() if os.path.dirname(d) in parents)
  removed = sorted(d for d in old.keys() - new.keys()
                   if os.path.dirname(d) in parents)
  changed = sorted(d for d in new.keys() & old.keys() if new[d] != old[d])
  parts = [f'{what} {len(dirs)} ({", ".join(dirs[:3])}{", ..." if len(dirs) > 3 else ""})'
           for what, dirs in (('folders added:', added), ('folders removed:', removed),
                              ('folders whose files changed:', changed)) if dirs]
  return '; '.join(parts)


def image_files(root: str, directories: Sequence[str]) -> dict[str, Files]:
  """The image files of each of `directories` (relative to `root`): from
  the listing kept in `root` for those it still holds, listed now for the
  others (and the listing brought up to date)."""
  path = os.path.join(root, LISTING)
  modified = _modified(root, directories)
  kept_modified, kept_files = _read(path) or ({}, {})
  stale = [d for d in directories if kept_modified.get(d) != modified[d]]
  if not stale:
    return {d: kept_files[d] for d in directories}
  changes = _changes(kept_modified, modified)
  if changes:
    logging.warning('The images of %s changed since they were last listed (%s); '
                    'listing those folders again.', root, changes)
  elif len(stale) > 100:
    logging.info('Listing the images in %d folders of %s, once (later runs '
                 'read %s).', len(stale), root, path)
  files = {**kept_files, **{d: _list(root, d) for d in stale}}
  if jax.process_index() == 0:
    _write(path, {**kept_modified, **modified}, files)
  return {d: files[d] for d in directories}

"""The README and docs: their commands parse, their file references exist, and
docs/config.md lists exactly the config's keys with their defaults."""

from __future__ import annotations

import ast
import glob
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys

import flax
import pytest

from configs import alexnet, command_line, validation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ['README.md', *sorted(os.path.relpath(p, REPO) for p in
                             glob.glob(os.path.join(REPO, 'docs', '*.md')))]


def _read(doc: str) -> str:
  with open(os.path.join(REPO, doc)) as f:
    return f.read()


def _commands(doc: str) -> list[str]:
  """The shell commands of a document's ```bash blocks, continuations joined,
  split at &&, without leading VAR=value assignments."""
  commands = []
  for block in re.findall(r'```bash\n(.*?)```', _read(doc), re.S):
    text = re.sub(r'\\\n\s*', ' ', block)
    for line in text.splitlines():
      line = line.split(' #')[0].strip()
      for part in line.split('&&'):
        part = re.sub(r'^(\w+=\S+\s+)+', '', part.strip())
        if part:
          commands.append(part)
  return commands


def _python_commands(prefix: str) -> list[tuple[str, str]]:
  return [(doc, c) for doc in DOCS for c in _commands(doc)
          if c.startswith(prefix) and '...' not in c]


def test_the_docs_have_commands():
  assert len(_python_commands('python main.py')) >= 10
  assert _python_commands('python -m tools.')


def _parse_main_args(args: list[str]) -> dict[str, str]:
  """main.py's flags: the config built and checked as main.py builds and
  checks it; the other flags returned by name."""
  config_args = [a for a in args if a.startswith('--config')]
  validation.check(command_line.load(config_args))
  other = dict(a[2:].split('=', 1) for a in args if a not in config_args)
  unknown = set(other) - {'workdir', 'mode', 'coordinator_address',
                          'num_processes', 'process_id'}
  assert not unknown, f'unknown flags {unknown}'
  return other


@pytest.fixture(scope='module')
def modes() -> dict[str, bool]:
  """main.py's modes and whether each needs --workdir, read in a process of
  its own: main.py defines absl flags that other tests' tools define too."""
  result = subprocess.run(
      [sys.executable, '-c', 'import json, main; print(json.dumps('
       '{k: m.needs_workdir for k, m in main.MODES.items()}))'],
      cwd=REPO, capture_output=True, text=True, check=True)
  return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize('doc, command', _python_commands('python main.py'))
def test_main_commands_parse(doc, command, modes):
  flag_values = _parse_main_args(shlex.split(command)[2:])
  mode = flag_values.get('mode', 'train')
  assert mode in modes, (doc, command)
  if modes[mode]:
    assert 'workdir' in flag_values, f'{doc}: {command} needs --workdir'


@pytest.mark.parametrize('doc, command', _python_commands('python -m tools.'))
def test_tool_commands_name_a_tool_and_a_valid_config(doc, command):
  args = shlex.split(command)
  assert importlib.util.find_spec(args[2]) is not None, (doc, command)
  config_args = [a for a in args[3:] if a.startswith('--config=')]
  if config_args:
    validation.check(command_line.load(config_args))


@pytest.mark.parametrize('doc', DOCS)
def test_files_named_in_the_docs_exist(doc):
  """Links, and paths of the repository's files (a folder and a .py or .md)."""
  text = _read(doc)
  named = set(re.findall(r'\]\(([^)#:]+)\)', text)) | set(re.findall(
      r'(?<![\w/.~-])((?:[\w-]+/)+[\w-]+\.(?:py|md))\b', text))
  here = os.path.dirname(os.path.join(REPO, doc))
  missing = [path for path in named
             if not any(os.path.exists(os.path.join(base, path))
                        for base in (here, REPO))]
  assert not missing, f'{doc} names files that are not in the repository: {missing}'


def _slug(heading: str) -> str:
  """GitHub's anchor for a heading: lower case, punctuation but - and _
  dropped, spaces as hyphens."""
  return re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')


def _anchors(doc: str) -> set[str]:
  """The anchors of a document's headings (not of # lines in code blocks);
  a repeated heading's get -1, -2, ... as on GitHub."""
  text = re.sub(r'```.*?```', '', _read(doc), flags=re.DOTALL)
  anchors, seen = set(), {}
  for heading in re.findall(r'^#{1,6} +(.+?)#*$', text, re.MULTILINE):
    slug = _slug(heading)
    anchors.add(slug if slug not in seen else f'{slug}-{seen[slug]}')
    seen[slug] = seen.get(slug, 0) + 1
  return anchors


def test_slug_follows_githubs_rules():
  assert _slug("The paper's preprocessing") == 'the-papers-preprocessing'
  assert _slug('Order, shards and resumption') == 'order-shards-and-resumption'
  assert _slug('data_wait and `img/s`') == 'data_wait-and-imgs'


@pytest.mark.parametrize('doc', DOCS)
def test_anchors_in_links_are_headings(doc):
  here = os.path.dirname(doc)
  broken = [f'{target}#{anchor}' for target, anchor in re.findall(
      r'\]\(([^)#:\s]*)#([^)\s]+)\)', _read(doc))
            if anchor not in _anchors(os.path.normpath(os.path.join(here, target))
                                      if target else doc)]
  assert not broken, f'{doc} links to headings that do not exist: {broken}'


def _as_json(value):
  return json.loads(json.dumps(value))  # tuples and lists alike


def test_config_reference_lists_every_key_with_its_default():
  rows = re.findall(r'^\| `([\w.]+)` \| `(.*?)` \|', _read('docs/config.md'), re.M)
  documented = dict(rows)
  assert len(documented) == len(rows), 'a key is documented twice'
  config = flax.traverse_util.flatten_dict(alexnet.get_config().to_dict(), sep='.')
  assert sorted(documented) == sorted(config)
  for key, default in documented.items():
    assert _as_json(ast.literal_eval(default)) == _as_json(config[key]), key

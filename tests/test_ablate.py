"""ablate.py: a baseline and a variant, trained, tabulated and plotted."""

import os
import subprocess
import sys
from tools import ablate


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_variant_joins_the_config_arguments():
  assert ablate.with_variant('configs/demo.py', 'lrn=off') == 'configs/demo.py:lrn=off'
  assert (ablate.with_variant('configs/demo.py:towers=1', 'lrn=off')
          == 'configs/demo.py:towers=1,lrn=off')
  assert ablate.run_name('lrn=off,pool=2x2') == 'lrn=off_pool=2x2'


def _ablate(tmp_path, *variants):
  return subprocess.run(
      [sys.executable, '-m', 'tools.ablate', '--config=configs/demo.py:size=tiny',
       *(f'--variant={v}' for v in variants), f'--workdir={tmp_path / "abl"}', '--',
       f'--config.data.data_dir={tmp_path / "tfds"}',
       '--config.num_train_steps=4', '--config.batch_size=16',
       '--config.eval_batch_size=16'],
      cwd=REPO, capture_output=True, text=True, timeout=900,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))


def test_ablation_writes_table_and_plot(tmp_path):
  result = _ablate(tmp_path, 'lrn=off')
  assert result.returncode == 0, result.stderr[-3000:]
  table = (tmp_path / 'abl' / 'ablation.md').read_text().splitlines()
  assert [row.split('|')[1].strip() for row in table[2:]] == ['baseline', 'lrn=off']
  assert table[2].split('|')[4].strip() == '+0.00'  # baseline against itself
  png = (tmp_path / 'abl' / 'ablation.png').read_bytes()
  assert png.startswith(b'\x89PNG')
  assert (tmp_path / 'abl' / 'lrn=off' / 'results.json').exists()


def test_misspelt_variant_fails_before_training(tmp_path):
  result = _ablate(tmp_path, 'lrn=off', 'pool=4x4')
  assert result.returncode != 0
  assert "pool='4x4' is not one of" in result.stderr
  assert not (tmp_path / 'abl' / 'baseline').exists()

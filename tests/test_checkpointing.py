"""Checkpoints: exact resume after kill -9, SIGTERM, other meshes, safety, eval mode."""

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import checkpointing
import run_files
import parallel
from trainer import Trainer, synthetic_batch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NUM_STEPS = 12
# Saves at steps 3, 4, 6, 8, 9 and 12 (every 3 steps, and after each evaluation:
# every 4 of the tiny dataset's 20 steps an epoch); the metric log's period of
# 5 lines up with neither.
RUN_FLAGS = [f'--config.num_train_steps={NUM_STEPS}', '--config.log_every_steps=5',
             '--config.checkpoint.every_steps=3', '--config.eval_every_epochs=0.2']
TIMING_KEYS = {'images_per_sec', 'data_wait_fraction', 'steps_per_sec', 'uptime'}


@pytest.fixture(scope='module')
def command(tiny_demo_flags):
  """Makes the main.py command of a tiny demo run in `workdir`."""
  def make(tmp_path, workdir, *extra):
    flags = [f for f in tiny_demo_flags(tmp_path) if not f.startswith(
        ('--workdir', '--config.num_train_steps', '--config.log_every_steps'))]
    return [sys.executable, 'main.py', *flags, f'--workdir={workdir}', *RUN_FLAGS,
            *extra]
  return make


def _run(command, timeout=600):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=timeout)


@contextlib.contextmanager
def _running(command, log_path, env=None):
  """The run in the background; killed if the test fails before it ends."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', **(env or {}))
  with open(log_path, 'w') as log:
    process = subprocess.Popen(command, cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=log)
    try:
      yield process
    finally:
      if process.poll() is None:
        process.kill()
        process.wait()


def _saved_steps(workdir):
  path = os.path.join(workdir, checkpointing.CHECKPOINT_DIR)
  if not os.path.isdir(path):
    return []
  return sorted(int(d) for d in os.listdir(path) if d.isdigit())


def _wait_for(condition, process, timeout=300):
  deadline = time.monotonic() + timeout
  while not condition():
    assert process.poll() is None, (
        f'the run ended (exit {process.returncode}) before the test could interrupt it')
    assert time.monotonic() < deadline, 'timed out waiting for the run'
    time.sleep(0.005)


def _saved_state(workdir, step):
  path = os.path.join(workdir, checkpointing.CHECKPOINT_DIR, str(step), 'state')
  return ocp.PyTreeCheckpointer().restore(path)


def _meta(workdir, step):
  """Checkpoint `step`'s meta item: results, digests, data, progress."""
  with ocp.CheckpointManager(os.path.join(workdir, checkpointing.CHECKPOINT_DIR),
                             options=ocp.CheckpointManagerOptions(read_only=True)) as m:
    return m.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']


def _logged_metrics(workdir):
  """The metric log without timings and without lines that held only timings."""
  records = [{k: v for k, v in r.items() if k not in TIMING_KEYS}
             for r in run_files.read_metrics(workdir)]
  return [r for r in records if len(r) > 1]


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, command):
  tmp_path = tmp_path_factory.mktemp('uninterrupted')
  workdir = tmp_path / 'work'
  result = _run(command(tmp_path, workdir))
  assert result.returncode == 0, result.stderr[-3000:]
  return tmp_path, workdir


def test_killed_run_resumes_to_identical_parameters_and_metric_log(uninterrupted, tmp_path,
                                                                  command):
  data_path, reference = uninterrupted
  assert _saved_steps(reference)[-1] == NUM_STEPS
  workdir = tmp_path / 'work'
  command = command(data_path, workdir)
  # Kill once a random checkpoint before the last has been committed; the run
  # has then gone on by a random amount of work.
  # (Not 8 or later: the run could finish before the kill lands.)
  kill_after = random.choice([3, 4, 6])
  log = tmp_path / 'killed.log'
  with _running(command, log) as process:
    _wait_for(lambda: any(s >= kill_after for s in _saved_steps(workdir)), process)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, log.read_text()[-3000:]
  assert _saved_steps(workdir)[-1] < NUM_STEPS, (kill_after, _saved_steps(workdir))

  result = _run(command)
  assert result.returncode == 0, result.stderr[-3000:]
  assert re.search(r'Restored checkpoint \d+', result.stderr)
  ours, theirs = _saved_state(workdir, NUM_STEPS), _saved_state(reference, NUM_STEPS)
  print(f'killed after checkpoint {kill_after}; resumed with:', result.stderr[-2000:])
  assert jax.tree.structure(ours) == jax.tree.structure(theirs)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    np.testing.assert_array_equal(a, b)  # bitwise: momentum, plateau, rng too
  assert _logged_metrics(workdir) == _logged_metrics(reference)


def test_sigterm_saves_at_the_step_it_stops_and_a_resume_logs_as_one_run(uninterrupted, tmp_path, command):
  data_path, _ = uninterrupted
  workdir = tmp_path / 'work'
  # Long enough that SIGTERM arrives mid-run; no evaluation slows it down.
  _command, extra = command, ['--config.num_train_steps=2000',
                              '--config.eval_every_epochs=1000']
  command = _command(data_path, workdir, *extra)
  with _running(command, tmp_path / 'run.log') as process:
    _wait_for(lambda: _saved_steps(workdir), process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=300) == 0
  stderr = (tmp_path / 'run.log').read_text()
  stopped = re.search(r'Preempted: stopped after step (\d+)', stderr)
  assert stopped, stderr[-3000:]
  step = int(stopped.group(1))
  assert 3 <= step < 2000  # 3: stopped while waiting for the batch after a save
  assert _saved_steps(workdir)[-1] == step
  # Saved before any evaluation, the checkpoint keeps the time trained so far.
  first_part = _meta(workdir, step)['progress']['train_seconds']
  assert first_part > 0

  # Resumed to 3 steps further, the run logs what one run to there logs: no
  # interval of its own at the step it was preempted at.
  end = [f'--config.num_train_steps={step + 3}']
  resumed = _run(command + end)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  reference = tmp_path / 'reference'
  uninterrupted_run = _run(_command(data_path, reference, *extra, *end))
  assert uninterrupted_run.returncode == 0, uninterrupted_run.stderr[-3000:]
  assert _logged_metrics(workdir) == _logged_metrics(reference)
  assert [r['step'] for r in run_files.read_metrics(workdir)] == [
      r['step'] for r in run_files.read_metrics(reference)]
  with open(workdir / 'results.json') as f:
    assert json.load(f)['train_seconds'] > first_part


def test_sigterm_while_the_input_pipeline_waits_saves_and_exits_0(tmp_path):
  # Images that are FIFOs nobody writes to: reading them blocks forever, as
  # on a hung file system.
  for split in ('train', 'validation'):
    for name in ('a', 'b'):
      os.makedirs(tmp_path / 'data' / split / name)
      for i in range(4):
        os.mkfifo(tmp_path / 'data' / split / name / f'{i}.jpg')
  workdir = tmp_path / 'work'
  command = [sys.executable, 'main.py', '--config=configs/demo.py:size=tiny',
             f'--config.data.image_folder={tmp_path / "data"}',
             '--config.model.num_classes=0', '--config.batch_size=8',
             '--config.eval_batch_size=8', f'--workdir={workdir}']
  log = tmp_path / 'run.log'
  with _running(command, log) as process:
    _wait_for(lambda: 'Waited 10 s for the input pipeline' in log.read_text(),
              process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
  assert 'Preempted: stopped after step 0' in log.read_text()
  assert _saved_steps(workdir) == [0]


def test_two_processes_stop_together_on_sigterm_and_resume(tmp_path, command, free_port):
  # A scheduler signals every process of a job. They share one data_dir
  # (process 0 generates the demo first) and must agree on the step to
  # stop at, save it together, exit 0, and resume from it.
  port = free_port()
  workdir = tmp_path / 'work'
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}

  def commands(steps):
    return [command(tmp_path, workdir, f'--config.num_train_steps={steps}',
                     '--config.eval_every_epochs=1000',
                     f'--coordinator_address=localhost:{port}', '--num_processes=2',
                     f'--process_id={i}') for i in range(2)]

  logs = [tmp_path / f'process{i}.log' for i in range(2)]
  with _running(commands(2000)[0], logs[0], env) as first, \
       _running(commands(2000)[1], logs[1], env) as second:
    _wait_for(lambda: _saved_steps(workdir), first)
    for process in (first, second):
      process.send_signal(signal.SIGTERM)
    assert [first.wait(timeout=300), second.wait(timeout=300)] == [0, 0]
  stopped = {int(re.search(r'Preempted: stopped after step (\d+)',
                           log.read_text())[1]) for log in logs}
  assert len(stopped) == 1, stopped
  (step,) = stopped
  assert _saved_steps(workdir)[-1] == step

  port = free_port()
  resumed = [_running(c, log, env) for c, log in zip(commands(step + 2), logs)]
  with resumed[0] as first, resumed[1] as second:
    assert [first.wait(timeout=300), second.wait(timeout=300)] == [0, 0]
  for log in logs:
    assert f'Restored checkpoint {step}' in log.read_text()
  assert _saved_steps(workdir)[-1] == step + 2


def test_eval_mode_prints_centre_and_ten_crop_errors(uninterrupted, command):
  data_path, workdir = uninterrupted
  result = _run(command(data_path, workdir, '--mode=eval',
                         '--config.eval.checkpoint=best'))
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.strip().splitlines()
  assert re.match(r'Checkpoint \d+ \(best\) of ', lines[0])
  best = int(lines[0].split()[1])
  assert best in (4, 8, 12)  # only saves after an evaluation compete
  rows = {line[:12].strip(): line[12:].split() for line in lines[2:]}
  assert set(rows) == {'centre crop', '10-crop'}
  for top1, top5, examples in rows.values():
    assert 0 <= float(top5) <= float(top1) <= 1
    assert int(examples) == 100  # demo_shapes/tiny's validation split


# --- in-process: meshes, safety, init_from ---------------------------------


@pytest.fixture(scope='module')
def make_config(small_config):
  def make(data=1, model=1):
    config = small_config(data=data, model=model)
    config.checkpoint.asynchronous = False
    return config
  return make


def _trainer(config, num_devices):
  mesh = parallel.make_mesh(config.mesh, jax.devices()[:num_devices])
  return Trainer(config, mesh)


def _train(trainer, state, steps):
  losses = []
  for i in range(steps):
    state, metrics = trainer.train_step(
        state, synthetic_batch(trainer.config, trainer.config.batch_size, seed=i))
    losses.append(float(metrics.loss.compute()))
  return state, np.array(losses)


def _save(workdir, config, state):
  checkpoints = checkpointing.Checkpoints(str(workdir), config)
  checkpoints.save(state, results={}, evaluated=False)
  checkpoints.close()


def _restore(workdir, config, trainer):
  checkpoints = checkpointing.Checkpoints(str(workdir), config)
  try:
    return checkpoints.restore_latest(trainer)
  finally:
    checkpoints.close()


def test_save_on_4x2_mesh_restore_on_1_and_2_devices_and_back(tmp_path, make_config):
  config8 = make_config(data=4, model=2)
  trainer8 = _trainer(config8, 8)
  state, _ = _train(trainer8, trainer8.init(0), 2)
  _save(tmp_path / 'eight', config8, state)
  _, expected = _train(trainer8, state, 2)

  for num_devices, mesh in ((1, dict(data=1, model=1)), (2, dict(data=1, model=2))):
    config = make_config(**mesh)
    trainer = _trainer(config, num_devices)
    restored = _restore(tmp_path / 'eight', config, trainer)
    assert restored.step == 2
    kernel = restored.state.params['conv2']['kernel']
    assert kernel.sharding.mesh.devices.size == num_devices
    _, losses = _train(trainer, restored.state, 2)
    np.testing.assert_allclose(losses, expected, rtol=2e-5, atol=2e-5)

  # Saved on one device, restored onto the 4x2 mesh: unchanged, resharded.
  config1 = make_config()
  one_device = _trainer(config1, 1).init(0)
  _save(tmp_path / 'one', config1, one_device)
  restored = _restore(tmp_path / 'one', config8, trainer8)
  assert restored.state.params['conv2']['kernel'].sharding.mesh.devices.size == 8
  for a, b in zip(jax.tree.leaves(restored.state), jax.tree.leaves(one_device)):
    np.testing.assert_array_equal(a, b)


@pytest.fixture(scope='module')
def one_device(make_config):
  """A one-device trainer and a fresh state; compiled once for these tests."""
  config = make_config()
  trainer = _trainer(config, 1)
  return config, trainer, trainer.init(0)


def _at_step(state, step, seed):
  """`state` moved to `step` with its parameters and momentum changed."""
  return state.replace(
      step=jnp.asarray(step, state.step.dtype),
      params=jax.tree.map(lambda x: x + seed, state.params),
      opt_state=jax.tree.map(lambda x: x + seed, state.opt_state))


def _cut_short(workdir, step):
  for path in (workdir / 'checkpoints' / str(step) / 'state').rglob('*'):
    if path.is_file() and path.parent.name == 'd':  # the array data
      path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])


def test_unreadable_latest_checkpoint_falls_back_to_the_previous(one_device, tmp_path,
                                                                 caplog):
  config, trainer, state = one_device
  _save(tmp_path, config, _at_step(state, 1, seed=1))
  _save(tmp_path, config, _at_step(state, 2, seed=2))
  # Step 2's array data cut short, as by a crash mid-copy; a half-written
  # save of step 3 under orbax's temporary name.
  _cut_short(tmp_path, 2)
  (tmp_path / 'checkpoints' / '3.orbax-checkpoint-tmp-0').mkdir()

  with caplog.at_level('WARNING'):
    restored = _restore(tmp_path, config, trainer)
  assert restored.step == 1
  assert 'Checkpoint 2 in' in caplog.text and 'cannot be read' in caplog.text
  expected = _at_step(state, 1, seed=1)
  for a, b in zip(jax.tree.leaves(restored.state), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(a, b)
  # Set aside, not deleted, so step 2 can be saved again.
  assert (tmp_path / checkpointing.UNREADABLE_DIR / '2' / 'state').is_dir()
  assert _saved_steps(tmp_path) == [1]

  # With none readable the run stops and leaves the files where they are.
  _cut_short(tmp_path, 1)
  with pytest.raises(RuntimeError, match=r'None of the checkpoints \[1\]'):
    _restore(tmp_path, config, trainer)
  assert _saved_steps(tmp_path) == [1]


def test_a_checkpoint_whose_bytes_changed_is_corrupt_and_the_previous_is_used(
    one_device, tmp_path, caplog):
  config, trainer, state = one_device
  _save(tmp_path, config, _at_step(state, 1, seed=1))
  _save(tmp_path, config, _at_step(state, 2, seed=2))
  # One flipped bit in the middle of step 2's largest array file: orbax and
  # tensorstore read it without complaint; the digests saved with it do not.
  arrays = [p for p in (tmp_path / 'checkpoints' / '2' / 'state').rglob('*')
            if p.is_file() and p.parent.name == 'd']
  largest = max(arrays, key=lambda p: p.stat().st_size)
  data = bytearray(largest.read_bytes())
  data[len(data) // 2] ^= 0x10
  largest.write_bytes(bytes(data))

  with caplog.at_level('WARNING'):
    restored = _restore(tmp_path, config, trainer)
  assert restored.step == 1
  assert re.search(r'Checkpoint 2 in .* is corrupt: 1 of its arrays differ from '
                   r'what was saved \(\.', caplog.text)
  assert (tmp_path / checkpointing.UNREADABLE_DIR / '2').is_dir()
  expected = _at_step(state, 1, seed=1)
  for a, b in zip(jax.tree.leaves(restored.state), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(a, b)


def test_digests_change_with_any_word_of_any_dtype():
  tree = {'f': jnp.linspace(-1, 1, 1000, dtype=jnp.float32),
          'b': jnp.linspace(-1, 1, 999, dtype=jnp.bfloat16),
          'i': jnp.arange(7, dtype=jnp.int32), 'u': jnp.arange(2, dtype=jnp.uint32),
          'flag': jnp.array([True, False])}
  base = checkpointing.digests(tree)
  assert set(base) == {"['f']", "['b']", "['i']", "['u']", "['flag']"}
  for key, value in tree.items():
    for index in (0, value.size // 2, value.size - 1):
      changed = dict(tree, **{key: value.at[index].set(
          ~value[index] if value.dtype == jnp.bool_ else value[index] + 1)})
      assert checkpointing.digests(changed)[f"['{key}']"] != base[f"['{key}']"]
  swapped = dict(tree, f=tree['f'][::-1])  # the same words, in another order
  assert checkpointing.digests(swapped)["['f']"] != base["['f']"]


def test_changed_model_config_on_resume_names_the_keys(one_device, tmp_path, caplog,
                                                      make_config):
  config, trainer, state = one_device
  _save(tmp_path, config, state)
  changed = make_config()
  changed.model.num_classes = 5
  changed.data.image_size = 71
  changed.log_every_steps = 7  # harmless: allowed and logged
  with pytest.raises(checkpointing.ConfigMismatchError) as error:
    _restore(tmp_path, changed, _trainer(changed, 1))
  message = str(error.value)
  assert 'model.num_classes: 10 -> 5' in message
  assert 'data.image_size: 67 -> 71' in message
  assert 'log_every_steps' not in message

  harmless = make_config()
  harmless.log_every_steps = 7
  with caplog.at_level('INFO'):
    assert _restore(tmp_path, harmless, trainer).step == 0
  assert 'log_every_steps: 62 -> 7' in caplog.text


def test_init_from_takes_parameters_but_not_optimizer_state_or_step(one_device, tmp_path):
  config, trainer, state = one_device
  source = _at_step(state, 5, seed=1)
  _save(tmp_path / 'source', config, source)
  started = checkpointing.load_params(str(tmp_path / 'source'), trainer, state)
  for a, b in zip(jax.tree.leaves(started.params), jax.tree.leaves(source.params)):
    np.testing.assert_array_equal(a, b)
  assert int(started.step) == 0
  for a, b in zip(jax.tree.leaves(started.opt_state), jax.tree.leaves(state.opt_state)):
    np.testing.assert_array_equal(a, b)


def test_unwritable_checkpoint_directory_fails_at_the_first_save(one_device, tmp_path):
  config, _, state = one_device
  (tmp_path / 'checkpoints').write_text('a file where the directory should be')
  checkpoints = checkpointing.Checkpoints(str(tmp_path), config)
  with pytest.raises(checkpointing.CheckpointWriteError,
                     match=r'(?s)Could not write the first checkpoint .*writable --workdir'):
    checkpoints.save(state, results={}, evaluated=False)


def test_a_diverged_state_is_not_saved(one_device, tmp_path):
  config, _, state = one_device
  _save(tmp_path, config, _at_step(state, 1, seed=1))
  params = dict(state.params)
  params['fc6'] = jax.tree.map(lambda x: x.at[0].set(np.nan), params['fc6'])
  diverged = _at_step(state, 2, seed=0).replace(params=params)
  checkpoints = checkpointing.Checkpoints(str(tmp_path), config)
  with pytest.raises(FloatingPointError, match=(
      r"The state at step 2 holds NaN or infinite values \(\['params'\]\['fc6'\]"
      r".*a diverged state is not saved as a checkpoint")):
    checkpoints.save(diverged, results={}, evaluated=False)
  checkpoints.close()
  assert _saved_steps(tmp_path) == [1]


def test_a_second_run_on_a_workdir_in_use_is_refused(uninterrupted, tmp_path, command):
  data_path, reference = uninterrupted
  workdir = tmp_path / 'work'
  shutil.copytree(reference, workdir)
  before = sorted(p.relative_to(workdir) for p in workdir.rglob('*'))
  with run_files.WorkdirLock(str(workdir)):  # a run in progress, in this process
    result = _run(command(data_path, workdir, f'--config.num_train_steps={NUM_STEPS + 4}'))
  assert result.returncode != 0
  assert re.search(rf'{workdir} is in use by the run of process {os.getpid()} on '
                   rf'{re.escape(socket.gethostname())}', result.stderr)
  assert sorted(p.relative_to(workdir) for p in workdir.rglob('*')) == before
  assert _saved_steps(workdir) == _saved_steps(reference)


def test_a_lock_left_by_a_killed_run_is_reported_and_taken_over(tmp_path, caplog):
  dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                        capture_output=True, text=True, check=True)
  (tmp_path / run_files.LOCK).write_text(
      f'{{"host": "{socket.gethostname()}", "pid": {dead.stdout.strip()}, '
      '"since": "2026-11-30 10:00:00"}')
  with caplog.at_level('WARNING'), run_files.WorkdirLock(str(tmp_path)):
    assert f'"pid": {os.getpid()}' in (tmp_path / run_files.LOCK).read_text()
  assert f'process {dead.stdout.strip()} on' in caplog.text
  assert 'ended without releasing its lock' in caplog.text
  assert (tmp_path / run_files.LOCK).read_text() == ''  # released cleanly


def test_a_full_disk_is_named_in_the_last_lines(uninterrupted, tmp_path, command):
  # Files may not grow past 62 KiB: the first checkpoint's arrays cannot be
  # written, as on a full disk. The shell sets the limit (a preexec_fn would
  # run Python in a fork of this multithreaded process), and writes past it
  # fail with EFBIG instead of raising SIGXFSZ.
  data_path, _ = uninterrupted
  workdir = tmp_path / 'work'
  result = subprocess.run(
      ['bash', '-c', "trap '' XFSZ; ulimit -f 62; exec \"$@\"", '--',
       *command(data_path, workdir)], cwd=REPO, capture_output=True, text=True,
      timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2',
                            # nor may it write the tests' compilation cache
                            JAX_ENABLE_COMPILATION_CACHE='false'))
  assert result.returncode == 1, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  errors = [i for i, line in enumerate(lines) if line.startswith('Error: ')]
  assert errors, result.stderr[-3000:]
  error = errors[-1]
  assert lines[error].startswith(
      f'Error: Could not write the first checkpoint (step 3) to {workdir}/checkpoints: '
      'a checkpoint needs about'), lines[error:]
  assert 'MiB are free on the file system of' in lines[error]
  assert lines[-2].startswith('Free disk space or pass a writable --workdir')
  assert lines[-1].startswith(f'(its traceback is in {workdir}/error.log')
  assert not any('Traceback' in line for line in lines[error:])  # nothing after it


# A mode that fails while a library thread prints, as tensorstore's callbacks
# into orbax's closed event loops do after a failed save (tracebacks through
# sys.unraisablehook, a piece at a time): its lines begin once the run's own
# traceback is logged, and one is nearly always unfinished.
_CHATTER_THEN_FAIL = """
import logging, sys, threading, time
import main

failed = threading.Event()

class Cue(logging.Handler):
  def emit(self, record):
    if record.levelno >= logging.ERROR:
      failed.set()
      time.sleep(0.1)  # the library thread's turn

def chatter():
  failed.wait()
  while True:
    sys.stderr.write('Traceback (most recent call last):\\n    ')
    sys.stderr.flush()
    time.sleep(0.01)
    sys.stderr.write("raise RuntimeError('Event loop is closed')\\n")

def fail(config):
  logging.getLogger().addHandler(Cue())
  threading.Thread(target=chatter, daemon=True).start()
  raise OSError('No space left on device\\nFree disk space.')

main.MODES['summary'] = main.Mode('__main__:fail', help='fails')
main.app.run(main.main, flags_parser=main.parse_flags)
"""


def test_the_error_is_the_last_lines_whatever_other_threads_print():
  result = subprocess.run(
      [sys.executable, '-c', _CHATTER_THEN_FAIL, '--config=configs/demo.py:size=tiny',
       '--mode=summary'], cwd=REPO, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert result.returncode == 1, result.stderr[-3000:]
  assert result.stderr.splitlines()[-2:] == [
      'Error: No space left on device', 'Free disk space.'], result.stderr[-3000:]


def test_a_full_disk_at_results_json_says_how_much_is_free_and_what_to_do(tmp_path):
  # /dev/full takes the write of the results' temporary file: ENOSPC.
  os.symlink('/dev/full', tmp_path / 'results.json.tmp')
  with pytest.raises(run_files.DiskFullError, match=(
      rf'Could not write {tmp_path}/results.json: No space left on device; '
      rf'[\d,.]+ MiB are free on the file system of {tmp_path}. Free disk space, '
      'then run the same command to resume from the last checkpoint.')):
    run_files.write_results(str(tmp_path), {'val_top1_error': 0.5, 'note': 'x' * 10000})
  assert not os.listdir(tmp_path)  # nor is a temporary file left


def test_no_room_for_one_checkpoint_stops_at_start(one_device, tmp_path, monkeypatch):
  _, _, state = one_device
  usage = shutil.disk_usage(tmp_path)._replace(free=1000)
  monkeypatch.setattr(checkpointing.shutil, 'disk_usage', lambda path: usage)
  with pytest.raises(checkpointing.CheckpointWriteError, match=(
      rf'No room for a checkpoint in {tmp_path}: the disk is full: a checkpoint '
      r'needs about [\d.]+ MiB and 0.0 MiB are free')):
    checkpointing.check_disk_space(str(tmp_path), state, copies=4)

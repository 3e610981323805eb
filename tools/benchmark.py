"""--mode=benchmark: train-step throughput of a config against a reference.

Both models are compiled on the same mesh and timed in alternation on the same
synthetic batch, so the ratio is fair on a shared, noisy machine. The default
reference is the same network as a single tower: the paper's two towers do
~35% fewer FLOPs, so they should not be slower.
"""

import time

import jax
import ml_collections

import input_pipeline
import parallel
from trainer import Trainer, synthetic_batch


def _step_timer(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
  trainer = Trainer(config, mesh)
  state = trainer.init(config.seed)
  batch = synthetic_batch(config, parallel.process_batch_size(config.batch_size))
  state, _ = trainer.train_step(state, batch)  # compile
  jax.block_until_ready(state)

  def run(steps: int) -> float:
    nonlocal state
    start = time.perf_counter()
    for _ in range(steps):
      state, _ = trainer.train_step(state, batch)
    jax.block_until_ready(state)
    return (time.perf_counter() - start) / steps

  return run


def benchmark(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict,
              steps: int = 5, rounds: int = 3) -> dict[str, float]:
  """Images/s of `config` and `reference`; the best of `rounds` alternations."""
  mesh = parallel.make_mesh(config.mesh)
  timers = {'config': _step_timer(config, mesh), 'reference': _step_timer(reference, mesh)}
  best = {name: float('inf') for name in timers}
  for _ in range(rounds):
    for name, run in timers.items():
      best[name] = min(best[name], run(steps))
  return {f'{name}_images_per_sec': config.batch_size / t for name, t in best.items()}


def single_tower(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  reference = config.copy_and_resolve_references()
  reference.model.towers = 1
  return reference


def report(config: ml_collections.ConfigDict) -> str:
  config = input_pipeline.with_dataset_classes(config)
  result = benchmark(config, single_tower(config))
  mine, ref = result['config_images_per_sec'], result['reference_images_per_sec']
  return (f'device: {jax.devices()[0].device_kind} x{jax.device_count()}, '
          f'batch {config.batch_size}, dtype {config.model.dtype}\n'
          f'towers={config.model.towers}: {mine:.1f} img/s   towers=1: {ref:.1f} img/s\n'
          f'train step img/s: {mine:.1f}  vs single tower: {mine / ref:.2f}x')

"""The train state, the paper's optimizer, and the train/eval steps compiled for a mesh.

Nothing here reads data or writes files, so it runs wherever JAX does.
"""

import contextlib
import functools
from typing import Any, Iterator

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import ml_collections
import numpy as np
import optax
from clu import metrics
from optax.contrib import ReduceLROnPlateauState

import lr_schedule
import parallel
from models import AlexNet
from models.alexnet import RELU_LAYERS, relu_output
from runtime import dispatch, errors


@flax.struct.dataclass
class TrainState:
  """Everything that evolves during training."""
  step: jax.Array
  params: Any
  batch_stats: Any                  # BatchNorm running statistics, or {}
  opt_state: optax.OptState
  plateau: ReduceLROnPlateauState   # the learning-rate plateau logic
  rng: jax.Array                    # dropout key; folded with the step


class NonFiniteError(errors.UserError, FloatingPointError):
  """A state holds NaN or infinite values, or its outputs do: it diverged."""


_ERRORS = dict(
    loss=metrics.Average.from_output('loss'),
    top1_error=metrics.Average.from_output('top1_error'),
    top5_error=metrics.Average.from_output('top5_error'))
# How many examples got a NaN or infinite logit (its total; evaluation.py
# refuses to score a state that has any).
_NONFINITE = dict(nonfinite=metrics.Average.from_output('nonfinite'))
# The share of each ReLU's outputs that are zero: the sparsity the paper
# credits ReLUs with (section 3.1), per layer, measured when evaluating (in
# the train step it would cost collectives across the towers every step).
_RELU_ZEROS = {f'relu_zeros_{layer}': metrics.Average.from_output(f'relu_zeros_{layer}')
               for layer in RELU_LAYERS}
EvalMetrics = metrics.Collection.create(**_ERRORS, **_RELU_ZEROS, **_NONFINITE)
TrainMetrics = metrics.Collection.create(
    **_ERRORS, learning_rate=metrics.LastValue.from_output('learning_rate'))


def paper_sgd(learning_rate: float, momentum: float,
              weight_decay: float) -> optax.GradientTransformation:
  """The paper's update: v <- m v - wd lr w - lr g;  w <- w + v.

  Scaling by the learning rate before the momentum trace (unlike optax.sgd)
  keeps past steps at the rate they were taken with when the rate drops.
  """
  return optax.chain(
      optax.add_decayed_weights(weight_decay),
      optax.scale_by_learning_rate(learning_rate),
      optax.trace(decay=momentum))


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  # The learning rate is injected so each step can set it from the schedule.
  return optax.inject_hyperparams(paper_sgd)(**config.optimizer)


def classification_outputs(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
  """Per-example cross-entropy loss and top-1 / top-5 errors.

  The label's rank (how many other classes score at least as high) gives
  both errors without top_k, which XLA's partitioner would gather across
  the batch shards. A tie counts against the label, and an example with a
  NaN or infinite logit is wrong at every k: a diverged model scores no
  example right.
  """
  label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
  rank = jnp.sum(logits >= label_logit, axis=-1) - 1  # less the label itself
  rank = jnp.where(finite_rows(logits), rank, logits.shape[-1])
  return dict(
      loss=optax.softmax_cross_entropy_with_integer_labels(logits, labels),
      top1_error=(rank >= 1).astype(jnp.float32),
      top5_error=(rank >= 5).astype(jnp.float32))


def finite_rows(logits: jax.Array) -> jax.Array:
  """Per example, whether all its logits are finite."""
  return jnp.all(jnp.isfinite(logits), axis=-1)


def relu_zero_fractions(relus: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """'relu_zeros_<layer>': per example, the fraction of the layer's ReLU
  outputs that are exactly zero. Convolutions' outputs are tower-major
  (towers, batch, ...), the fully connected layers' (batch, features)."""
  fractions = {}
  for layer, x in relus.items():
    batch_axis = 1 if x.ndim == 5 else 0
    fractions[f'relu_zeros_{layer}'] = jnp.mean(
        (x == 0).astype(jnp.float32),
        axis=tuple(a for a in range(x.ndim) if a != batch_axis))
  return fractions


def mean_windows(mean_image: np.ndarray, corner: jax.Array, size: int) -> jax.Array:
  """`mean_image`'s (size, size) windows at `corner`'s (top, left) pairs:
  (..., 2) -> (..., size, size, 3)."""
  flat = corner.reshape(-1, 2)
  windows = jax.vmap(lambda c: lax.dynamic_slice(
      jnp.asarray(mean_image), (c[0], c[1], 0), (size, size, 3)))(flat)
  return windows.reshape(*corner.shape[:-1], size, size, 3)


def standardize(batch: dict[str, jax.Array], std: tuple[float, ...],
                mean_image: np.ndarray | None = None) -> jax.Array:
  """The model's input: (image + shift) / std in float32, reflected where
  the batch's 'flip' says (training batches).

  The input pipeline sends uint8 pixels, each image's colour shift (minus
  the per-channel mean, plus its PCA lighting offset) and, for training,
  whether to reflect it; done here, all of it fuses into one pass before
  the first convolution instead of costing the host a pass over the pixels.
  A batch with 'corner' (made with a mean image) has `mean_image`'s window
  at each crop's corner subtracted too. Evaluation's ten crops come as
  five patches, (N, 5, S, S, 3), and leave as (N, 10, S, S, 3), the five
  then their reflections (section 4.1).
  """
  shift = batch['shift']
  if 'corner' in batch:
    if mean_image is None:
      raise ValueError("The batch has crop corners ('corner') for a mean image, "
                       'but the Trainer was given no mean_image; pass it '
                       'input_pipeline.Dataset.mean_image.')
    shift = shift - mean_windows(mean_image, batch['corner'], batch['image'].shape[-2])
  images = (batch['image'].astype(jnp.float32) + shift) / jnp.float32(std)
  if 'flip' in batch:
    images = jnp.where(batch['flip'][:, None, None, None], images[:, :, ::-1],
                       images)
  if images.ndim == 5:
    images = jnp.concatenate([images, images[:, :, :, ::-1]], axis=1)
  return images


def synthetic_batch(config: ml_collections.ConfigDict, batch_size: int,
                    seed: int = 0, corners: bool = False) -> dict[str, np.ndarray]:
  """Random uint8 images and labels laid out as the input pipeline's
  training batches; with `corners`, as it lays them out for a mean image."""
  rng = np.random.RandomState(seed)
  size = config.data.image_size
  batch = {'image': rng.randint(0, 256, (batch_size, size, size, 3)).astype(np.uint8),
           'shift': np.tile(-np.float32(config.data.mean_rgb), (batch_size, 1, 1, 1)),
           'label': rng.randint(0, config.model.num_classes, batch_size).astype(np.int32),
           'flip': rng.rand(batch_size) < 0.5}
  if corners:
    batch['shift'] = np.zeros_like(batch['shift'])
    far = config.data.resize_size - size
    batch['corner'] = rng.randint(0, far + 1, (batch_size, 2)).astype(np.int32)
  return batch


def _variables(state: TrainState, params: Any) -> dict[str, Any]:
  return {'params': params, **({'batch_stats': state.batch_stats}
                               if state.batch_stats else {})}


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: nn.Module,
               tx: optax.GradientTransformation,
               learning_rate: lr_schedule.LearningRate,
               std: tuple[float, ...], mean_image: np.ndarray | None = None
               ) -> tuple[TrainState, TrainMetrics]:
  """One SGD step on a global batch."""
  dropout_rng = jax.random.fold_in(state.rng, state.step)
  images = standardize(batch, std, mean_image)

  def loss_fn(params):
    logits, updates = model.apply(
        _variables(state, params), images, train=True,
        rngs={'dropout': dropout_rng}, mutable=['batch_stats'])
    outputs = classification_outputs(logits, batch['label'])
    return outputs['loss'].mean(), (outputs, updates)

  grads, (outputs, updates) = jax.grad(loss_fn, has_aux=True)(state.params)
  lr = learning_rate(state.step, state.plateau)
  opt_state = state.opt_state
  opt_state.hyperparams['learning_rate'] = lr
  param_updates, opt_state = tx.update(grads, opt_state, state.params)
  new_state = state.replace(
      step=state.step + 1,
      params=optax.apply_updates(state.params, param_updates),
      batch_stats=updates.get('batch_stats', state.batch_stats),
      opt_state=opt_state)
  return new_state, TrainMetrics.single_from_model_output(learning_rate=lr, **outputs)


def _forward(state: TrainState, images: jax.Array, model: nn.Module
             ) -> tuple[jax.Array, dict[str, jax.Array], jax.Array]:
  """Logits of (N, H, W, C) images, or of (N, crops, H, W, C) crops; each
  ReLU layer's per-example share of zeros (relu_zero_fractions); and fc7's
  ReLU output. Over crops, the shares and fc7 are averaged.

  The paper's test averages the crops' softmax; log of that mean, taken
  stably, stands in for the logits.
  """
  crops = images.shape[1] if images.ndim == 5 else 1
  flat = images.reshape(-1, *images.shape[-3:])
  logits, captured = model.apply(_variables(state, state.params), flat,
                                 train=False, mutable=['intermediates'])
  relus = {layer: captured['intermediates'][relu_output(layer)][0]
           for layer in RELU_LAYERS}
  zeros = {k: v.reshape(-1, crops).mean(axis=1)
           for k, v in relu_zero_fractions(relus).items()}
  fc7 = relus['fc7'].reshape(-1, crops, relus['fc7'].shape[-1]).mean(axis=1)
  if crops > 1:
    log_probs = jax.nn.log_softmax(logits).reshape(-1, crops, logits.shape[-1])
    logits = jax.nn.logsumexp(log_probs, axis=1) - jnp.log(crops)
  return logits, zeros, fc7


def eval_step(state: TrainState, batch: dict[str, jax.Array], total: EvalMetrics, *,
              model: nn.Module, std: tuple[float, ...],
              mean_image: np.ndarray | None = None) -> EvalMetrics:
  """`total` with the batch's metrics merged in: one computation per batch,
  where merging outside would queue one per metric."""
  logits, zeros, _ = _forward(state, standardize(batch, std, mean_image), model)
  return total.merge(EvalMetrics.single_from_model_output(
      mask=batch['mask'], **classification_outputs(logits, batch['label']),
      nonfinite=(~finite_rows(logits)).astype(jnp.float32), **zeros))


def predict_step(state: TrainState, batch: dict[str, jax.Array], *,
                 model: nn.Module, std: tuple[float, ...],
                 mean_image: np.ndarray | None = None) -> dict[str, jax.Array]:
  """Class probabilities (averaged over the crops of a 10-crop batch) and
  fc7's activations, the features of the paper's Figure 4."""
  logits, _, fc7 = _forward(state, standardize(batch, std, mean_image), model)
  return {'probabilities': jax.nn.softmax(logits), 'fc7': fc7}


_TRAIN_KEYS = frozenset({'image', 'shift', 'flip', 'label'})
_EVAL_KEYS = frozenset({'image', 'shift', 'label', 'mask'})
_PREDICT_KEYS = frozenset({'image', 'shift'})


def _check_keys(batch: dict[str, np.ndarray], keys: frozenset[str]) -> None:
  if missing := keys - batch.keys():
    raise ValueError(
        f'The batch lacks {sorted(missing)}: the steps take {sorted(keys)}, '
        "pixels in 'image', the colour to add in 'shift' and, to train, "
        "whether to reflect in 'flip', as input_pipeline and synthetic_batch "
        'make them.')


class Trainer:
  """The model, optimizer and schedule, compiled for one mesh."""

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
               steps_per_epoch: int | None = None,
               mean_image: np.ndarray | None = None):
    """`steps_per_epoch` places a step schedule's boundaries (training);
    `mean_image` is subtracted under the crops of batches that carry their
    corners (input_pipeline.Dataset.mean_image; data/batching.py)."""
    parallel.check_rules(config.axis_rules)
    parallel.check_batch(config.batch_size, mesh, config.axis_rules)
    parallel.check_batch(config.eval_batch_size, mesh, config.axis_rules,
                         'eval_batch_size')
    if config.model.num_classes < 1:
      raise ValueError(
          f'model.num_classes={config.model.num_classes}: 0 stands for the '
          "dataset's count, which input_pipeline.with_dataset_classes(config) "
          'fills in (main.py does); or set --config.model.num_classes.')
    self.config = config
    self.mesh = mesh
    self.mean_image = mean_image
    self.rules = list(config.axis_rules)
    self.model = AlexNet(**config.model)
    self.tx = create_optimizer(config)
    self.learning_rate = lr_schedule.LearningRate(
        config.optimizer, config.schedule, steps_per_epoch)
    self.batch_sharding = parallel.batch_sharding(mesh, self.rules)

    with self._context():
      abstract = jax.eval_shape(self._boxed_state, jax.random.PRNGKey(0))
    self.state_sharding = parallel.logical_shardings(abstract, mesh, self.rules)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    self._p_init = jax.jit(lambda rng: nn.meta.unbox(self._boxed_state(rng)),
                           out_shardings=self.state_sharding)
    std = tuple(config.data.std_rgb)
    self._p_train_step = jax.jit(
        functools.partial(train_step, model=self.model, tx=self.tx,
                          learning_rate=self.learning_rate, std=std,
                          mean_image=mean_image),
        in_shardings=(self.state_sharding, self.batch_sharding),
        out_shardings=(self.state_sharding, replicated), donate_argnums=0)
    self._p_eval_step = jax.jit(
        functools.partial(eval_step, model=self.model, std=std,
                          mean_image=mean_image),
        in_shardings=(self.state_sharding, self.batch_sharding, replicated),
        out_shardings=replicated)
    self._p_no_metrics = jax.jit(EvalMetrics.empty, out_shardings=replicated)
    self._in_flight = dispatch.Window()
    self._p_predict_step = jax.jit(
        functools.partial(predict_step, model=self.model, std=std,
                          mean_image=mean_image),
        in_shardings=(self.state_sharding, self.batch_sharding),
        out_shardings=replicated)

  @contextlib.contextmanager
  def _context(self):
    """Tracing happens under the mesh and the logical-axis rules."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield

  def _boxed_state(self, rng: jax.Array) -> TrainState:
    params_rng, dropout_rng = jax.random.split(rng)
    # One example per batch shard, so sharded layers see a divisible batch.
    size = self.config.data.image_size
    dummy = jnp.zeros((parallel.batch_shards(self.mesh, self.rules), size, size, 3),
                      jnp.float32)
    variables = self.model.init(params_rng, dummy, train=False)
    params = variables['params']
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params,
        batch_stats=variables.get('batch_stats', {}),
        opt_state=self.tx.init(params), plateau=self.learning_rate.init(),
        rng=dropout_rng)

  def init(self, seed: int) -> TrainState:
    with self._context():
      return self._p_init(jax.random.PRNGKey(seed))

  def abstract_state(self) -> TrainState:
    """The state's shapes, dtypes and shardings on this mesh, computing nothing.

    Restoring a checkpoint into it reshards the saved state onto this mesh.
    """
    with self._context():
      return jax.eval_shape(self._p_init, jax.random.PRNGKey(0))

  def lower_train_step(self) -> jax.stages.Lowered:
    """The train step lowered for this mesh on abstract inputs (no data, no init)."""
    batch = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.batch_sharding),
        synthetic_batch(self.config, self.config.batch_size,
                        corners=self.mean_image is not None))
    state = self.abstract_state()
    with self._context():
      return self._p_train_step.lower(state, batch)

  def train_step(self, state: TrainState,
                 batch: dict[str, np.ndarray]) -> tuple[TrainState, TrainMetrics]:
    _check_keys(batch, _TRAIN_KEYS)
    with self._context():
      state, metrics = self._p_train_step(
          state, parallel.global_batch(batch, self.batch_sharding))
    self._in_flight.add(metrics)
    return state, metrics

  def evaluate(self, state: TrainState,
               batches: Iterator[dict[str, np.ndarray]]) -> EvalMetrics:
    with self._context():
      total, empty = self._p_no_metrics(), True
      for batch in batches:
        _check_keys(batch, _EVAL_KEYS)
        total = self._p_eval_step(
            state, parallel.global_batch(batch, self.batch_sharding), total)
        self._in_flight.add(total)
        empty = False
    if empty:
      raise ValueError('The evaluation split yielded no batches.')
    return total

  def predict(self, state: TrainState,
              batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A batch's class probabilities and fc7 features (predict_step), of
    its 'image', 'shift' and 'corner' only, as NumPy arrays."""
    _check_keys(batch, _PREDICT_KEYS)
    batch = {k: batch[k] for k in _PREDICT_KEYS | ({'corner'} & batch.keys())}
    with self._context():
      out = self._p_predict_step(state, parallel.global_batch(batch, self.batch_sharding))
    return jax.device_get(out)

  def after_eval(self, state: TrainState, val_top1_error: float) -> TrainState:
    return state.replace(
        plateau=self.learning_rate.after_eval(state.plateau, val_top1_error))

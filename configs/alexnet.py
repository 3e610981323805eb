"""The paper's AlexNet on ImageNet, and its ablations.

Variants are parsed from the text after the colon, e.g.
  --config=configs/alexnet.py:lrn=off,pool=2x2
  --config=configs/alexnet.py:arch=owt
  --config=configs/alexnet.py:arch=one_gpu
  --config=configs/alexnet.py:towers=1,norm=batchnorm,init=modern,dtype=bfloat16
Every field can also be overridden with --config.KEY=VALUE.
"""

from __future__ import annotations

from collections.abc import Mapping

import ml_collections

from configs import parallelism, variants
from models import presets

# None: the architecture's choice.
VARIANTS: dict[str, str | None] = dict(
    arch='paper',            # models/presets.py: ARCHITECTURES
    size='full',             # full | tiny (models/presets.py: SIZES)
    towers=None,             # 1 | 2
    norm=None,               # lrn | batchnorm | none
    lrn=None,                # on | off: shorthand for norm=lrn | norm=none
    norm_position='before_pool',  # before_pool (the paper) | after_pool (CaffeNet)
    pool='3x3',              # 3x3 (overlapping, stride 2) | 2x2 (non-overlapping)
    init=None,               # paper: N(0, 0.01), biases 1 | modern: He normal, biases 0
    dtype='float32',         # compute dtype: float32 | bfloat16 (params stay float32)
    schedule='plateau',      # plateau | step
    parallel='data',         # configs/parallelism.py: STRATEGIES
    mean=None,               # image (the paper's; the demo: channel) | channel
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the paper's training setup, adjusted by the `arg` variants."""
  return build(variants.parse(arg, VARIANTS))


def build(v: Mapping[str, str | None]) -> ml_collections.ConfigDict:
  """The config of parsed variants `v` (every key of VARIANTS)."""
  arch = variants.choose('arch', v['arch'], presets.ARCHITECTURES)
  size = variants.choose('size', v['size'], presets.SIZES)
  norm = v['norm'] or arch['norm']
  if v['lrn']:
    norm = variants.choose('lrn', v['lrn'], {'on': 'lrn', 'off': 'none'})
  init = v['init'] or arch['init']
  mean_image = variants.choose('mean', v['mean'] or 'image',
                               {'image': True, 'channel': False})

  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict(dict(
      name='imagenet2012',
      # Where TFDS keeps prepared datasets (None: TFDS's default, ~/tensorflow_datasets).
      data_dir=ml_collections.FieldReference(None, field_type=str),
      # Where manually downloaded archives lie (None: <data_dir>/downloads/manual).
      manual_dir=ml_collections.FieldReference(None, field_type=str),
      train_split='train',
      eval_split='validation',
      # A folder of images, one sub-folder per class, read instead of the
      # TFDS dataset `name` (data/image_folder.py has the layouts).
      image_folder=ml_collections.FieldReference(None, field_type=str),
      # Held out of each class when the folder has no validation/ sub-folder.
      val_fraction=0.0,
      # ILSVRC-2012 extracted (train/<synset>/, val/ in synset folders or flat
      # with the devkit's or Kaggle's labels; data/imagenet_folder.py), read
      # instead of the TFDS dataset, with imagenet2012's labels.
      imagenet_folder=ml_collections.FieldReference(None, field_type=str),
      # The 256x256 copy written by --mode=prepare; read instead of the source when set.
      prepared_dir=ml_collections.FieldReference(None, field_type=str),
      resize_size=256,          # shorter side, then the central square
      image_size=arch['image_size'],
      # The paper trains on raw centred RGB (0-255): the per-pixel mean image
      # of the training split subtracted (section 2), or with mean=channel
      # the per-channel mean_rgb.
      mean_image=mean_image,
      mean_rgb=(123.68, 116.78, 103.94),
      std_rgb=(1.0, 1.0, 1.0),
      # Statistics written by --mode=stats (data/statistics.py). None: with
      # mean_image, those cached beside the data, computed on first use.
      # Statistics replace mean_rgb, eigval and eigvec.
      stats_file=ml_collections.FieldReference(None, field_type=str),
      # PCA lighting (section 4.1): alpha_i ~ N(0, pca_sigma) per image per
      # presentation (0 turns it off), times eigval_i along eigvec_i.
      # eigval are eigenvalues of the covariance, i.e. variances, of RGB
      # pixels in [0, 1] (the paper's lambda_i; --mode=stats writes the same),
      # eigvec its eigenvectors (columns). These are ImageNet's, from
      # fb.resnet.torch (datasets/imagenet.lua), as most re-implementations
      # use them; docs/data.md checks that they are variances.
      pca_sigma=0.1,
      eigval=(0.2175, 0.0188, 0.0045),
      eigvec=((-0.5675, 0.7192, 0.4009),
              (-0.5808, -0.0045, -0.8140),
              (-0.5836, -0.6948, 0.4203)),
      # libjpeg's inverse DCT: 'accurate' (exact: the pixels PIL decodes) or
      # 'fast' (colours shifted by about a level; docs/data.md).
      jpeg_dct='accurate',
      # Skip (and count) images that fail to decode, rather than stop.
      skip_corrupt=True,
      shuffle_buffer=16_384,    # TFDS sources; image folders shuffle fully
      prefetch=2,
  ))

  config.model = ml_collections.ConfigDict(dict(
      num_classes=0,  # 0: the dataset's (1000 for imagenet2012)
      towers=variants.choose('towers', v['towers'] or str(arch['towers']),
                             {'1': 1, '2': 2}),
      features=presets.conv_features(arch, size.get('features', arch['features'])),
      fc_features=size.get('fc_features', (4096, 4096)),
      conv1_kernel=11,
      conv1_stride=4,
      conv1_padding=arch['conv1_padding'],
      norm=variants.choose('norm', norm, ('lrn', 'batchnorm', 'none')),
      norm_position=variants.choose('norm_position', v['norm_position'],
                                    ('before_pool', 'after_pool')),
      lrn_k=2.0, lrn_n=5, lrn_alpha=1e-4, lrn_beta=0.75,
      pool_window=variants.choose('pool', v['pool'], {'3x3': 3, '2x2': 2}),
      pool_stride=2,
      dropout_rate=0.5,
      dropout_position=arch['dropout_position'],  # after (paper) | before fc6, fc7
      initialization=variants.choose('init', init, ('paper', 'modern')),
      dtype=variants.choose('dtype', v['dtype'], ('float32', 'bfloat16')),
      # How the 3x3 convolutions are computed: 'auto' takes Winograd's
      # algorithm in float32 on a CPU and XLA's convolution elsewhere
      # (models/winograd.py); 'direct' or 'winograd' forces one.
      conv_algorithm='auto',
  ))

  config.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=0.01,
      momentum=0.9,
      weight_decay=0.0005,
  ))
  config.schedule = ml_collections.ConfigDict(dict(
      name=variants.choose('schedule', v['schedule'], ('plateau', 'step')),
      factor=0.1,
      # plateau: divide when validation top-1 error has not improved by
      # `threshold` (absolute) for `patience` evaluations; at most
      # `max_reductions` times, as in the paper.
      patience=4,
      threshold=0.001,
      max_reductions=3,
      # step: divide at these epochs.
      boundaries=(30, 60, 80),
  ))

  config.batch_size = 128          # global, over all devices and hosts
  config.eval_batch_size = 128
  config.num_epochs = 90
  config.num_train_steps = -1      # > 0 stops earlier (tests, smoke runs)
  config.eval_every_epochs = 1.0
  config.log_every_steps = 100
  config.console_every_secs = 10.0  # at most one progress line this often; 0: every report

  # Orbax checkpoints in <workdir>/checkpoints, also saved at the end of each
  # epoch, after each evaluation and on SIGTERM; rerunning resumes the latest.
  config.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=1000,   # <= 0: only at those points
      keep=3,             # the latest `keep` checkpoints...
      keep_best=1,        # ...and, besides them, the best by val top-1 error
      asynchronous=True,  # write in the background while training goes on
      # Resume even if the data differ from those the checkpoint trained on
      # (other files, classes or statistics): refused by default.
      allow_other_data=False,
  ))
  # A checkpoint (a workdir, or its checkpoints/<step>) whose parameters start
  # this run; its optimizer state and step are not taken.
  config.init_from = ml_collections.FieldReference(None, field_type=str)
  # --mode=eval evaluates this checkpoint: 'latest', 'best' or a step number.
  config.eval = ml_collections.ConfigDict(dict(checkpoint='latest'))
  # --mode=predict classifies, and --mode=neighbours finds the nearest
  # training images of, `inputs`: files or folders (recursively), comma-separated.
  config.predict = ml_collections.ConfigDict(dict(
      inputs=ml_collections.FieldReference(None, field_type=str),
      format='text',        # text | json (one JSON object a line)
      top_k=5,
      ten_crop=False,       # the paper's 10-crop average instead of the centre crop
      neighbours=7,         # training images shown per query (Figure 4)
      # Search at most this many training images, evenly spaced (0: all);
      # fc7 features cost 2 bytes a dimension an image (docs/using.md).
      neighbour_subset=0,
  ))

  # --mode=benchmark (tools/benchmark.py): JAX against PyTorch, per architecture.
  config.benchmark = ml_collections.ConfigDict(dict(
      architectures='paper,towers=1,one_gpu,owt',  # of tools/benchmark.py: ARCHITECTURES
      variants='',          # added to every architecture's, e.g. 'size=tiny'
      steps=3,              # timed steps a round, in each framework
      rounds=3,             # rounds, alternating between the frameworks
      torch='best',         # best: PyTorch's fastest mode | eager | compile | off: JAX alone
      malloc='reuse',       # reuse: both workers keep freed memory (tools/benchmark.py: MALLOC) | system
  ))
  # Steps (first, count) whose JAX profiler trace goes to <workdir>/profile;
  # () traces none.
  config.profile_steps = ()

  parallel = variants.choose('parallel', v['parallel'], parallelism.STRATEGIES)
  # -1: all devices the other axis leaves.
  config.mesh = ml_collections.ConfigDict(dict(data=-1, model=parallel['model']))
  config.axis_rules = parallel['rules']
  return config

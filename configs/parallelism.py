"""Parallelism strategies, chosen with the config variant `parallel=NAME`.

A strategy is a mesh 'model' size and a rule table mapping the model's
logical axis names (models/layers.py: LOGICAL_AXES) to the mesh axes
('data', 'model') that parallel.py builds. Names a table leaves out are
replicated. Rules apply in order and a mesh axis is used once per array:
fc6 and fc7 split their outputs over 'model' ('fc_out' first), fc8, whose
classes stay whole, splits its inputs. docs/parallelism.md compares them.
"""

STRATEGIES: dict[str, dict] = {
    # Pure data parallelism: every device holds all parameters.
    'data': dict(model=1, rules=(
        ('batch', 'data'), ('fc_batch', 'data'))),
    # The paper (section 3.2): each tower on its own 'model' shard; conv3 and
    # fc6-fc8 read both towers, the only places the shards exchange
    # activations.
    'two_tower': dict(model=2, rules=(
        ('batch', 'data'), ('fc_batch', 'data'), ('tower', 'model'),
        ('fc_out', 'model'), ('fc_in', 'model'))),
    # Krizhevsky 2014: convolutions data parallel over every device, fully
    # connected layers model parallel (their batch gathered over 'model').
    'owt': dict(model=2, rules=(
        ('batch', ('data', 'model')), ('fc_batch', 'data'), ('fc_out', 'model'),
        ('fc_in', 'model'))),
    # Data parallel with the fully connected weights and their momentum
    # (96% of the state) sharded over 'data', gathered when used.
    'fsdp': dict(model=1, rules=(
        ('batch', 'data'), ('fc_batch', 'data'), ('fc_in', 'data'))),
}

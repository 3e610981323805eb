"""Tools around training: what inspects or measures it.

  summary          --mode=summary: every layer's shape, parameters and FLOPs
  layer_times      each layer's forward and backward time beside PyTorch's
  benchmark        --mode=benchmark: train-step img/s against a reference
  comm_report      --mode=comm_report: the collectives of the compiled step
  benchmark_input  --mode=benchmark_input: input img/s against baselines
  synthetic_photos ImageNet-like JPEGs to benchmark the input on
  figures          --mode=filters and --mode=neighbours: the paper's Figures 3 and 4
  convert_torchvision  torchvision's AlexNet weights as an arch=owt checkpoint
"""

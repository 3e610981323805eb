"""The data package: what input_pipeline.py's public face is built from.

  sources        TFDS datasets, image folders, ImageNet folders, the prepared copy: a Source each
  image_folder   a folder of images, one sub-folder per class
  imagenet_folder  ILSVRC-2012 extracted, as clusters keep it, with TFDS's labels
  listing        a folder's image files, listed once and kept beside them
  demo_shapes    the embedded demo dataset, a TFDS builder generated on first use
  preprocessing  the paper's view of an image: windows, decoding, crops, lighting
  statistics     normalisation: the mean (image), PCA lighting's basis, --mode=stats
  prepare        --mode=prepare: the dataset once as 256x256 JPEGs
  batching       seeded, resumable training batches and exact evaluation batches
"""

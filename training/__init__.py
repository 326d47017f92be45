"""Training ProtoSeg with accelerate: data, augmentation, metrics, evaluation, checkpoints, `train.py`."""

"""Models: the shared parts (blocks.py: encoder/decoder blocks; distributions.py: densities
and pixel likelihoods; manager.py: the MoE manager and its label-free terms; routing.py:
top-k routing), one module per kind in kinds/, the registry that finds them
(registry.py) and the self-describing model file (checkpoint.py). No device placement
here: the training loop moves models and data."""

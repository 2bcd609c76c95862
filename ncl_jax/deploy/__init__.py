"""One expert as a self-contained jax.export artefact (export) and a TensorFlow-free predictor
for it (predict). Import the submodule you need: predict must stay free of Flax and TF."""

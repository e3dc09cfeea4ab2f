"""Reproduces ACAT's training (Algorithm 1 of Fontanella et al., ICML 2023) on a CPU, one GPU or many.

Imports `ACATLogic`, never the reverse.

* ``python -m training.train --config training/configs/NAME.yaml stage=baseline|autoencoder|saliency|acat``
  trains one stage (train.py has the single-GPU, 8-GPU and 2-node torchrun commands);
* ``python -m training.pipeline --config ...`` runs the four stages in order, skipping complete ones;
* ``python -m training.export RUN_DIR --out Resources/Models/ID`` writes a model bundle.

Modules: config (dataclass + YAML + key=value), data (sources, bad-data policy, preprocessing cache),
augment (flips, class weights), distributed (DDP, sampler, global-batch BatchNorm), checkpoint
(atomic, self-describing), run_folder (layout, fingerprints, command records), logs, metrics,
stages/ (what differs between the stages), phantom/ (the phantom benchmark generator).
"""

"""Reproduces ACAT's training (Algorithm 1 of Fontanella et al., ICML 2023) on one GPU or many.

Imports `ACATLogic`, never the reverse. The stages (baseline, autoencoder, saliency, ACAT) arrive with
the training issue; this package is installed now so that the distribution's layout is final.
"""

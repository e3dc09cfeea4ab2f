"""The phantom benchmark: real CT anatomy, simulated lesions with known ground truth (SIMULATED data).

Stands in for IST-3 (brain stroke) and MosMed (lung COVID-19), which cannot be obtained here. Every
case and every table made from it is labelled as simulated. ``python -m ACATData.phantom`` builds a
dataset (`build`), ``python -m ACATData.phantom.demo`` the demo case, ``python -m ACATData.phantom.pictures``
a picture sheet; docs/PHANTOM.md describes them.
"""

"""``python -m training.phantom ...``: kept as a command for the scripts and run folders that recorded it.

The phantom generator is `ACATData.phantom` (``python -m ACATData.phantom ...``); import it from there.
"""

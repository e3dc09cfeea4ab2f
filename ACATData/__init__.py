"""Where the project's CT data comes from: real scans fetched from packages, and the SIMULATED phantom.

* `sample_data` - real CT scans that ship inside packages (Debian ``invesalius-examples``: the Cranium head
  CT; PyPI ``slicerio``: Slicer's CTChest; ``pydicom-data``), fetched by package name and cached
  (``python -m ACATData.sample_data fetch``).
* `phantom` - the phantom benchmark: that real anatomy deformed into many patients with simulated lesions
  of known extent (``python -m ACATData.phantom ...``; the demo case: ``python -m ACATData.phantom.demo``).

Imports ACATLogic only: training/, the tests and the web viewer's demo case import this package; ACATLogic
never does. Its extra packages (``slicerio``) are the ``data`` extra of pyproject.toml.
"""

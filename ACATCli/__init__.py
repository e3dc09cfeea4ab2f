"""The ``acat`` command line, a front end over ACATLogic: ``acat info|convert|explain|view``.

``main`` parses the arguments, `commands` runs them, `terminal` draws progress bars and writes the
machine-readable progress lines (``--progress-format jsonl``) that the Slicer module and the web viewer
read from their background ``acat explain``. ``acat view`` starts the web viewer (ACATWeb), loaded by name
only when that command runs. ACATLogic never imports this package.
"""

"""The ``acat`` command line. See `ACATLogic.cli.main`."""

"""The package's version: the one literal. pyproject.toml reads it (setuptools' dynamic
version), CMakeLists.txt parses it, ``efficientad_fast.__version__`` re-exports it."""

__version__ = "0.1.0"

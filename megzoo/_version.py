"""megzoo's version (one place: setup.cfg reads it, the package and its exports report it)."""
__version__ = "0.1.0"

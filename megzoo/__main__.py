"""``python -m megzoo`` is the ``megzoo`` command."""
import sys

from .cli import main

sys.exit(main())

"""``python -m bkdsearch.cli``: the ``bkdsearch`` command."""

from . import main

main()

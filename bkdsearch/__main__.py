"""``python -m bkdsearch`` (also what ``torchrun ... -m bkdsearch train SPEC`` runs)."""

from .cli import main

main()

"""``python -m baton.cli``: the same as the ``baton`` console script."""

from baton.cli.main import main

main()

"""``python -m daskem``: the same as the ``daskem`` command."""

from daskem.cli import main

main()

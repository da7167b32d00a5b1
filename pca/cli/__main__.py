"""``python -m pca.cli``: the same as the ``pca`` command."""

from pca.cli import main

main()

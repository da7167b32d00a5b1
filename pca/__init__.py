"""The process layer: the ``pca`` command, ``pca serve`` and the wiring of roles into processes.

The only code that imports all three packages (``revocation``, ``responders``,
``publishers``); none of them imports it.
"""

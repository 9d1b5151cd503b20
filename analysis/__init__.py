"""Figures of the paper from finished runs (files only: no ``alter``, no torch).

Every module imports its siblings as ``analysis.<module>``. Run a script from the
repository root either as ``python analysis/<script>.py ...`` (the script puts the
repository root on ``sys.path`` itself) or as ``python -m analysis.<script> ...``;
tests import ``analysis.<script>`` with the repository root on the path.
"""

"""Audit a model trained elsewhere (``audit.checkpoint``): per-record membership evidence against
reference models trained like it. :mod:`~.run` is the entry point; :mod:`~.summary` writes its answer."""

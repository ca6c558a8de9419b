"""The experiment config, checked: :mod:`~.load` validates a composed config into :class:`~.load.Settings`,
:mod:`~.checks` holds the shared key and value checks, :mod:`~.limits` refuses sizes no study means (unless
``allow_large``), :mod:`~.trusted` is the one guarded door through which a config builds objects (and decides
what a config read from a run directory may build), and :mod:`~.schemas` registers the typed config groups with
Hydra.

Submodules are imported on use: :mod:`~.checks` must stay importable from the lowest layers.
"""

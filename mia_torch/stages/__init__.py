"""The stages every run is made of, shared by studies, audits and the forget check.

:mod:`~mia_torch.stages.context` (what the stages share, artifact keys), :mod:`~.train`
(models into the store), :mod:`~.signals` (served outputs of models), :mod:`~.attacks`
(fit on references, score targets). :mod:`mia_torch.pipeline` wires them from a config.
"""

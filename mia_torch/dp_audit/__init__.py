"""Test a differential-privacy claim in one training run: canaries, their scores and the one-run bounds.

``experiment=dp_audit`` (the ``dp_audit`` keys, :mod:`mia_torch.dp_audit.config`) trains the
target once with m canaries, each included with probability 1/2
(:mod:`~mia_torch.dp_audit.canaries`), ranks them by a membership score, guesses the
highest IN and the lowest OUT (:mod:`~mia_torch.dp_audit.guesses`) and turns the number of
correct guesses into lower bounds on epsilon (:mod:`~mia_torch.dp_audit.bounds`, pure).
:mod:`~mia_torch.dp_audit.run` wires it; :mod:`~mia_torch.dp_audit.study` summarises a sweep.
"""

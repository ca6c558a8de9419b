"""The right-to-be-forgotten check (``forget.method``): do removed records still look like members?
:mod:`~.run` is the entry point; :mod:`~.verdict` compares forgotten with never-seen records."""

"""ptray: seed-robust prompt tuning of frozen language models.

Layers (lower never imports higher; docs/architecture.md, checked by tests/test_architecture.py): config, layout
(the experiment-folder contract) and stats -> core -> tracking -> analysis -> distributed -> cli.
"""

__version__ = "0.1.0"

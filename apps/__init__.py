"""The application layer: the ``vlm`` command (``apps.cli``) and the recipes built on the libraries below.

Nothing below imports this package: ``vision``/``projector`` -> ``vlm`` -> ``train``/``eval`` -> ``apps``
(the contract in ``pyproject.toml``, checked by ``lint-imports``).
"""

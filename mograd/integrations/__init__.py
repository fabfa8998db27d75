"""Integrations with training frameworks: optional, imported only when asked for.

* :mod:`mograd.integrations.lightning`: PyTorch Lightning (manual optimization,
  :class:`~mograd.integrations.lightning.MOLightningModule` and
  :func:`~mograd.integrations.lightning.mograd_step`);
* :mod:`mograd.integrations.transformers`: the Hugging Face ``Trainer``
  (:class:`~mograd.integrations.transformers.MOTrainer`).

``import mograd`` imports neither framework. Each module needs its framework, which the
``integrations`` extra installs (``pip install "mograd[integrations]"``); without it,
importing the module raises an ``ImportError`` that says so.

Example:
    >>> import mograd.integrations
    >>> mograd.integrations.EXTRA
    'pip install "mograd[integrations]"'
"""

from __future__ import annotations

__all__ = ["EXTRA", "missing_framework"]

EXTRA = 'pip install "mograd[integrations]"'
"""The command that installs every framework the integrations need."""


def missing_framework(module: str, framework: str, error: ImportError) -> ImportError:
    """The ``ImportError`` an integration raises when its framework is not installed.

    Args:
        module: The integration module, e.g. ``"mograd.integrations.lightning"``.
        framework: What it needs, e.g. ``"PyTorch Lightning (the lightning package)"``.
        error: The original ``ImportError`` (its message is kept).

    Returns:
        An ``ImportError`` naming the module, the framework and the extra to install.

    Example:
        >>> err = missing_framework("mograd.integrations.x", "X", ImportError("no x"))
        >>> str(err).startswith("mograd.integrations.x needs X, which is not installed (no x)")
        True
        >>> str(err).endswith('install it with: pip install "mograd[integrations]"')
        True
    """
    return ImportError(
        f"{module} needs {framework}, which is not installed ({error}); install it with: {EXTRA}",
        name=error.name,
    )

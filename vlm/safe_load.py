"""Loading torch pickles (``.pt``, ``.pth``, ``.bin``) so that they cannot run code.

A pickle is a program: ``torch.load(f, weights_only=False)`` of a crafted file runs whatever
command it holds, so a checkpoint downloaded from someone else would be as dangerous as a
script. torch's ``weights_only=True`` unpickler builds only tensors, plain containers, numbers,
strings and the types put on an allowlist (``torch.serialization.safe_globals``).

Some libraries we call keep ``weights_only=False`` by design (DeepSpeed's checkpoint engine and
its ``zero_to_fp32`` consolidation pickle a loss scaler, enums and their config). Rather than
re-implement them, :func:`weights_only_loads` makes every ``torch.load`` inside a block safe:
``weights_only=True`` whatever the caller asked, with an allowlist of exactly the types its
caller names (``train.checkpoint_types`` lists those DeepSpeed and the Trainer write). A file
that needs anything else is refused with :class:`UnsafePickleError`, one line naming the file
and the type.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
import re
from collections.abc import Iterator, Sequence
from typing import Any

import torch

_FORCE_ENV = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"


class UnsafePickleError(ValueError):
    """A pickle that needs a type outside the allowlist to load: refused, nothing of it was run."""


def _file_name(f: Any) -> str:
    if isinstance(f, (str, os.PathLike)):
        return os.fspath(f)
    return str(getattr(f, "name", "<an open file>"))


def _refusal(f: Any, err: Exception) -> UnsafePickleError:
    found = re.search(r"GLOBAL ([\w.]+)", str(err)) or re.search(r"Unsupported global: ([\w.]+)", str(err))
    what = f"needs {found.group(1)}, which is not" if found else f"does not unpickle as ({str(err).splitlines()[0]}), i.e. holds"
    return UnsafePickleError(
        f"{_file_name(f)}: refused to load: this pickle {what} a tensor, a plain value or one of the types the training "
        "libraries write; loading it could run code. Use checkpoints from sources you trust, saved as safetensors where possible"
    )


@contextlib.contextmanager
def weights_only_loads(allowed: Sequence[Any] = ()) -> Iterator[None]:
    """Within the block, every ``torch.load`` is ``weights_only=True`` with ``allowed`` on the allowlist.

    The caller's own ``weights_only=False`` (DeepSpeed's) is overridden twice over: ``torch.load``
    is wrapped for the block (so a refusal names its file), and torch's own switch for this,
    ``TORCH_FORCE_WEIGHTS_ONLY_LOAD``, is set for loads that reach ``torch.serialization.load``
    directly. Both are restored when the block ends. Raises :class:`UnsafePickleError`.
    """
    original = torch.load

    @functools.wraps(original)
    def safe_load(f: Any, *args: Any, **kwargs: Any) -> Any:
        map_location = args[0] if args else kwargs.pop("map_location", None)
        kwargs.pop("pickle_module", None)  # our unpickler, not the caller's
        kwargs.pop("weights_only", None)
        try:
            return original(f, map_location=map_location, weights_only=True, **kwargs)
        except pickle.UnpicklingError as err:
            raise _refusal(f, err) from None

    previous_env = os.environ.get(_FORCE_ENV)
    os.environ[_FORCE_ENV] = "1"
    torch.load = safe_load
    try:
        with torch.serialization.safe_globals(list(allowed)):
            yield
    finally:
        torch.load = original
        if previous_env is None:
            os.environ.pop(_FORCE_ENV, None)
        else:
            os.environ[_FORCE_ENV] = previous_env


def load_pickle(path: str | os.PathLike, allowed: Sequence[Any] = (), map_location: Any = "cpu") -> Any:
    """``torch.load(path)`` with weights only and ``allowed``; :class:`UnsafePickleError` naming ``path`` if it needs more."""
    with weights_only_loads(allowed):
        return torch.load(path, map_location=map_location)

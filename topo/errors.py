"""Exceptions raised by topo.

Every error topo raises on bad input is a :class:`TopoError`, so a caller (and the ``topo`` command) can catch
one type. The message always names the file, layer or parameter at fault.
"""

from __future__ import annotations


class TopoError(Exception):
    """Base class of every error topo raises on bad input or bad state."""


class ConfigError(TopoError, ValueError):
    """A hyperparameter or argument is out of its valid range, or names something that does not exist."""


class MaskError(TopoError, ValueError):
    """A mask has the wrong shape, dtype or values for the layer it belongs to."""


class CheckpointError(TopoError):
    """A checkpoint, snapshot or run directory is missing, unreadable, corrupt or not of a known format."""


class OutputError(TopoError, OSError):
    """A result could not be written where it was asked for (the message names that path, not a temporary)."""


class EmptyGraphWarning(UserWarning):
    """A graph metric is undefined (no nodes, no edges or no reachable pair) and is reported as NaN."""

"""The options of an analysis or a pruning, checked before anything is loaded or imported.

``topo analyze`` and ``topo report`` may take minutes to load a checkpoint; an option that is wrong should stop
them at once, in one line. This module imports nothing heavy (no torch, no graph kernels), so the command line
checks every option here first (:func:`check_analysis_options`), and :mod:`topo.analyze` checks the same way when
called from Python. It owns the names the analyses accept: the null models, the convolution views and the
backbone specifications, the N:M structures and the one-shot pruning rules.
"""

from __future__ import annotations

from dataclasses import dataclass

from topo.errors import ConfigError

#: The null models (:mod:`topo.graph.null`).
NULLS = ("er", "degree", "nm")
#: The one-shot pruning rules (:mod:`topo.sparsity.oneshot`).
ONESHOT_METHODS = ("magnitude", "wanda", "sparsegpt")
#: Convolution views (:func:`topo.graph.conv_view`): the channel graph, the kernel graph, or the kernel graph where
#: the channel graph is nearly complete.
CONV_VIEWS = ("auto", "channel", "kernel")


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone named on the command line: ``kind`` (``magnitude`` or ``disparity``) and its ``value``."""

    kind: str
    value: float


def parse_backbone(text: str) -> BackboneSpec:
    """``"magnitude:0.1"`` or ``"disparity:0.05"`` → :class:`BackboneSpec`, with ranges checked."""
    kind, _, value = text.partition(":")
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"--backbone {text!r}: expected magnitude:F or disparity:A with a number") from None
    if kind == "magnitude":
        if not 0 < number <= 1:
            raise ConfigError(f"--backbone {text!r}: the fraction F kept must be in (0, 1]")
    elif kind == "disparity":
        if not 0 < number < 1:
            raise ConfigError(f"--backbone {text!r}: the significance level A must be in (0, 1)")
    else:
        raise ConfigError(f"--backbone {text!r}: unknown backbone {kind!r}; valid: magnitude:F, disparity:A")
    return BackboneSpec(kind, number)


def check_analysis_options(
    *,
    backbone: str | BackboneSpec | None = None,
    global_backbone: bool = False,
    path_sources: int | None = None,
    small_world: int = 0,
    null: str | None = None,
    null_samples: int = 20,
    conv: str = "auto",
    num_heads: int | None = None,
) -> BackboneSpec | None:
    """Raise :class:`ConfigError` naming the first option out of its range; returns the parsed backbone (or None).

    The options are :func:`topo.analyze.analyze_checkpoint`'s, named as on the command line."""
    spec = parse_backbone(backbone) if isinstance(backbone, str) else backbone
    if null is not None and null not in NULLS:
        raise ConfigError(f"--null must be one of {', '.join(NULLS)}, got {null!r}")
    if null_samples < 2:
        raise ConfigError(f"--null-samples must be >= 2 (a null needs a spread), got {null_samples}")
    if global_backbone and (spec is None or spec.kind != "magnitude"):
        raise ConfigError("--global applies to the magnitude backbone (--backbone magnitude:F)")
    if path_sources is not None and path_sources < 1:
        raise ConfigError(f"--path-sources must be >= 1, got {path_sources}")
    if small_world < 0:
        raise ConfigError(f"--small-world must be >= 0 (random graphs to compare with), got {small_world}")
    if conv not in CONV_VIEWS:
        raise ConfigError(f"--conv must be one of {', '.join(CONV_VIEWS)}, got {conv!r}")
    if num_heads is not None and num_heads < 1:
        raise ConfigError(f"--num-heads must be >= 1, got {num_heads}")
    return spec


def parse_structure(structure: str | None) -> tuple[int, int] | None:
    """``"2:4"`` → (2, 4); None stays None. Raises :class:`ConfigError` unless 0 < N < M."""
    if structure is None:
        return None
    try:
        n, m = (int(part) for part in str(structure).split(":"))
    except ValueError:
        raise ConfigError(f"structure must be 'N:M' (e.g. '2:4'), got {structure!r}") from None
    if not 0 < n < m:
        raise ConfigError(f"structure {structure!r}: N:M needs 0 < N < M")
    return n, m


def check_oneshot_options(method: str, density: float | None, structure: str | None) -> tuple[float | None,
                                                                                             tuple[int, int] | None]:
    """(sparsity, (N, M)) of a one-shot pruning asked for ``density`` (the fraction kept) or ``structure``; raises
    :class:`ConfigError` for an unknown method, both or neither of density and structure, or a density outside
    (0, 1)."""
    if method not in ONESHOT_METHODS:
        raise ConfigError(f"unknown one-shot method {method!r}; valid: {', '.join(ONESHOT_METHODS)}")
    if (density is None) == (structure is None):
        raise ConfigError("one-shot pruning takes a density (the fraction kept) or a structure ('2:4'), not both")
    if density is not None and not 0 < density < 1:
        raise ConfigError(f"density (the fraction of weights kept) must be in (0, 1), got {density!r}")
    return (None if density is None else 1.0 - float(density)), parse_structure(structure)

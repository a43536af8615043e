"""Masks → graphs (Section 5.2 of the paper).

A :class:`Graph` is an undirected simple graph held as a dense symmetric boolean adjacency matrix with an empty
diagonal, as a numpy array (CPU backends) or a torch tensor (the torch backend, on the mask's device).

* A square recurrent block (hidden → hidden) is a graph on its n units: an edge joins i and j when either
  direction is active; self-loops are dropped (:func:`square_graph`).
* PyTorch stacks the gate blocks of ``LSTM.weight_hh_l*`` as (input i, forget f, cell g, output o) and of
  ``GRU.weight_hh_l*`` as (reset r, update z, new n); the paper treats each LSTM gate block as its own graph
  (:func:`recurrent_gate_graphs`).
* A feed-forward weight (out × in) is a bipartite graph of in + out neurons (:func:`bipartite_graph`); a stack of
  them is a layered graph whose nodes are all neurons (:func:`layered_graph`).
* A convolution (out, in, *kernel) is the bipartite channel graph, with an edge where any kernel weight of the
  channel pair is active (:func:`channel_graph`), or the bipartite kernel graph of (input channel, tap) → output
  channel, the weight read as out × in·kh·kw (:func:`kernel_graph`). The channel graph of a pruned convolution is
  nearly complete whenever most channel pairs keep one tap of their kernel, so ``conv="auto"`` takes the kernel
  view when the channel graph's density is at least :data:`NEAR_COMPLETE` and the mask's is below it.
* What a transformer's weights mean (Conv1D orientation, fused q/k/v, heads, embeddings) comes from
  :mod:`topo.families`; :func:`layer_graphs` takes a :class:`~topo.families.Family`.

Every graph built from a mask carries that mask's density (:attr:`Graph.mask_density`: active weights over
weights, for the block the graph is made of), which tables print beside the graph's own density.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from topo.errors import ConfigError, MaskError
from topo.families import Family, views
from topo.options import CONV_VIEWS

LSTM_GATES = ("i", "f", "g", "o")
#: Where a graph comes from: a recurrent gate block (hidden → hidden, the paper's Figure 5), another square mask,
#: a feed-forward layer (bipartite: inputs → outputs), a convolution's channel graph (bipartite), one gate of a
#: recurrent input weight (bipartite), or a whole stack of layers.
KINDS = ("recurrent", "square", "bipartite", "channel", "kernel", "recurrent-input", "attention", "embedding",
         "layered")
#: A channel graph at least this dense is "nearly complete" (``conv="auto"``).
NEAR_COMPLETE = 0.9
GRU_GATES = ("r", "z", "n")

Array = np.ndarray | torch.Tensor


@dataclass(frozen=True)
class Graph:
    """An undirected simple graph: symmetric boolean adjacency, no self-loops.

    Attributes
    ----------
    adjacency: (n, n) bool numpy array or torch tensor.
    name: where it comes from, e.g. ``"lstm.weight_hh_l0[f]"``.
    """

    adjacency: Array
    name: str = ""
    parts: tuple[int, ...] | None = None
    kind: str = "square"
    mask_density: float | None = None
    built: bool = field(default=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Refuse what is not an undirected simple graph: a directed or self-looped matrix would give wrong metrics.

        Build graphs from masks with :func:`square_graph` (which symmetrises and drops self-loops) and the other
        builders. ``parts``: the layer sizes of a layered (bipartite) graph, nodes numbered layer by layer.
        ``kind`` says where the graph comes from (see :data:`KINDS`); ``parts`` decides which metrics apply.
        ``built`` marks a graph made by this module's builders, symmetric by construction: its O(n²) symmetry
        check is skipped.
        """
        a = self.adjacency
        label = self.name or "<unnamed>"
        if a.ndim != 2 or a.shape[0] != a.shape[1]:
            raise MaskError(f"graph {label}: adjacency must be a square matrix, got shape {tuple(a.shape)}")
        if (a.dtype != torch.bool) if torch.is_tensor(a) else (a.dtype != bool):
            raise MaskError(f"graph {label}: adjacency must be boolean, got {a.dtype}; build graphs from masks "
                            "with square_graph()")
        if not self.built and bool((a != a.T).any()):  # the builders make symmetric graphs by construction
            raise MaskError(f"graph {label}: adjacency is not symmetric (a directed graph); use square_graph() to "
                            "symmetrise a mask")
        if bool(a.diagonal().any()):
            raise MaskError(f"graph {label}: adjacency has self-loops; use square_graph() to drop them")
        if self.parts is not None and sum(self.parts) != a.shape[0]:
            raise MaskError(f"graph {label}: parts {self.parts} do not add up to its {a.shape[0]} nodes")
        if self.kind not in KINDS:
            raise MaskError(f"graph {label}: kind {self.kind!r} is not one of {', '.join(KINDS)}")

    @property
    def is_bipartite(self) -> bool:
        """Two parts (a Linear layer, a convolution's channels, one gate of a recurrent input weight)."""
        return self.parts is not None and len(self.parts) == 2

    @property
    def density(self) -> float:
        """Edges over possible edges of the graph's kind: n(n − 1)/2 for a square graph, Σ nᵢ·nᵢ₊₁ between the
        consecutive layers of a layered (bipartite) graph. NaN when no edge is possible."""
        if self.parts is not None:
            possible = sum(a * b for a, b in zip(self.parts, self.parts[1:], strict=False))
        else:
            possible = self.n_nodes * (self.n_nodes - 1) // 2
        return self.n_edges / possible if possible else float("nan")

    @property
    def n_nodes(self) -> int:
        return int(self.adjacency.shape[0])

    @property
    def n_edges(self) -> int:
        a = self.adjacency
        return int(torch.count_nonzero(a) if torch.is_tensor(a) else np.count_nonzero(a)) // 2

    @property
    def is_torch(self) -> bool:
        return torch.is_tensor(self.adjacency)

    def numpy(self) -> Graph:
        """The same graph with a numpy adjacency."""
        if not self.is_torch:
            return self
        return Graph(self.adjacency.detach().cpu().numpy(), self.name, self.parts, self.kind, self.mask_density,
                     built=True)

    def torch(self, device: str | torch.device | None = None) -> Graph:
        """The same graph with a torch adjacency on ``device`` (default: where it is, or the CPU)."""
        adjacency = self.adjacency if self.is_torch else torch.from_numpy(np.ascontiguousarray(self.adjacency))
        return Graph(adjacency.to(device) if device is not None else adjacency, self.name, self.parts, self.kind,
                     self.mask_density, built=True)

    def edges(self) -> np.ndarray:
        """(m, 2) array of edges (i < j)."""
        upper = np.triu(self.numpy().adjacency, 1)
        return np.argwhere(upper)

    def to_networkx(self) -> Any:
        """A ``networkx.Graph`` with nodes 0..n-1."""
        import networkx as nx

        graph = nx.Graph()
        graph.add_nodes_from(range(self.n_nodes))
        graph.add_edges_from(self.edges().tolist())
        return graph

    def to_igraph(self) -> Any:
        """An undirected ``igraph.Graph`` with vertices 0..n-1."""
        import igraph

        return igraph.Graph(n=self.n_nodes, edges=self.edges().tolist(), directed=False)


def as_mask(mask: Any, name: str = "mask") -> Array:
    """Validate a mask: a bool array/tensor, or a numeric one holding only 0 and 1; returns it as bool.

    Raises :class:`MaskError` naming ``name`` for NaN or values other than 0/1.
    """
    if torch.is_tensor(mask):
        if mask.dtype == torch.bool:
            return mask
        if mask.is_floating_point() and torch.isnan(mask).any():
            raise MaskError(f"mask {name!r} contains NaN")
        if not ((mask == 0) | (mask == 1)).all():
            raise MaskError(f"mask {name!r} is not boolean: it holds values other than 0 and 1")
        return mask != 0
    array = np.asarray(mask)
    if array.dtype == bool:
        return array
    if not np.issubdtype(array.dtype, np.number):
        raise MaskError(f"mask {name!r} has non-numeric dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating) and np.isnan(array).any():
        raise MaskError(f"mask {name!r} contains NaN")
    if not np.isin(array, (0, 1)).all():
        raise MaskError(f"mask {name!r} is not boolean: it holds values other than 0 and 1")
    return array != 0


def _symmetrise(block: Array) -> Array:
    if torch.is_tensor(block):
        sym = block | block.T
        return sym & ~torch.eye(sym.shape[0], dtype=torch.bool, device=sym.device)
    sym = block | block.T
    np.fill_diagonal(sym, False)
    return sym


def _density(block: Array) -> float:
    """Active entries over entries of a boolean mask."""
    total = int(np.prod(tuple(block.shape)))
    active = int(torch.count_nonzero(block)) if torch.is_tensor(block) else int(np.count_nonzero(block))
    return active / total if total else float("nan")


def square_graph(mask: Any, name: str = "", kind: str = "square") -> Graph:
    """The graph of a square (recurrent) mask: edge i–j if mask[i, j] or mask[j, i]; self-loops dropped."""
    block = as_mask(mask, name)
    if block.ndim != 2 or block.shape[0] != block.shape[1]:
        raise MaskError(f"mask {name!r} must be square for a recurrent graph, got shape {tuple(block.shape)}")
    return Graph(_symmetrise(block), name, kind=kind, mask_density=_density(block), built=True)


def recurrent_gate_graphs(mask: Any, name: str = "", gates: Sequence[str] | None = None) -> dict[str, Graph]:
    """Split a stacked hidden-to-hidden mask into its gate blocks, one graph each.

    ``gates`` defaults to :data:`LSTM_GATES` for a (4h, h) mask, :data:`GRU_GATES` for (3h, h), and a single
    block for (h, h). Graphs are named ``f"{name}[{gate}]"``.
    """
    block = as_mask(mask, name)
    if block.ndim != 2:
        raise MaskError(f"mask {name!r} must be 2-D, got shape {tuple(block.shape)}")
    rows, hidden = block.shape
    if gates is None:
        gates = {4 * hidden: LSTM_GATES, 3 * hidden: GRU_GATES, hidden: ("",)}.get(rows)
        if gates is None:
            raise MaskError(f"mask {name!r} of shape {tuple(block.shape)} is not a stack of square gate blocks")
    if rows != len(gates) * hidden:
        raise MaskError(f"mask {name!r} of shape {tuple(block.shape)} does not hold {len(gates)} square blocks")
    graphs = {}
    for index, gate in enumerate(gates):
        label = f"{name}[{gate}]" if gate else name
        graphs[label] = square_graph(block[index * hidden : (index + 1) * hidden], label, kind="recurrent")
    return graphs


def bipartite_graph(mask: Any, name: str = "", kind: str = "bipartite") -> Graph:
    """A feed-forward (out × in) mask as a bipartite graph: nodes 0..in-1 are inputs, in..in+out-1 outputs."""
    block = as_mask(mask, name)
    if block.ndim != 2:
        raise MaskError(f"mask {name!r} must be 2-D, got shape {tuple(block.shape)}")
    return _with_density(layered_graph([block], name, kind=kind), block)


def _with_density(graph: Graph, block: Array) -> Graph:
    return Graph(graph.adjacency, graph.name, graph.parts, graph.kind, _density(block), built=True)


def _channels(block: Array) -> Array:
    return block.flatten(2).any(-1) if torch.is_tensor(block) else block.reshape(*block.shape[:2], -1).any(-1)


def channel_graph(mask: Any, name: str = "") -> Graph:
    """A convolution mask (out, in, *kernel) as the bipartite graph of its channels (edge if any tap is active)."""
    block = as_mask(mask, name)
    if block.ndim < 3:
        raise MaskError(f"mask {name!r} must be a convolution weight (out, in, *kernel), got {tuple(block.shape)}")
    return _with_density(layered_graph([_channels(block)], name, kind="channel"), block)


def kernel_graph(mask: Any, name: str = "") -> Graph:
    """A convolution mask (out, in, *kernel) as the bipartite graph of (input channel, tap) → output channel: the
    weight read as an out × in·kh·kw matrix, inputs numbered channel by channel, taps within a channel."""
    block = as_mask(mask, name)
    if block.ndim < 3:
        raise MaskError(f"mask {name!r} must be a convolution weight (out, in, *kernel), got {tuple(block.shape)}")
    flat = block.reshape(block.shape[0], -1)
    return _with_density(layered_graph([flat], name, kind="kernel"), block)


def conv_view(mask: Array, conv: str = "auto") -> str:
    """``"channel"`` or ``"kernel"``: the view :func:`layer_graphs` takes of a convolution mask (see the module
    docstring for ``"auto"``)."""
    if conv not in CONV_VIEWS:
        raise ConfigError(f"conv view must be one of {', '.join(CONV_VIEWS)}, got {conv!r}")
    if conv != "auto":
        return conv
    channels = _channels(mask)
    return "kernel" if _density(channels) >= NEAR_COMPLETE > _density(mask) else "channel"


def layered_graph(masks: Sequence[Any], name: str = "network", kind: str | None = None) -> Graph:
    """The graph of a stack of feed-forward masks (each out × in, in = previous out): nodes are all neurons.

    Nodes are numbered layer by layer (inputs first); an active weight joins a neuron to one in the next layer.
    """
    blocks = [as_mask(m, f"{name}[{i}]") for i, m in enumerate(masks)]
    if not blocks:
        raise MaskError(f"{name!r}: no masks to build a layered graph from")
    for i, (prev, cur) in enumerate(zip(blocks, blocks[1:], strict=False)):
        if cur.shape[1] != prev.shape[0]:
            raise MaskError(f"{name!r}: layer {i + 1} takes {cur.shape[1]} inputs but layer {i} has {prev.shape[0]}")
    sizes = [blocks[0].shape[1]] + [b.shape[0] for b in blocks]
    offsets = np.cumsum([0, *sizes])
    n = int(offsets[-1])
    use_torch = torch.is_tensor(blocks[0])
    adjacency = torch.zeros(n, n, dtype=torch.bool, device=blocks[0].device) if use_torch else np.zeros((n, n), bool)
    for i, block in enumerate(blocks):
        rows = slice(int(offsets[i + 1]), int(offsets[i + 2]))
        cols = slice(int(offsets[i]), int(offsets[i + 1]))
        adjacency[rows, cols] = block
        adjacency[cols, rows] = block.T
    kind = kind or ("bipartite" if len(blocks) == 1 else "layered")
    return Graph(adjacency, name, tuple(int(size) for size in sizes), kind,
                 _density(blocks[0]) if len(blocks) == 1 else None, built=True)


#: Recurrent weights as PyTorch and real code name them: ``rnn.weight_hh_l0``, ``lstm.layers.0.weight_hh``,
#: ``encoder.lstm.weight_hh_l1_reverse``, ``cell.weight_ih`` …
_HIDDEN = re.compile(r"(^|\.)weight_hh(_l\d+)?(_reverse)?$")
_INPUT = re.compile(r"(^|\.)weight_ih(_l\d+)?(_reverse)?$")
_GATES = {4: LSTM_GATES, 3: GRU_GATES, 1: ("",)}


def recurrent_gates(shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[str, ...]]:
    """The gate names of every recurrent weight in ``shapes`` (layer name → shape), by its hidden weight's shape.

    A hidden-to-hidden weight of shape (G·h, h) has G = 4 gates (LSTM: i, f, g, o), 3 (GRU: r, z, n) or 1 (plain
    RNN); its input-to-hidden sibling (``weight_ih…`` beside ``weight_hh…``) has the same gates. Weights whose
    shape is no stack of square blocks (an LSTM with projections, say) get none and are read as bipartite layers.
    """
    gates: dict[str, tuple[str, ...]] = {}
    for name, shape in shapes.items():
        if _HIDDEN.search(name) and len(shape) == 2 and shape[1] and shape[0] % shape[1] == 0:
            found = _GATES.get(shape[0] // shape[1])
            if found is not None:
                gates[name] = found
                head, _, last = name.rpartition(".")
                sibling = f"{head}.{last.replace('weight_hh', 'weight_ih')}" if head else last.replace(
                    "weight_hh", "weight_ih")
                if sibling in shapes and len(shapes[sibling]) == 2 and shapes[sibling][0] == shape[0]:
                    gates[sibling] = found
    return gates


@dataclass(frozen=True)
class GraphSource:
    """Where a graph comes from: its 2-D mask ``block``, the ``build`` that turns a block of that shape into the
    graph (a null model randomises the block and builds again, :mod:`topo.graph.null`), the layer's weights cut
    the same way (``weights``, when given: weighted measures read them), and, for a convolution read as
    out × in·taps, the layer's own shape (``layer_shape``: where its input channels are)."""

    block: Array
    build: Callable[[Array], Graph]
    weights: Any = None
    layer_shape: tuple[int, ...] | None = None


def _pieces(name: str, tensor: Any, known: Mapping[str, Sequence[str]], family: Family, heads: bool,
            view: str | None) -> list[tuple[str, Any, Callable[[Array], Graph]]]:
    """(graph name, 2-D piece of ``tensor``, builder) for each graph of layer ``name``; ``tensor`` is its mask or
    its weights, cut alike (``view``: the convolution view, decided from the mask)."""
    if tensor.ndim == 2 and name in known and _HIDDEN.search(name):
        hidden, pieces = tensor.shape[1], []
        for index, gate in enumerate(known[name]):
            label = f"{name}[{gate}]" if gate else name
            pieces.append((label, tensor[index * hidden:(index + 1) * hidden],
                           lambda b, label=label: square_graph(b, label, kind="recurrent")))
        return pieces
    if tensor.ndim == 2 and name in known and _INPUT.search(name):
        rows, pieces = tensor.shape[0] // len(known[name]), []
        for index, gate in enumerate(known[name]):
            label = f"{name}[{gate}]" if gate else name
            pieces.append((label, tensor[index * rows:(index + 1) * rows],
                           lambda b, label=label: bipartite_graph(b, label, "recurrent-input")))
        return pieces
    if tensor.ndim > 2:
        shape = tuple(tensor.shape)
        maker = kernel_graph if view == "kernel" else channel_graph
        return [(name, tensor.reshape(shape[0], -1),
                 lambda b, name=name, shape=shape, maker=maker: maker(b.reshape(shape), name))]
    return [(label, matrix, lambda b, label=label, kind=kind: bipartite_graph(b, label, kind))
            for label, matrix, kind in views(name, tensor, family, heads=heads)]


def graph_sources(masks: Mapping[str, Any], gates: Mapping[str, Sequence[str]] | None = None, *,
                  family: Family | None = None, heads: bool = False, conv: str = "auto",
                  weights: Mapping[str, Any] | None = None) -> dict[str, GraphSource]:
    """Graph name → :class:`GraphSource` for every graph of every layer; see :func:`layer_graphs`.

    The blocks: a recurrent gate block (h × h, directed, symmetrised by its builder), one gate of a recurrent input
    weight, a convolution as out × in·kh·kw (its builder reduces it to channels or reads it as kernels), and the
    (out, in) views of other 2-D weights (:func:`topo.families.views`). ``weights`` (layer name → weight) are cut
    into the same blocks.
    """
    known = {**recurrent_gates({n: tuple(np.shape(m)) for n, m in masks.items()}), **dict(gates or {})}
    family = family or Family()
    sources: dict[str, GraphSource] = {}
    for name, mask in masks.items():
        block = as_mask(mask, name)
        if block.ndim < 2:
            continue
        view = conv_view(block, conv) if block.ndim > 2 else None
        pieces = _pieces(name, block, known, family, heads, view)
        weight = (weights or {}).get(name)
        cut = _pieces(name, weight, known, family, heads, view) if weight is not None else [None] * len(pieces)
        layer_shape = tuple(block.shape) if block.ndim > 2 else None
        for (label, piece, build), weight_piece in zip(pieces, cut, strict=True):
            sources[label] = GraphSource(piece, build, None if weight_piece is None else weight_piece[1],
                                         layer_shape)
    return sources


def layer_graphs(masks: Mapping[str, Any], gates: Mapping[str, Sequence[str]] | None = None, *,
                 family: Family | None = None, heads: bool = False, conv: str = "auto") -> dict[str, Graph]:
    """The graphs of every layer of a model's masks, by graph name.

    Graph names are unique and readable: the layer's name for a layer that is one graph (``"fc.weight"``), and
    the layer's name with the gate, projection or head in brackets otherwise (``"lstm.weight_hh_l0[f]"``,
    ``"h.0.attn.c_attn.weight[q]"``, ``"…q_proj.weight[q.h3]"``); tables and figures use them.

    Recurrent hidden-to-hidden weights are split into their gate graphs (square, kind ``recurrent``) and their
    input-to-hidden siblings into one bipartite graph per gate (kind ``recurrent-input``), gates found by
    :func:`recurrent_gates` (``gates`` adds or overrides, e.g. when masks arrive one layer at a time);
    convolutions give channel or kernel graphs (``conv``, :func:`conv_view`); other 2-D weights give bipartite
    graphs read as ``family`` says (:func:`topo.families.views`: Conv1D weights transposed, fused projections
    split, attention projections of kind ``attention`` and, with ``heads``, split per head; embedding tables of
    kind ``embedding``). 1-D masks (biases) are skipped.
    """
    return {label: source.build(source.block) for label, source in
            graph_sources(masks, gates, family=family, heads=heads, conv=conv).items()}

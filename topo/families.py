"""What the weights of a model family mean: orientation, fused projections, attention heads, embeddings, order.

One table serves reading checkpoints (:mod:`topo.record.formats`, :mod:`topo.analyze`), building graphs
(:func:`topo.graph.layer_graphs`) and choosing the weights a method sparsifies (:mod:`topo.sparsity.masks`), so a
weight means the same thing everywhere:

* **Orientation.** Hugging Face's ``Conv1D`` (GPT-2, OpenAI GPT, ImageGPT, Decision Transformer) stores a
  projection as (in, out), the transpose of ``nn.Linear``'s (out, in). topo reads every such weight as (out, in).
  Which weights are ``Conv1D`` is known from the module class when a model is given, from ``config.json``
  (``model_type``) beside a checkpoint, and otherwise from the GPT-2 family's names (``c_attn``, ``c_proj``,
  ``c_fc``, ``q_attn``) when the model's ``c_attn`` has three times as many columns as rows.
* **Fused projections** are split into one graph per projection, named like the LSTM gates:
  GPT-2's ``c_attn`` → ``[q]``, ``[k]``, ``[v]`` (thirds of its outputs); ``nn.MultiheadAttention``'s
  ``in_proj_weight`` → ``[q|k|v]``; ``qkv_proj`` / ``Wqkv`` → ``[q|k|v]``, q of the hidden size (the weight's
  inputs) and k and v sharing the rest equally, checked against the head counts where they are known; a fused
  weight whose shape allows no such split stays one graph, and the reading line says so;
  GPT-NeoX's and BLOOM's ``query_key_value``, interleaved per head as (heads, 3, head_dim), de-interleaved into
  ``[q|k|v]`` (this needs the head count, from ``config.json`` or the model); ``gate_up_proj`` → ``[gate|up]``.
* **Heads.** With ``heads=True`` the query, key and value projections are split into one graph per head along
  their outputs, and the output projection along its inputs: ``…[q.h3]``, ``…[o.h0]``. Unfused projections
  (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` of Llama and Mistral; BERT's ``query``, ``key``, ``value``,
  ``attention.output.dense``; ``out_proj``) keep their names.
* **Embeddings** (``wte``, ``wpe``, ``embed_tokens``, ``word_embeddings``, ``position_embeddings``,
  ``token_type_embeddings``, ``embed_positions``, ``shared``, an ``nn.Embedding`` when a model is given, and an
  ``lm_head`` tied to one) are kind ``embedding``: tables, not layers, so analyses leave them out unless asked.
* **Order.** :func:`natural_key` sorts dotted names with their numbers compared as numbers (layer 2 before 10);
  :func:`module_order_key` puts a transformer's weights in module order (embeddings, each block's attention then
  its MLP, the head), which safetensors files, sorted by name, lose.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: ``config.json`` model types whose projections are Hugging Face ``Conv1D`` weights, stored (in, out).
CONV1D_MODEL_TYPES = frozenset({"gpt2", "openai-gpt", "imagegpt", "decision_transformer"})
#: Model types whose ``query_key_value`` holds (heads, 3, head_dim) rows: q, k and v interleaved per head.
INTERLEAVED_QKV_MODEL_TYPES = frozenset({"gpt_neox", "bloom"})

_CONV1D_NAME = re.compile(r"(^|\.)(c_attn|c_proj|c_fc|q_attn)\.weight$")
_EMBEDDING_NAME = re.compile(r"(^|\.)(wte|wpe|embed_tokens|word_embeddings|position_embeddings|"
                             r"token_type_embeddings|embed_positions|shared)\.weight$")
_TIED_HEAD_NAME = re.compile(r"(^|\.)(lm_head|embed_out|decoder)\.weight$")
#: Fused projections: name pattern → the parts along the outputs, and whether they are interleaved per head.
_FUSED = (
    (re.compile(r"(^|\.)(attn|crossattention)\.c_attn\.weight$"), ("q", "k", "v")),
    (re.compile(r"(^|\.)in_proj_weight$"), ("q", "k", "v")),
    (re.compile(r"(^|\.)(qkv_proj|Wqkv)\.weight$"), ("q", "k", "v")),
    (re.compile(r"(^|\.)query_key_value\.weight$"), ("q", "k", "v")),
    (re.compile(r"(^|\.)gate_up_proj\.weight$"), ("gate", "up")),
)
_INTERLEAVED = re.compile(r"(^|\.)query_key_value\.weight$")
#: Unfused attention projections by name: which of q, k, v, o each is.
_PROJECTIONS = (
    (re.compile(r"(^|\.)(q_proj|query|q_lin|q)\.weight$"), "q"),
    (re.compile(r"(^|\.)(k_proj|key|k_lin|k)\.weight$"), "k"),
    (re.compile(r"(^|\.)(v_proj|value|v_lin|v)\.weight$"), "v"),
    (re.compile(r"(^|\.)(o_proj|out_proj|out_lin|attention\.output\.dense|attention\.dense|"
                r"self_attention\.dense|attn\.c_proj|o)\.weight$"), "o"),
)
_NUMBER = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key of a dotted name with its numbers compared as numbers: ``h.2.attn`` before ``h.10.attn``."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in _NUMBER.split(name) if part)


def is_embedding_name(name: str) -> bool:
    """Whether ``name`` is an embedding table's by its name (``wte``, ``embed_tokens``, ``word_embeddings`` …)."""
    return bool(_EMBEDDING_NAME.search(name))


def is_output_head_name(name: str) -> bool:
    """Whether ``name`` is an output head's that models often tie to their embedding table (``lm_head`` …)."""
    return bool(_TIED_HEAD_NAME.search(name))


#: Where a weight sits within its block, by name: attention (q, k, v or fused; then its output projection), then
#: the MLP (gate, up or fused; then down). Names matching none sit between the attention and the MLP.
_BLOCK_ORDER = (
    (re.compile(r"(^|\.)(c_attn|qkv_proj|Wqkv|query_key_value|in_proj_weight|q_proj|query|q_lin|q)(\.weight)?$"), 0),
    (re.compile(r"(^|\.)(k_proj|key|k_lin|k)\.weight$"), 1),
    (re.compile(r"(^|\.)(v_proj|value|v_lin|v)\.weight$"), 2),
    (_PROJECTIONS[3][0], 3),
    (re.compile(r"(^|\.)(gate_up_proj|gate_proj|c_fc|fc1|fc_in|intermediate\.dense|dense_h_to_4h|w1|wi|wi_0)"
                r"\.weight$"), 5),
    (re.compile(r"(^|\.)(up_proj|w3|wi_1)\.weight$"), 6),
    (re.compile(r"(^|\.)(down_proj|mlp\.c_proj|fc2|fc_out|output\.dense|dense_4h_to_h|w2|wo)\.weight$"), 7),
)
_BLOCK = re.compile(r"^(.*?)\.(\d+)\.(.*)$")


def module_order_key(name: str) -> tuple:
    """Sort key putting a transformer's weights in module order: embeddings, then block by block (an encoder's
    before a decoder's) each block's attention (q, k, v, output) before its MLP (gate, up, down), then whatever
    follows the blocks (final norms, pooler, the output head last). Numbers compare as numbers
    (:func:`natural_key`); a block's sub-blocks (T5's ``layer.0`` self-attention, ``layer.1`` cross-attention)
    keep their order."""
    if is_embedding_name(name):
        return (0, natural_key(name))
    block = _BLOCK.match(name)
    if block is None:
        return (2, int(is_output_head_name(name)), natural_key(name))
    stack, index, rest = block.groups()
    inner = tuple(int(number) for number in _NUMBER.findall(rest))
    rank = next((rank for pattern, rank in _BLOCK_ORDER if pattern.search(rest)), 4)
    return (1, "decoder" in stack.split("."), natural_key(stack), int(index), inner, rank, natural_key(rest))


@dataclass(frozen=True)
class Role:
    """What one weight is.

    Attributes
    ----------
    kind: ``"embedding"``, ``"attention"`` (a q/k/v/o projection, fused or not) or ``"layer"`` (anything else).
    transposed: stored (in, out) (``Conv1D``): read as its transpose.
    parts: the projections fused along its outputs (``("q", "k", "v")``, ``("gate", "up")``), or ().
    sizes: the number of outputs of each part (equal thirds unless the head counts say otherwise).
    interleaved: the parts are interleaved per head, (heads, parts, head_dim) (GPT-NeoX, BLOOM).
    projection: ``"q"``, ``"k"``, ``"v"`` or ``"o"`` for an unfused attention projection.
    """

    kind: str = "layer"
    transposed: bool = False
    parts: tuple[str, ...] = ()
    sizes: tuple[int, ...] = ()
    interleaved: bool = False
    projection: str | None = None


@dataclass(frozen=True)
class Family:
    """How to read the weights of one model (see the module docstring); :func:`detect` builds it.

    Attributes
    ----------
    model_type: ``config.json``'s ``model_type``, or None.
    transposed: names of the weights stored (in, out).
    embeddings: names of the embedding tables (a tied output head included).
    heads, kv_heads: attention heads and key/value heads (None when unknown).
    interleaved_qkv: ``query_key_value`` is interleaved per head.
    found_by: how the family was found, for the user (``"config.json (gpt2)"``, ``"module classes"``, …).
    """

    model_type: str | None = None
    transposed: frozenset[str] = frozenset()
    embeddings: frozenset[str] = frozenset()
    heads: int | None = None
    kv_heads: int | None = None
    interleaved_qkv: bool = False
    found_by: str = "names"
    notes: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        """The family as JSON (``run.json`` keeps it, so a run's masks are read as the model meant them)."""
        return {"model_type": self.model_type, "transposed": sorted(self.transposed),
                "embeddings": sorted(self.embeddings), "heads": self.heads, "kv_heads": self.kv_heads,
                "interleaved_qkv": self.interleaved_qkv, "found_by": self.found_by}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Family:
        """The family :meth:`to_json` wrote (the generic family for None: runs recorded before families)."""
        if not data:
            return cls()
        return cls(data.get("model_type"), frozenset(data.get("transposed", ())),
                   frozenset(data.get("embeddings", ())), data.get("heads"), data.get("kv_heads"),
                   bool(data.get("interleaved_qkv")), str(data.get("found_by", "run.json")))

    def role(self, name: str, shape: Sequence[int]) -> Role:
        """The :class:`Role` of the weight ``name`` of stored shape ``shape``."""
        if name in self.embeddings:
            return Role("embedding")
        transposed = name in self.transposed
        rows = int(shape[1] if transposed else shape[0]) if len(shape) >= 2 else 0
        for pattern, parts in _FUSED:
            if pattern.search(name) and len(shape) == 2:
                interleaved = bool(_INTERLEAVED.search(name))
                if interleaved and not (self.interleaved_qkv and self.heads):
                    break  # its layout is not known: one graph
                sizes = self._part_sizes(parts, rows, int(shape[0] if transposed else shape[1]),
                                         pair=pattern is _FUSED[0][0])
                if sizes is None:
                    break
                if len(parts) == 3 and len(sizes) == 2:
                    parts = ("k", "v")  # a cross-attention c_attn: keys and values only
                kind = "attention" if parts[0] in ("q", "k") else "layer"
                return Role(kind, transposed, parts, sizes, interleaved)
        for pattern, projection in _PROJECTIONS:
            if pattern.search(name) and len(shape) == 2:
                return Role("attention", transposed, projection=projection)
        return Role("layer", transposed)

    def _part_sizes(self, parts: tuple[str, ...], rows: int, cols: int, pair: bool) -> tuple[int, ...] | None:
        """Rows of each fused part of an (out=rows, in=cols) weight, or None where they are not known.

        q, k, v: q has the hidden size (the weight's inputs) and k and v share the rest equally, as in every family
        of the table (GQA's smaller k and v included); with head counts known, k and v must also hold
        ``kv_heads`` heads of ``cols / heads`` rows. A GPT-2 ``c_attn`` of twice as many outputs as inputs is a
        cross-attention's keys and values (``pair``). Other fused weights split into equal parts."""
        if parts != ("q", "k", "v"):
            return (rows // len(parts),) * len(parts) if rows % len(parts) == 0 else None
        if pair and rows == 2 * cols:
            return (cols, cols)
        rest = rows - cols
        if rest <= 0 or rest % 2:
            return None
        known = self.heads and self.kv_heads and cols % self.heads == 0
        if known and rest // 2 != self.kv_heads * (cols // self.heads):
            return None
        return (cols, rest // 2, rest // 2)

    def head_counts(self, projection: str) -> int | None:
        """Heads of a projection: the key/value heads for k and v, else the attention heads."""
        return (self.kv_heads or self.heads) if projection in ("k", "v") else self.heads


def _config_heads(config: Mapping[str, Any]) -> tuple[int | None, int | None]:
    heads = next((config[k] for k in ("num_attention_heads", "n_head", "num_heads", "n_heads") if k in config),
                 None)
    kv = next((config[k] for k in ("num_key_value_heads", "n_head_kv", "num_kv_heads") if config.get(k)), None)
    return (int(heads) if heads else None), (int(kv) if kv else None)


_QUERY_OF_KEY = {"k_proj": "q_proj", "key": "query", "k_lin": "q_lin", "k": "q"}


def _kv_heads_from_shapes(shapes: Mapping[str, Sequence[int]], heads: int | None) -> int | None:
    """Key/value heads of grouped-query attention read off unfused projections: the key projection's outputs
    over the query's head size (q_proj rows / ``heads``), when every block agrees; None where nothing says."""
    if not heads:
        return None
    found = set()
    for name, shape in shapes.items():
        match = _PROJECTIONS[1][0].search(name)
        if match is None or len(shape) != 2:
            continue
        query = shapes.get(name[:match.start(2)] + _QUERY_OF_KEY[match.group(2)] + name[match.end(2):])
        if query is None or len(query) != 2 or query[0] % heads or shape[0] % (query[0] // heads):
            return None
        found.add(shape[0] // (query[0] // heads))
    return found.pop() if len(found) == 1 else None


def read_config(path: str | Path) -> dict[str, Any] | None:
    """``config.json`` of a Hugging Face checkpoint at ``path`` (a directory, or a file beside it), or None."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    candidate = folder / "config.json"
    if not candidate.is_file():
        return None
    try:
        config = json.loads(candidate.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return config if isinstance(config, dict) else None


def detect(shapes: Mapping[str, Sequence[int]], config: Mapping[str, Any] | None = None, *,
           conv1d: Iterable[str] | None = None, embeddings: Iterable[str] | None = None,
           heads: int | None = None, kv_heads: int | None = None) -> Family:
    """The :class:`Family` of a model whose weights have ``shapes`` (name → stored shape).

    ``config`` is its ``config.json`` when there is one; ``conv1d`` and ``embeddings`` name the weights known by
    their module class (a model at hand), which then decide; ``heads`` / ``kv_heads`` override the head counts.
    Without a key/value head count (from the arguments or ``config.json``), grouped-query attention's is read off
    the unfused key and query projections (k's outputs over q's head size); else it equals ``heads``.
    """
    model_type = str(config.get("model_type")) if config and config.get("model_type") else None
    config_heads, config_kv = _config_heads(config or {})
    heads = heads or config_heads
    kv_heads = kv_heads or config_kv or _kv_heads_from_shapes(shapes, heads) or heads
    notes: list[str] = []
    if conv1d is not None:
        transposed, found_by = frozenset(conv1d), "module classes"
    elif model_type is not None:
        found_by = f"config.json ({model_type})"
        transposed = frozenset(n for n, s in shapes.items() if len(s) == 2 and _CONV1D_NAME.search(n)) \
            if model_type in CONV1D_MODEL_TYPES else frozenset()
    else:
        found_by = "names"
        fused = [s for n, s in shapes.items() if len(s) == 2 and re.search(r"(^|\.)attn\.c_attn\.weight$", n)]
        gpt2_like = bool(fused) and all(s[1] == 3 * s[0] for s in fused)
        transposed = frozenset(n for n, s in shapes.items() if len(s) == 2 and _CONV1D_NAME.search(n)) \
            if gpt2_like else frozenset()
    if embeddings is not None:
        tables = set(embeddings)
    else:
        tables = {n for n in shapes if _EMBEDDING_NAME.search(n)}
        tied = bool(config.get("tie_word_embeddings", True)) if config else False
        table_shapes = {tuple(shapes[n]) for n in tables}
        tables |= {n for n, s in shapes.items() if tied and _TIED_HEAD_NAME.search(n) and tuple(s) in table_shapes}
    interleaved = model_type in INTERLEAVED_QKV_MODEL_TYPES
    if any(_INTERLEAVED.search(n) for n in shapes) and not (interleaved and heads):
        notes.append("query_key_value left fused: its layout needs config.json (gpt_neox or bloom) with the "
                     "number of heads")
    family = Family(model_type, transposed, frozenset(tables), heads, kv_heads, interleaved, found_by)
    unsplit = [n for n, s in shapes.items() if len(s) == 2 and n not in tables and not _INTERLEAVED.search(n)
               and any(pattern.search(n) for pattern, _ in _FUSED) and not family.role(n, s).parts]
    if unsplit:
        notes.append(f"{', '.join(unsplit[:3])}{', …' if len(unsplit) > 3 else ''} left fused: the shape does not "
                     "split into q of the hidden size and equal k and v (or into equal parts)")
    return Family(model_type, transposed, frozenset(tables), heads, kv_heads, interleaved, found_by, tuple(notes))


def detect_model(model: Any, config: Mapping[str, Any] | None = None) -> Family:
    """The :class:`Family` of a model at hand, from its module classes: ``Conv1D`` modules (any module class of
    that name with an ``nf`` attribute, as Hugging Face's), ``nn.Embedding`` tables and the weights tied to them
    (an output head sharing a table's storage), ``nn.MultiheadAttention``'s head count, and the model's
    ``config`` when it has one."""
    from torch import nn

    conv1d, tables, heads = [], [], None
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
            conv1d.append(f"{prefix}weight")
        elif isinstance(module, nn.Embedding):
            tables.append(f"{prefix}weight")
        elif isinstance(module, nn.MultiheadAttention):
            heads = heads or module.num_heads
    config = config if config is not None else getattr(getattr(model, "config", None), "to_dict", lambda: None)()
    state = model.state_dict()
    shared = {state[n].data_ptr() for n in tables if n in state}
    tables += [n for n, t in state.items() if n not in tables and t.dim() == 2 and t.data_ptr() in shared]  # tied
    return detect({n: tuple(t.shape) for n, t in state.items()}, config, conv1d=conv1d, embeddings=tables,
                  heads=heads)


def oriented(tensor: Any, role: Role) -> Any:
    """``tensor`` as (out, in): transposed when its role says it is stored (in, out)."""
    return tensor.T if role.transposed else tensor


def split_parts(matrix: Any, role: Role, family: Family) -> list[tuple[str, Any]]:
    """The fused parts of an (out, in) ``matrix`` as ``(part, rows)`` pairs (one ``("", matrix)`` if unfused)."""
    if not role.parts:
        return [("", matrix)]
    if role.interleaved:
        heads = family.heads
        head_dim = matrix.shape[0] // (heads * len(role.parts))
        grouped = matrix.reshape(heads, len(role.parts), head_dim, matrix.shape[1])
        return [(part, grouped[:, i].reshape(heads * head_dim, matrix.shape[1])) for i, part in enumerate(role.parts)]
    pieces, start = [], 0
    for part, size in zip(role.parts, role.sizes, strict=True):
        pieces.append((part, matrix[start:start + size]))
        start += size
    return pieces


def split_heads(matrix: Any, projection: str, heads: int, name: str) -> list[tuple[str, Any]]:
    """One (out, in) block per head: rows for q, k and v, columns (the concatenated heads) for o."""
    along = 1 if projection == "o" else 0
    size = matrix.shape[along]
    if size % heads:
        from topo.errors import ConfigError

        raise ConfigError(f"{name}: {size} {'inputs' if along else 'outputs'} do not split into {heads} heads")
    width = size // heads
    return [(f"{projection}.h{h}", matrix[:, h * width:(h + 1) * width] if along else
             matrix[h * width:(h + 1) * width]) for h in range(heads)]


def views(name: str, matrix: Any, family: Family, *, heads: bool = False) -> list[tuple[str, Any, str]]:
    """The graphs of one 2-D weight: ``(graph name, (out, in) block, kind)`` for each (see the module docstring).

    ``matrix`` is the weight (or its mask) as stored. Graph kinds: ``embedding``, ``attention`` (projections
    and their heads) or ``bipartite``.
    """
    role = family.role(name, tuple(matrix.shape))
    matrix = oriented(matrix, role)
    if role.kind == "embedding":
        return [(name, matrix, "embedding")]
    kind = "attention" if role.kind == "attention" else "bipartite"
    out = []
    for part, block in split_parts(matrix, role, family):
        projection = part if part in ("q", "k", "v") else role.projection
        count = family.head_counts(projection) if projection else None
        if heads and projection and count:
            out += [(f"{name}[{label}]", piece, "attention") for label, piece in
                    split_heads(block, projection, count, name)]
        elif part:
            out.append((f"{name}[{part}]", block, "attention" if part in ("q", "k", "v") else "bipartite"))
        else:
            out.append((name, block, kind))
    return out

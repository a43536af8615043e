"""Readers for the checkpoints people have: one stream of layers (name, weight, mask), whatever the file.

:func:`open_checkpoint` understands

* PyTorch files (``.pt``, ``.pth``, ``.bin``, Lightning's ``.ckpt``), read with ``torch.load(weights_only=True)``
  and memory-mapped where the file format allows, so tensors are paged in as layers are read. The weights are
  found at any depth and under any key: every mapping of names to tensors is a candidate, except those inside
  optimizer state (recognised by its structure, :func:`is_optimizer_state`, whatever key holds it) or under a key
  naming optimizer, scheduler or scaler state, and the largest candidate by number of values wins; ``key``
  picks one by its path (``model_state`` or ``a/b``). topo checkpoints give their stored masks;
* ``.safetensors`` files, read lazily: only the header until a layer is asked for, one tensor at a time;
* sharded Hugging Face checkpoints: a ``*.index.json`` with a ``weight_map``, or a directory holding one (or one
  ``model.safetensors`` / ``pytorch_model.bin``).

Layers are the floating-point tensors with two or more dimensions, in model order: a PyTorch file's own order;
for safetensors (whose headers sort names alphabetically) and sharded checkpoints with a ``config.json`` beside
them, the family's module order (:func:`topo.families.module_order_key`: embeddings, then each block's attention
and its MLP, then the head), and without one shard by shard and, within a shard, by
:func:`topo.families.natural_key` (layer 2 before layer 10). A weight tied to another (an output head sharing the
embedding table's storage, or equal to it) is read once, under the first name (:func:`tied_weights`). float8
weights are read as float32, one layer at a time; an int8 or otherwise quantized weight, and ``quantize_dynamic``'s
packed parameters, are one error naming them ("dequantize first").
``x.weight_orig`` + ``x.weight_mask`` (``torch.nn.utils.prune``) give layer ``x.weight``, and a ``x.weight_mask``
beside ``x.weight`` is its mask; otherwise the mask is the non-zero, finite weights. Reading never executes code.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from topo.errors import CheckpointError, ConfigError
from topo.families import is_embedding_name, is_output_head_name, module_order_key, natural_key, read_config
from topo.record.storage_check import check_storage_records
from topo.record.training_state import is_topo_checkpoint, safe_load, unpack_state

#: Keys under which a mapping of tensors is optimizer (or similar) state, never weights.
NOT_WEIGHTS = re.compile(r"optim|scheduler|scaler|lr_sched", re.IGNORECASE)
_FLOAT_SAFETENSORS = {"F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2"}
_FLOAT8 = tuple(getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
                if hasattr(torch, name))
_INTEGER_SAFETENSORS = {"I8", "U8", "I16", "U16", "I32", "U32", "I64", "U64"}
#: A tensor of two or more dimensions with one of these names is a weight (quantized when it is not floating).
_WEIGHT_NAME = re.compile(r"(^|\.|_)(q?weight|weight_orig)$")
SAFETENSORS_HINT = 'reading .safetensors needs the safetensors package: pip install "topo[formats]"'


@dataclass(frozen=True)
class Layer:
    """One layer of a checkpoint: its weight (CPU, as stored) and boolean mask (stored, or the non-zeros)."""

    name: str
    weight: torch.Tensor | None
    mask: torch.Tensor


@dataclass(frozen=True)
class _Entry:
    weight: str  # the tensor holding the weight (``x.weight`` or ``x.weight_orig``)
    mask: str | None  # a stored mask tensor, if any
    shape: tuple[int, ...]


def _number_format(dtype: Any) -> str:
    """``"float"``, ``"integer"`` or ``"quantized"`` for a torch dtype or a safetensors dtype string."""
    if isinstance(dtype, str):
        return "float" if dtype in _FLOAT_SAFETENSORS else "integer" if dtype in _INTEGER_SAFETENSORS else "other"
    if dtype.is_floating_point:
        return "float"
    return "quantized" if dtype in (torch.qint8, torch.quint8, torch.qint32, torch.quint4x2) else "integer"


def _refuse_quantized(keys: Mapping[str, tuple[tuple[int, ...], Any]], source: str) -> None:
    """One line naming the first quantized weight (int8 or a quantized dtype where a weight is expected)."""
    for key, (shape, dtype) in keys.items():
        if len(shape) >= 2 and _number_format(dtype) != "float" and _WEIGHT_NAME.search(key):
            raise CheckpointError(f"{source}: layer {key!r} is stored as {dtype} (quantized); topo reads floating "
                                  "point weights: dequantize first")


def _layers_of(keys: Mapping[str, tuple[tuple[int, ...], bool]]) -> dict[str, _Entry]:
    """Layer name → entry, from tensor name → (shape, is floating point)."""
    layers: dict[str, _Entry] = {}
    for key, (shape, floating) in keys.items():
        if key.endswith("_mask") and (f"{key[:-5]}_orig" in keys or key[:-5] in keys):
            continue
        if key.endswith("_orig") and f"{key[:-5]}_mask" in keys:
            layers[key[:-5]] = _Entry(key, f"{key[:-5]}_mask", shape)
        elif floating and len(shape) >= 2:
            layers[key] = _Entry(key, f"{key}_mask" if f"{key}_mask" in keys else None, shape)
    return layers


def _mask_of(name: str, weight: torch.Tensor, stored: torch.Tensor | None, source: str) -> torch.Tensor:
    if stored is not None:
        return stored != 0
    if bool(torch.isfinite(weight.sum())):  # a finite sum: every weight is finite (checked without a copy)
        return weight != 0
    finite = torch.isfinite(weight)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        warnings.warn(f"{source}: layer {name!r} holds {bad} inf/NaN weight(s); they are counted as inactive",
                      RuntimeWarning, stacklevel=3)
    return (weight != 0) & finite


class CheckpointSource:
    """The layers of one checkpoint, read one at a time (see the module docstring).

    Attributes
    ----------
    path: the file or directory read.
    description: where the weights were found (for the user), e.g. ``"state_dict under 'model_state'"``.
    tied: weight name → the earlier weight it is tied to (the same storage, or an output head equal to an
        embedding table); tied weights are one layer, read under the first name (:func:`tied_weights`).
    """

    def __init__(self, path: Path, description: str, entries: dict[str, _Entry],
                 tied: Mapping[str, str] | None = None) -> None:
        self.path = path
        self.description = description
        self.tied = dict(tied or {})
        self._entries = {name: entry for name, entry in entries.items() if name not in self.tied}
        if not self._entries:
            raise CheckpointError(f"{path}: no weight with two or more dimensions (nothing to analyse)")

    @property
    def names(self) -> list[str]:
        """Layer names, in the checkpoint's order."""
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        """The stored shape of layer ``name``, read without loading its tensor."""
        return self._entries[name].shape

    def _tensor(self, key: str) -> torch.Tensor:
        raise NotImplementedError

    def load(self, name: str) -> Layer:
        """Read one layer: its weight (float8 upcast to float32, a layer at a time) and its mask."""
        entry = self._entries[name]
        weight = self._tensor(entry.weight)
        if weight.dtype in _FLOAT8:
            weight = weight.float()
        stored = self._tensor(entry.mask) if entry.mask is not None else None
        mask = _mask_of(name, weight, stored, str(self.path))
        if stored is not None:  # the weight as the model uses it: zero where the stored mask is
            weight = weight * mask
        return Layer(name, weight, mask)

    def __iter__(self) -> Iterator[Layer]:
        return (self.load(name) for name in self.names)


def _storage_identity(tensor: torch.Tensor) -> tuple:
    """What makes two tensors the same weight: the same bytes of the same storage, viewed alike."""
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()),
            tensor.dtype)


def tied_weights(names: list[str], shape: Any, load: Any, same_storage: Any = None) -> dict[str, str]:
    """Weight name → the earlier weight it is tied to, among ``names`` (in order; ``shape(name)``,
    ``load(name)`` give a weight's shape and tensor).

    Two weights are tied when ``same_storage(name)`` gives both the same key (their weight, and their stored
    mask if any, share storage: a ``torch.save``'d model whose output head is its embedding table), or when an
    output head (``lm_head``, ``embed_out``, ``decoder``) equals an embedding table of the same shape element for
    element (a copy that kept both). Hugging Face's ``save_pretrained`` leaves a tied head out of its safetensors
    file; counting it once keeps both copies of a model alike."""
    tied: dict[str, str] = {}
    if same_storage is not None:
        seen: dict[Any, str] = {}
        for name in names:
            key = same_storage(name)
            if key in seen:
                tied[name] = seen[key]
            else:
                seen[key] = name
    tables = [n for n in names if is_embedding_name(n) and n not in tied]
    for head in (n for n in names if is_output_head_name(n) and n not in tied):
        for table in tables:
            if tuple(shape(table)) == tuple(shape(head)):
                first, second = load(table), load(head)
                if first.dtype == second.dtype and torch.equal(first, second):
                    tied[head] = table
                    break
    return tied


class _MappingSource(CheckpointSource):
    def __init__(self, path: Path, description: str, tensors: Mapping[str, torch.Tensor],
                 masks: Mapping[str, torch.Tensor] | None = None) -> None:
        self._tensors = dict(tensors)
        self._masks = dict(masks or {})
        tied: dict[str, str] = {}
        if masks is not None:  # a topo checkpoint: its masks name the layers
            entries = {n: _Entry(n, f"{n}\0mask", tuple(m.shape)) for n, m in masks.items()}
        else:
            _refuse_quantized({k: (tuple(v.shape), v.dtype) for k, v in self._tensors.items()}, str(path))
            keys = {k: (tuple(v.shape), v.is_floating_point()) for k, v in self._tensors.items()}
            entries = _layers_of(keys)
            tied = tied_weights(list(entries), lambda n: entries[n].shape,
                                lambda n: self._tensors[entries[n].weight],
                                lambda n: (_storage_identity(self._tensors[entries[n].weight]),
                                           None if entries[n].mask is None else
                                           _storage_identity(self._tensors[entries[n].mask])))
        super().__init__(path, description, entries, tied)

    def _tensor(self, key: str) -> torch.Tensor:
        if key.endswith("\0mask"):
            return self._masks[key[:-5]]
        if key not in self._tensors:  # a topo checkpoint's layer whose weight is not in the model
            return torch.ones(self._masks[key].shape)
        return self._tensors[key]


class _SafetensorsSource(CheckpointSource):
    def __init__(self, path: Path, files: Mapping[str, Path], module_order: bool = False) -> None:
        try:
            from safetensors import SafetensorError, safe_open
        except ImportError:
            raise ConfigError(f"{path}: {SAFETENSORS_HINT}") from None
        self._safe_open = safe_open
        self._files = dict(files)
        keys: dict[str, tuple[tuple[int, ...], bool]] = {}
        dtypes: dict[str, tuple[tuple[int, ...], str]] = {}
        for file in sorted(set(self._files.values()), key=lambda f: natural_key(f.name)):
            if not file.exists():
                raise CheckpointError(f"{path}: shard {file.name} is missing (looked for {file})")
            try:
                with safe_open(str(file), framework="pt") as handle:
                    for key in handle.keys():
                        if self._files.get(key, file) != file:
                            continue
                        info = handle.get_slice(key)
                        keys[key] = (tuple(info.get_shape()), info.get_dtype() in _FLOAT_SAFETENSORS)
                        dtypes[key] = (keys[key][0], info.get_dtype())
                        self._files[key] = file
            except (SafetensorError, OSError, ValueError) as exc:
                raise CheckpointError(f"{file}: not a readable safetensors file ({exc})") from None
        absent = sorted(set(self._files) - set(keys))
        if absent:
            raise CheckpointError(f"{path}: the index maps {absent[0]!r} (and {len(absent) - 1} more) to "
                                  f"{self._files[absent[0]].name}, which does not hold it")
        _refuse_quantized(dtypes, str(path))
        shards = len(set(self._files.values()))
        if module_order:
            in_order = sorted(keys, key=module_order_key)
        else:
            in_order = sorted(keys, key=lambda k: (natural_key(self._files[k].name), natural_key(k)))
        entries = _layers_of({k: keys[k] for k in in_order})
        tied = tied_weights(list(entries), lambda n: entries[n].shape, lambda n: self._tensor(entries[n].weight))
        super().__init__(path, f"safetensors, {shards} file(s), {len(keys)} tensors", entries, tied)

    def _tensor(self, key: str) -> torch.Tensor:
        with self._safe_open(str(self._files[key]), framework="pt") as handle:
            # an owned copy: the memory-mapped tensor would keep the file's pages and may be unaligned
            return handle.get_tensor(key).clone()


def is_optimizer_state(node: Any) -> bool:
    """Whether ``node`` is an optimizer's state dict, by its structure rather than the key it is stored under:
    a mapping with ``state`` (a mapping) and ``param_groups`` (a list of mappings that name their ``params``), as
    ``torch.optim.Optimizer.state_dict()`` and ``torch.distributed.checkpoint.state_dict.get_optimizer_state_dict``
    (keyed by parameter names) both write it."""
    if not isinstance(node, Mapping) or "param_groups" not in node or not isinstance(node.get("state"), Mapping):
        return False
    groups = node["param_groups"]
    return isinstance(groups, (list, tuple)) and all(isinstance(g, Mapping) and "params" in g for g in groups)


def _find_weights(obj: Any, key: str | None, source: str) -> tuple[Mapping[str, torch.Tensor], str]:
    """The mapping of weights in a loaded checkpoint, and a description of where it was."""
    if key is not None:
        node: Any = obj
        remaining = key
        path: list[str] = []
        while remaining:
            if not isinstance(node, Mapping):
                raise ConfigError(f"{source}: --key {key!r}: {'/'.join(path) or 'the top level'} is a "
                                  f"{type(node).__name__}, not a mapping")
            match = next((k for k in sorted(map(str, node), key=len, reverse=True)
                          if remaining == k or remaining.startswith(k + "/") or remaining.startswith(k + ".")),
                         None)
            if match is None:
                raise ConfigError(f"{source}: --key {key!r}: no key {remaining!r} under "
                                  f"{'/'.join(path) or 'the top level'} (keys: {list(node)[:8]})")
            node = next(v for k, v in node.items() if str(k) == match)
            path.append(match)
            remaining = remaining[len(match) + 1:]
        tensors = {k: v for k, v in node.items() if isinstance(k, str) and torch.is_tensor(v)} \
            if isinstance(node, Mapping) else {}
        if not tensors:
            raise ConfigError(f"{source}: --key {key!r} holds no tensors")
        return tensors, f"--key {key!r}"
    candidates: list[tuple[int, str, dict[str, torch.Tensor]]] = []

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if is_optimizer_state(node):
            return
        if isinstance(node, Mapping):
            tensors = {k: v for k, v in node.items() if isinstance(k, str) and torch.is_tensor(v)}
            values = sum(v.numel() for v in tensors.values() if v.is_floating_point() or v.is_quantized)
            if values:
                candidates.append((values, "/".join(path) or "the top level", tensors))
            for k, v in node.items():
                if isinstance(k, str) and not NOT_WEIGHTS.search(k) and isinstance(v, (Mapping, list, tuple)):
                    walk(v, (*path, k))
        elif isinstance(node, (list, tuple)):
            for index, v in enumerate(node):
                if isinstance(v, (Mapping, list, tuple)):
                    walk(v, (*path, str(index)))

    walk(obj, ())
    if not candidates:
        keys = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{source}: no mapping of names to weights found (top level: {keys})")
    values, where, tensors = max(candidates, key=lambda c: c[0])
    others = f"; {len(candidates) - 1} smaller mapping(s) ignored" if len(candidates) > 1 else ""
    return tensors, f"weights under {where!r} ({values:,} values{others})"


def _refuse_packed(obj: Any, path: Path) -> None:
    """One line naming the first layer stored as ``torch.ao.quantization.quantize_dynamic``'s packed parameters
    (``fc._packed_params._packed_params``: int8 weights inside an opaque tuple)."""
    pending = [obj]
    while pending:
        node = pending.pop()
        if isinstance(node, Mapping):
            for key, value in node.items():
                if isinstance(key, str) and key.endswith("_packed_params"):
                    layer = key.split("._packed_params")[0]
                    raise CheckpointError(f"{path}: layer {layer!r} is stored as quantized packed parameters "
                                          "(torch.ao.quantization.quantize_dynamic); topo reads floating point "
                                          "weights: dequantize first")
                if isinstance(value, (Mapping, list, tuple)):
                    pending.append(value)
        elif isinstance(node, (list, tuple)):
            pending.extend(v for v in node if isinstance(v, (Mapping, list, tuple)))


def _load_torch(path: Path) -> Any:
    """A PyTorch file, memory-mapped, with its storage records' sizes checked (:mod:`topo.record.storage_check`);
    files that cannot be memory-mapped (the legacy format) or fail to load that way go through the safe loader,
    which reads them or says in one line why not."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # any failure: the safe loader reads the file or names what is wrong
        return safe_load(path)
    check_storage_records(path)
    return loaded


def _index_files(index: Path) -> dict[str, Path]:
    try:
        data = json.loads(index.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{index}: not a JSON index ({exc})") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: no 'weight_map' (a sharded checkpoint's index maps tensors to files)")
    return {str(k): index.parent / str(v) for k, v in weight_map.items()}


def open_checkpoint(path: str | os.PathLike, key: str | None = None) -> CheckpointSource:
    """The layers of the checkpoint at ``path`` (file, sharded index or directory), to be read one at a time.

    Raises
    ------
    CheckpointError
        Naming the file: missing, unreadable, corrupt, refused by the safe loader, an index pointing at a missing
        shard, or nothing to analyse.
    ConfigError
        For a ``key`` that does not exist, or safetensors input without the ``safetensors`` package.
    """
    path = Path(path)
    if path.is_dir():
        indexes = sorted(path.glob("*.index.json"))
        singles = [path / name for name in ("model.safetensors", "pytorch_model.bin")
                   if (path / name).exists()]
        if indexes:
            return _open_index(indexes[0], key)
        if singles:
            return open_checkpoint(singles[0], key)
        raise CheckpointError(f"{path}: a directory without a checkpoint (no *.index.json, model.safetensors, "
                              "pytorch_model.bin) and not a topo run directory")
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.name.endswith(".index.json"):
        return _open_index(path, key)
    if path.suffix == ".safetensors":
        _no_key(key, path)
        return _single_safetensors(path)
    obj = _load_torch(path)
    if is_topo_checkpoint(obj):
        state = unpack_state(obj["packed"]) if "packed" in obj else obj
        _no_key(key, path)
        return _MappingSource(path, "topo checkpoint (stored masks)", state["model"], state["masks"])
    _refuse_packed(obj, path)
    tensors, description = _find_weights(obj, key, str(path))
    return _MappingSource(path, description, tensors)


def state_dict_source(state: Mapping[str, torch.Tensor], label: str = "model") -> CheckpointSource:
    """The layers of a state dict in memory (a model's own ``state_dict()``), in its order."""
    return _MappingSource(Path(label), f"state_dict of {label}", state)


def _no_key(key: str | None, path: Path) -> None:
    if key is not None:
        raise ConfigError(f"{path}: --key applies to PyTorch files holding nested mappings, not to this format")


def _single_safetensors(path: Path) -> CheckpointSource:
    try:
        from safetensors import SafetensorError, safe_open
    except ImportError:
        raise ConfigError(f"{path}: {SAFETENSORS_HINT}") from None
    try:
        with safe_open(str(path), framework="pt") as handle:
            names = list(handle.keys())
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    return _SafetensorsSource(path, {name: path for name in names}, module_order=read_config(path) is not None)


def _open_index(index: Path, key: str | None) -> CheckpointSource:
    _no_key(key, index)
    files = _index_files(index)
    module_order = read_config(index) is not None
    if all(f.suffix == ".safetensors" for f in files.values()):
        return _SafetensorsSource(index, files, module_order)
    missing = sorted({f for f in files.values() if not f.exists()})
    if missing:
        raise CheckpointError(f"{index}: shard {missing[0].name} is missing (looked for {missing[0]})")
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(set(files.values())):
        loaded, _ = _find_weights(_load_torch(file), None, str(file))
        tensors.update({k: v for k, v in loaded.items() if files.get(k) == file})
    if module_order:
        tensors = {k: tensors[k] for k in sorted(tensors, key=module_order_key)}
    return _MappingSource(index, f"sharded PyTorch checkpoint, {len(set(files.values()))} file(s)", tensors)

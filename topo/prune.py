"""``topo prune``: a Hugging Face model directory in, a one-shot pruned one out.

>>> prune_pretrained("llama-dir", "llama-wanda-50", "wanda", "train.txt", density=0.5)   # doctest: +SKIP

The calibration is :data:`DEFAULT_SAMPLES` windows of ``seqlen`` tokens drawn at random (seeded) from one text
file, as the authors draw theirs from C4 (locuslab/wanda ``get_c4``: a random start in each chosen text); the rules
and the block-by-block driver are :mod:`topo.sparsity.oneshot`. Every argument is checked before the model is
loaded, and the output is written to a temporary folder beside ``OUT`` and renamed once complete, so a failure
writes nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from topo.errors import CheckpointError, ConfigError, OutputError
from topo.options import check_oneshot_options

#: Calibration sequences and their length, as in the Wanda and SparseGPT papers (capped at the model's context).
DEFAULT_SAMPLES = 128
DEFAULT_SEQLEN = 2048


@dataclass
class PruneResult:
    """What :func:`prune_pretrained` did: the output folder, the layers pruned, their weights and how many of
    them are now zero, and the calibration used."""

    out: Path
    layers: int
    weights: int
    kept: int
    samples: int
    seqlen: int

    def line(self, method: str, target: str) -> str:
        """The one line ``topo prune`` prints: where the model went, how many weights were kept, the calibration."""
        return (f"{self.out}: {self.layers} layers pruned by {method} to {target} ({self.kept:,} of "
                f"{self.weights:,} weights kept, {self.kept / self.weights:.3f}); calibration {self.samples} × "
                f"{self.seqlen} tokens")


def check_prune_options(model_dir: str | os.PathLike, out: str | os.PathLike, method: str,
                        calibration: str | os.PathLike | None, density: float | None, structure: str | None,
                        samples: int, seqlen: int | None) -> None:
    """Raise :class:`ConfigError` for the first argument out of its range, without loading or importing anything
    heavy."""
    check_oneshot_options(method, density, structure)
    if samples < 1:
        raise ConfigError(f"--samples must be >= 1, got {samples}")
    if seqlen is not None and seqlen < 1:
        raise ConfigError(f"--seqlen must be >= 1, got {seqlen}")
    if not (Path(model_dir) / "config.json").is_file():
        raise CheckpointError(f"{model_dir}: not a Hugging Face model directory (no config.json)")
    if method != "magnitude" and calibration is None:
        raise ConfigError(f"{method} needs --calibration FILE.txt (text to draw calibration sequences from)")
    if calibration is not None and not Path(calibration).is_file():
        raise ConfigError(f"--calibration {calibration}: no such file")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"-o {out}: exists and is not an empty folder (topo prune never overwrites)")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"-o {out}: no such directory {parent}")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"-o {out}: {parent} is not writable")


def _load(model_dir: Path):
    """The causal language model and tokenizer saved in ``model_dir``; one line naming what is wrong otherwise."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = transformers.AutoConfig.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{model_dir}: its config.json is not one transformers reads ({exc})") from None
    architectures = list(getattr(config, "architectures", None) or [])
    causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures) or config.is_decoder
    if (config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or config.is_encoder_decoder or not causal):
        raise ConfigError(f"{model_dir}: a {config.model_type} model ({', '.join(architectures) or 'no architecture'})"
                          " is not a causal language model; one-shot pruning takes decoder-only models")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{model_dir}: no tokenizer saved with the model ({str(exc).splitlines()[0][:120]})") \
            from None
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype="auto")
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{model_dir}: its weights could not be loaded ({str(exc).splitlines()[0][:160]})") \
            from None
    return model, tokenizer


def calibration_windows(tokens, samples: int, seqlen: int, seed: int = 0) -> list:
    """``samples`` windows of ``seqlen`` consecutive tokens of the 1-D ``tokens``, each at a random start (seeded),
    as (1, seqlen) tensors."""
    import torch

    if len(tokens) <= seqlen:
        raise ConfigError(f"the calibration text has {len(tokens)} tokens; windows of {seqlen} need more "
                          "(--seqlen smaller, or a longer text)")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(tokens) - seqlen, (samples,), generator=generator)
    return [tokens[int(s):int(s) + seqlen].unsqueeze(0) for s in starts]


def prune_pretrained(model_dir: str | os.PathLike, out: str | os.PathLike, method: str,
                     calibration: str | os.PathLike | None = None, *, density: float | None = None,
                     structure: str | None = None, samples: int = DEFAULT_SAMPLES, seqlen: int | None = None,
                     seed: int = 0, progress: bool = True) -> PruneResult:
    """Prune the Hugging Face causal language model in ``model_dir`` one-shot
    (:func:`topo.sparsity.oneshot.prune_oneshot`) and save it, with its tokenizer, as safetensors in ``out``.

    ``seqlen`` defaults to :data:`DEFAULT_SEQLEN` capped at the model's context length. Raises
    :class:`ConfigError` or :class:`CheckpointError` naming the argument or file at fault; nothing is written then.
    """
    check_prune_options(model_dir, out, method, calibration, density, structure, samples, seqlen)
    model_dir, out = Path(model_dir), Path(out)
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        return _prune(model_dir, out, method, calibration, density, structure, samples, seqlen, seed, progress)
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def _prune(model_dir: Path, out: Path, method: str, calibration: str | os.PathLike | None, density: float | None,
           structure: str | None, samples: int, seqlen: int | None, seed: int, progress: bool) -> PruneResult:
    from topo.sparsity.oneshot import prune_oneshot

    model, tokenizer = _load(model_dir)
    context = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    length = seqlen or min(DEFAULT_SEQLEN, context or DEFAULT_SEQLEN)
    if context and length > context:
        raise ConfigError(f"--seqlen {length} is longer than the model's context ({context} tokens)")
    windows = []
    if method != "magnitude":
        text = Path(calibration).read_text(encoding="utf-8", errors="replace")
        tokens = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
        windows = calibration_windows(tokens, samples, length, seed)
    masks = prune_oneshot(model, method, windows, density=density, structure=structure, progress=progress)
    parent = out.parent if str(out.parent) else Path(".")
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if out.exists():
            out.rmdir()  # an empty folder, checked above
        staging.rename(out)
    except OSError as exc:
        raise OutputError(f"{out}: cannot be written ({exc.strerror or exc})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return PruneResult(out, len(masks), sum(m.numel() for m in masks.values()),
                       sum(int(m.sum()) for m in masks.values()), len(windows), length if windows else 0)

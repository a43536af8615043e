"""The models of Table 1, each built from a list of hidden widths so that budgets can be matched.

=================  =============  ===========================  ======================================================
name               dataset        base widths                  notes
=================  =============  ===========================  ======================================================
``mlp``            MNIST          64-64-64                     ReLU
``vae``            MNIST          256-10-256                   encoder 256, latent 10, decoder 256
``lstm``           War and Peace  512                          char-level, dropout 0.5 (Karpathy 2016)
``cnn``            CIFAR-10       32-64-64                     3×3 filters
``resnet110``      CIFAR-10       16-32-64                     He et al. (2016), 3×18 basic blocks
``resnet20``       CIFAR-10       16-32-64                     the same family, 3×3 basic blocks (a CPU-sized ResNet)
``gpt``            sonnets        96                           beyond the paper: a char-level Llama-style decoder
                                                               (4 blocks, 4 heads, 2 key/value heads, SwiGLU 256)
=================  =============  ===========================  ======================================================

Every builder has the signature ``build(widths, n_in, n_out) -> nn.Module``; only hidden widths change when
budgets are matched (:func:`topo.sparsity.match_budget`). The VAE's latent size is not widened.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from topo.errors import ConfigError


class MLP(nn.Sequential):
    """Fully connected ReLU network: n_in → widths… → n_out (Table 1, 64-64-64 on MNIST)."""

    def __init__(self, widths: Sequence[int], n_in: int = 784, n_out: int = 10) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        for width in widths:
            layers += [nn.Linear(n_in, width), nn.ReLU()]
            n_in = width
        layers.append(nn.Linear(n_in, n_out))
        super().__init__(*layers)


class VAE(nn.Module):
    """Variational autoencoder (Kingma & Welling 2013), Table 1's 256-10-256.

    ``forward`` returns the negative ELBO per example in nats (the loss Table 2 reports), as a vector: the Bernoulli
    cross-entropy of the decoder's logits summed over pixels plus the KL divergence of the Gaussian posterior from
    N(0, I), with one sample of z. topo feeds grey-level pixels in [0, 1] as the Bernoulli targets (the PyTorch VAE
    example's convention); the paper does not say whether its MNIST was binarised, and a loss on grey-level targets
    is not the same quantity as one on binary targets, so only orderings compare with the paper's numbers.
    """

    def __init__(self, widths: Sequence[int], n_in: int = 784, n_out: int = 784) -> None:
        if len(widths) != 3:
            raise ConfigError(f"the VAE takes widths (encoder, latent, decoder), got {list(widths)!r}")
        super().__init__()
        hidden_enc, latent, hidden_dec = widths
        self.encoder = nn.Linear(n_in, hidden_enc)
        self.to_mean = nn.Linear(hidden_enc, latent)
        self.to_logvar = nn.Linear(hidden_enc, latent)
        self.decoder = nn.Linear(latent, hidden_dec)
        self.to_logits = nn.Linear(hidden_dec, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        h = F.relu(self.encoder(x))
        mean, logvar = self.to_mean(h), self.to_logvar(h)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        logits = self.to_logits(F.relu(self.decoder(z)))
        reconstruction = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1)
        kl = -0.5 * (1 + logvar - mean.pow(2) - logvar.exp()).sum(1)
        return reconstruction + kl


class CharLSTM(nn.Module):
    """Character-level LSTM language model (Karpathy et al. 2016): embedding → LSTM(width) → dropout → logits."""

    def __init__(self, widths: Sequence[int], n_in: int = 96, n_out: int | None = None, dropout: float = 0.5) -> None:
        super().__init__()
        (hidden,) = widths
        self.embed = nn.Embedding(n_in, hidden)
        self.lstm = nn.LSTM(hidden, hidden, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, n_out or n_in)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.drop(self.embed(tokens)))
        return self.head(self.drop(out))


def char_llama(widths: Sequence[int], n_in: int = 96, n_out: int | None = None, *, blocks: int = 4,
               heads: int = 4, kv_heads: int = 2, context: int = 256) -> nn.Module:
    """A small Llama-style character-level decoder (beyond the paper): transformers' ``LlamaForCausalLM`` with
    grouped-query attention, RMSNorm, rotary positions and a SwiGLU MLP of width ⌈8/3·d / 8⌉·8, d = ``widths[0]``.

    The output head is tied to the embedding table, so the weights a sparse method masks
    (:func:`~topo.sparsity.masks.default_filter`: every ``nn.Linear``) are exactly the linear layers of the decoder
    blocks, the set one-shot pruning prunes (:func:`topo.sparsity.prune_oneshot`). Called with a (batch, length)
    tensor of character ids it returns the logits (batch, length, vocabulary); ``input_ids=`` works too, as one-shot
    pruning calls it.
    """
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        raise ConfigError('the gpt model needs transformers: pip install "topo[transformers]"') from None
    (hidden,) = widths
    if hidden % heads:
        raise ConfigError(f"gpt: width {hidden} is not a multiple of its {heads} heads")

    class CharLlama(LlamaForCausalLM):
        def forward(self, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
            return super().forward(input_ids=input_ids, use_cache=False, **kwargs).logits

    config = LlamaConfig(vocab_size=n_in, hidden_size=hidden, intermediate_size=-(-8 * hidden // 24) * 8,
                         num_hidden_layers=blocks, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=context, tie_word_embeddings=True, use_cache=False)
    if n_out not in (None, n_in):
        raise ConfigError(f"gpt: the tied head predicts the {n_in} input symbols, not {n_out}")
    return CharLlama(config)


class CNN(nn.Sequential):
    """Small convolutional network of Table 1: three 3×3 conv layers (32-64-64), linear classifier.

    The paper gives only the widths, the filter size and the weight decay. Here each conv keeps the spatial size
    (padding 1), 2×2 max-pooling follows all but the last, and the last feature map is flattened into the linear
    classifier, as in the small CNNs of that time. (A global-average-pooled head trains far worse at this width:
    on Fashion-MNIST after 300 Adam steps, 29 % error against 15 %.) ``image_size`` is the inputs' height and width.
    """

    def __init__(self, widths: Sequence[int], n_in: int = 3, n_out: int = 10,
                 image_size: Sequence[int] = (32, 32)) -> None:
        layers: list[nn.Module] = []
        height, width_px = image_size
        for i, width in enumerate(widths):
            layers += [nn.Conv2d(n_in, width, 3, padding=1), nn.ReLU()]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
                height, width_px = height // 2, width_px // 2
            n_in = width
        if height < 1 or width_px < 1:
            raise ConfigError(f"images of {tuple(image_size)} pixels are too small for {len(widths)} conv layers")
        layers += [nn.Flatten(), nn.Linear(n_in * height * width_px, n_out)]
        super().__init__(*layers)


class _BasicBlock(nn.Module):
    def __init__(self, n_in: int, n_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(n_in, n_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(n_out)
        self.conv2 = nn.Conv2d(n_out, n_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(n_out)
        self.stride, self.pad = stride, n_out - n_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        if self.pad:  # He et al.'s option A: identity shortcut, zero-padded channels
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.pad))
        return F.relu(out + shortcut)


class ResNet(nn.Module):
    """CIFAR ResNet of He et al. (2016): depth 6n+2, three stages of n basic blocks at widths (16, 32, 64)."""

    def __init__(self, widths: Sequence[int] = (16, 32, 64), n_in: int = 3, n_out: int = 10, depth: int = 110) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ConfigError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks = (depth - 2) // 6
        self.stem = nn.Conv2d(n_in, widths[0], 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        layers, current = [], widths[0]
        for stage, width in enumerate(widths):
            for b in range(blocks):
                layers.append(_BasicBlock(current, width, 2 if stage > 0 and b == 0 else 1))
                current = width
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Linear(current, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(F.relu(self.bn(self.stem(x))))
        return self.head(F.adaptive_avg_pool2d(out, 1).flatten(1))


@dataclass(frozen=True)
class ModelSpec:
    """A Table 1 row: how to build the model and the paper's training settings for it."""

    name: str
    build: Callable[..., nn.Module]
    widths: tuple[int, ...]
    dataset: str
    epochs: int
    adapt_every: int
    optimizer: str = "adam"
    batch_size: int = 128
    weight_decay: float = 0.0
    task: str = "classify"
    inputs: str = "vector"  # "vector" (flattened), "image" (channels × height × width) or "tokens"
    image_size: int = 0  # smaller images are zero-padded, centred, to image_size × image_size (0: as they are)
    matchable: bool = True  # False: no budget matching (widths the model cannot take, e.g. split into heads)

    @property
    def convolutional(self) -> bool:
        return self.inputs == "image"


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("mlp", MLP, (64, 64, 64), "mnist", epochs=20, adapt_every=2),
        ModelSpec("vae", VAE, (256, 10, 256), "mnist", epochs=500, adapt_every=5, optimizer="rmsprop",
                  batch_size=256, task="vae"),
        ModelSpec("lstm", CharLSTM, (512,), "text", epochs=100, adapt_every=1, task="language", inputs="tokens"),
        ModelSpec("cnn", CNN, (32, 64, 64), "cifar10", epochs=200, adapt_every=5, weight_decay=1e-3,
                  inputs="image"),
        ModelSpec("resnet110", ResNet, (16, 32, 64), "cifar10", epochs=200, adapt_every=5, inputs="image",
                  image_size=32),
        ModelSpec("resnet20", functools.partial(ResNet, depth=20), (16, 32, 64), "cifar10", epochs=200,
                  adapt_every=5, inputs="image", image_size=32),
        ModelSpec("gpt", char_llama, (96,), "sonnets", epochs=20, adapt_every=1, batch_size=64, task="language",
                  inputs="tokens", matchable=False),
    )
}


def get_model_spec(name: str) -> ModelSpec:
    """The Table 1 spec called ``name``; :class:`ConfigError` listing the valid names otherwise."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")
    return MODELS[name]

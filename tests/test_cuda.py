"""The GPU suite (``pytest -m cuda``): sparsity methods, mixed precision, recorder and graph kernels on CUDA,
compared with the CPU. Every test here is skipped without a CUDA device."""

from __future__ import annotations

import math
import warnings

import networkx as nx
import numpy as np
import pytest
import torch
from torch import nn

from topo.errors import EmptyGraphWarning
from topo.graph import Graph, metrics_table, summarize
from topo.record import Recorder, RunReader
from topo.sparsity import METHODS, Adaptive, AdaptiveConfig, adapt_layer, make_sparsifier

from .conftest import mlp
from .graph.test_batched import closed_form_graphs, random_snapshots
from .sparsity.test_common import build, train

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = torch.device("cuda")


def cuda_train(model, opt, sp, steps):
    """test_common.train on CUDA: same data stream, moved to the device."""
    g = torch.Generator().manual_seed(0)
    for i in range(steps):
        x, y = torch.randn(16, 64, generator=g).to(CUDA), torch.randint(0, 10, (16,), generator=g).to(CUDA)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sp.step()
        if (i + 1) % 10 == 0:
            sp.end_epoch((i + 1) // 10 - 1)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_on_cuda_with_exact_zeros(method):
    torch.manual_seed(0)
    model = mlp((32, 32)).to(CUDA)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    sp = build(method, model, opt)
    cuda_train(model, opt, sp, 40)
    for name, mask in sp.masks.items():
        assert mask.is_cuda
        assert torch.count_nonzero(sp.weights[name][~mask]) == 0, name


@pytest.mark.parametrize("method", ["dense", "fixed-mask"])
def test_deterministic_methods_give_the_cpu_weights_on_cuda(method):
    torch.manual_seed(0)
    cpu_model = mlp((32, 32))
    cuda_model = mlp((32, 32)).to(CUDA)
    cuda_model.load_state_dict(cpu_model.state_dict())
    cpu_opt = torch.optim.Adam(cpu_model.parameters(), lr=1e-3)
    cuda_opt = torch.optim.Adam(cuda_model.parameters(), lr=1e-3)
    masks = {n: torch.rand(p.shape) < 0.3 for n, p in cpu_model.named_parameters() if n.endswith("weight")}
    kwargs = {"masks": masks} if method == "fixed-mask" else {}
    cpu_sp = make_sparsifier(method, cpu_model, cpu_opt, **kwargs)
    kwargs = {"masks": {n: m.to(CUDA) for n, m in masks.items()}} if method == "fixed-mask" else {}
    cuda_sp = make_sparsifier(method, cuda_model, cuda_opt, **kwargs)
    train(cpu_model, cpu_opt, cpu_sp, 20)
    cuda_train(cuda_model, cuda_opt, cuda_sp, 20)
    for a, b in zip(cpu_model.parameters(), cuda_model.parameters(), strict=True):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_adaptation_on_cuda_gives_the_cpu_masks_in_every_dtype(dtype):
    g = torch.Generator().manual_seed(0)
    weight = (torch.randn(512, 256, generator=g) * 0.05).to(dtype)
    mask = torch.rand(512, 256, generator=g) < 0.3
    weight *= mask
    grad = torch.randn(512, 256, generator=g) * 1e-3
    cfg = AdaptiveConfig(density=0.3, k=0.5, r=0.0)
    results = {}
    for device in ("cpu", "cuda"):
        w, m = weight.float().clone().to(device).to(dtype), mask.clone().to(device)
        generator = torch.Generator(device=device).manual_seed(0)
        pruned, grown = adapt_layer(w, m, grad.to(device), cfg, generator)
        assert torch.isfinite(w).all()
        results[device] = m.cpu()
    differing = (results["cpu"] != results["cuda"]).sum().item()
    assert differing <= 2, f"{differing} positions differ (ties at the threshold only)"


@pytest.mark.parametrize("mode", ["fp32", "bf16-autocast", "fp16-scaler", "fp16-scaler-fused", "fp16-scaler-unscale"])
def test_amp_training_adapts_on_unscaled_gradients_on_cuda(mode):
    torch.manual_seed(0)
    model = mlp((64, 64)).to(CUDA)
    fused = mode.endswith("fused")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)
    # Cg = 1, r = 0: a grown weight is the gradient the rule read
    sp = Adaptive(model, opt, density=0.3, unit="step", every=1, cg=1.0, r=0.0)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**16, enabled=mode.startswith("fp16"))
    dtype = torch.bfloat16 if mode.startswith("bf16") else torch.float16
    autocast = torch.autocast("cuda", dtype=dtype, enabled=mode != "fp32")
    x, y = torch.randn(64, 64, device=CUDA), torch.randint(0, 10, (64,), device=CUDA)
    with autocast:
        loss = nn.functional.cross_entropy(model(x), y)
    expected = torch.autograd.grad(loss, list(sp.weights.values()))  # the same computation, never scaled
    with autocast:
        loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    scaler.scale(loss).backward()
    if mode.endswith("unscale"):
        scaler.unscale_(opt)
        sp.mask_grads()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1e6)
    scaler.step(opt)
    scaler.update()
    before = {n: m.clone() for n, m in sp.masks.items()}
    sp.step()
    assert sp.step_count == 1
    for (name, weight), grad in zip(sp.weights.items(), expected, strict=True):
        new = sp.masks[name] & ~before[name]
        assert new.any() and torch.isfinite(weight).all()
        torch.testing.assert_close(weight.detach()[new], grad.float()[new], rtol=2e-3, atol=1e-6)


@pytest.mark.parametrize("fused", [False, True])
def test_gradscaler_skipped_steps_are_not_counted_or_adapted_on_cuda(fused):
    torch.manual_seed(0)
    model = mlp((32,)).to(CUDA)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)
    sp = Adaptive(model, opt, density=0.3, unit="step", every=1)
    scaler = torch.amp.GradScaler("cuda")
    before = {n: m.clone() for n, m in sp.masks.items()}
    x, y = torch.randn(8, 64, device=CUDA), torch.randint(0, 10, (8,), device=CUDA)
    loss = nn.functional.cross_entropy(model(x), y) * math.inf
    opt.zero_grad()
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    sp.step()
    assert sp.step_count == 0
    assert all(torch.equal(before[n], m) for n, m in sp.masks.items())


def test_half_model_trains_with_finite_weights_on_cuda():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2048, 2048)).to(CUDA).half()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    sp = Adaptive(model, opt, density=0.5, unit="step", every=1)
    x = torch.randn(4, 2048, device=CUDA, dtype=torch.float16)
    loss = model(x).float().pow(2).mean()
    loss.backward()
    opt.step()
    sp.step()
    weight = sp.weights["0.weight"]
    assert torch.isfinite(weight).all()
    pruned, grown = sp.pop_changes()["0.weight"]
    assert 0 < pruned < 0.5 * weight.numel() and pruned == grown


def test_recorder_round_trip_on_cuda(tmp_path):
    model = nn.ModuleDict({"fc": nn.Linear(13, 7), "lstm": nn.LSTM(5, 3)}).to(CUDA)
    sp = Adaptive(model, density=0.4, seed=3)
    with Recorder(tmp_path / "run", sp, keep_weights=True) as recorder:
        recorder.snapshot(0)
    reader = RunReader(tmp_path / "run")
    for name, mask in reader.masks(0).items():
        assert np.array_equal(mask, sp.masks[name].cpu().numpy()), name


def random_graph(n: int, density: float, seed: int) -> Graph:
    rng = np.random.default_rng(seed)
    mask = rng.random((n, n)) < density
    adjacency = mask | mask.T
    np.fill_diagonal(adjacency, False)
    return Graph(adjacency)


@pytest.mark.parametrize("n,density", [(50, 0.1), (300, 0.02), (1024, 0.05), (2600, 0.01)])
def test_torch_backend_on_cuda_equals_cpu_backend(n, density):
    graph = random_graph(n, density, seed=n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyGraphWarning)
        cpu = summarize(graph, "cpu")
        gpu = summarize(graph.torch(CUDA), "torch")
    for key, value in cpu.items():
        assert gpu[key] == pytest.approx(value, rel=1e-6, abs=1e-9, nan_ok=True), key


def test_triangles_exact_on_cuda_above_2048_nodes():
    n = 2053
    complete = Graph(~torch.eye(n, dtype=torch.bool, device=CUDA))
    assert summarize(complete, "torch")["global_clustering"] == 1.0


@pytest.mark.parametrize("name,graph,expected", closed_form_graphs(), ids=[c[0] for c in closed_form_graphs()])
def test_lambda2_closed_forms_on_cuda(name, graph, expected):
    adjacency = torch.from_numpy(nx.to_numpy_array(graph).astype(bool)).to(CUDA)
    assert summarize(Graph(adjacency), "torch")["algebraic_connectivity"] == pytest.approx(expected, rel=1e-6)


def test_batched_table_on_cuda_equals_cpu_table():
    snapshots = random_snapshots(5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyGraphWarning)
        cpu = metrics_table(snapshots, backend="cpu", progress=False)
        gpu = metrics_table(snapshots, device="cuda", progress=False)
    np.testing.assert_allclose(gpu["value"], cpu["value"], rtol=1e-6, atol=1e-9)


def test_a_checkpoint_analysed_on_cuda_in_batches_equals_the_cpu_analysis(tmp_path):
    from topo.analyze import analyze_checkpoint

    from .test_report import write_llama

    write_llama(tmp_path / "llama")
    cpu = analyze_checkpoint(tmp_path / "llama", heads=True, progress=False).table
    gpu = analyze_checkpoint(tmp_path / "llama", heads=True, device="cuda", progress=False).table
    assert list(gpu.columns) == list(cpu.columns) and list(gpu.graph) == list(cpu.graph)
    numbers = cpu.select_dtypes("number").columns
    assert np.allclose(gpu[numbers], cpu[numbers], rtol=1e-9, atol=1e-12, equal_nan=True)

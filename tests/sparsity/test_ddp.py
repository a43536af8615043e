"""Under DistributedDataParallel (2 CPU processes, gloo), masks, weights and optimizer state stay identical."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from topo.sparsity import SET, SNIP, Adaptive, RigL


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make(method: str, ddp: nn.Module, opt: torch.optim.Optimizer, rank: int):
    # A different seed per rank: the ranks would disagree if masks were not synchronised from rank 0.
    if method == "adaptive":
        return Adaptive(ddp, opt, density=0.3, every=4, unit="step", g=3.0, s=2.0, beta0=0.5, seed=rank)
    if method == "rigl":
        return RigL(ddp, opt, density=0.3, delta_t=4, t_end=100, seed=rank)
    if method == "set":
        return SET(ddp, opt, density=0.3, seed=rank)
    data = torch.Generator().manual_seed(rank)
    return SNIP(ddp, opt, density=0.3, seed=rank, batch=(torch.randn(8, 20, generator=data), None),
                loss=lambda model, batch: model(batch[0]).pow(2).mean())


def _worker(rank: int, world: int, port: int, out_dir: str, method: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 40), nn.ReLU(), nn.Linear(40, 5))
    ddp = DistributedDataParallel(model)
    opt = torch.optim.Adam(ddp.parameters(), lr=1e-2)
    sp = _make(method, ddp, opt, rank)
    data = torch.Generator().manual_seed(100 + rank)
    for step in range(15):  # adaptations after steps 4, 8 and 12 (SET: epochs end there), then three more steps
        x = torch.randn(16, 20, generator=data)
        loss = ddp(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sp.step()
        if (step + 1) % 4 == 0:
            sp.end_epoch((step + 1) // 4 - 1)
    changes = sum(p + g for p, g in sp.pop_changes().values())
    state = {n: {k: v for k, v in opt.state[p].items() if torch.is_tensor(v)} for n, p in ddp.named_parameters()}
    torch.save({"masks": sp.masks, "params": {n: p.detach() for n, p in ddp.named_parameters()},
                "optimizer": state, "changes": changes}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["adaptive", "set", "rigl", "snip"])
def test_masks_identical_on_both_ranks_after_adaptations(tmp_path, method):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), method), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    assert r0["changes"] > 0 or method == "snip"
    for name in r0["masks"]:
        assert torch.equal(r0["masks"][name], r1["masks"][name]), name
    for name in r0["params"]:
        assert torch.equal(r0["params"][name], r1["params"][name]), name
        for key, value in r0["optimizer"][name].items():
            assert torch.equal(value, r1["optimizer"][name][key]), (name, key)

"""The HTML report: self-contained, opened in a real headless browser (Debian's chromium), nothing fetched."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from torch import nn

from topo.errors import ConfigError
from topo.record import Recorder
from topo.report import write_report
from topo.sparsity import make_sparsifier

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def record(path, method: str, **options) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    sparsifier = make_sparsifier(method, model, optimizer, density=0.3, seed=0, **options)
    generator = torch.Generator().manual_seed(0)
    with Recorder(path, sparsifier) as recorder:
        for epoch in range(3):
            for _ in range(4):
                loss = nn.functional.cross_entropy(model(torch.randn(16, 64, generator=generator)),
                                                   torch.randint(0, 10, (16,), generator=generator))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                sparsifier.step()
            recorder.snapshot(epoch, {"train_loss": loss.item(), "val_loss": loss.item(), "test_loss": loss.item()})
            if epoch < 2:
                sparsifier.end_epoch(epoch)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    record(root / "mlp-set-s0", "set")
    record(root / "mlp-rigl-s0", "rigl", delta_t=2, t_end=20)
    return root


def test_a_report_holds_everything_it_shows(runs, tmp_path):
    out = write_report([runs / "mlp-set-s0", runs / "mlp-rigl-s0"], tmp_path / "report.html", null="er",
                       null_samples=3)
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and "2 runs compared" in page and "Run mlp-set-s0" in page
    assert not re.search(r'(src|href)="(?!data:)', page)  # every image is inline; nothing to fetch
    assert "http://" not in page and "https://" not in page
    assert page.count('<img alt="Figure 5 of') >= 2 * 2 + 2 and 'alt="mask of 0.weight"' in page
    assert "the null model's mean ± 2 std" in page
    assert "bipartite_clustering_null_mean" in page and "bipartite_clustering_z" in page  # the null was measured
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~current_umask())


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_a_checkpoint_report_and_bad_inputs(runs, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))
    torch.save(model.state_dict(), tmp_path / "model.pt")
    page = write_report([tmp_path / "model.pt"], tmp_path / "ckpt.html", backbone="magnitude:0.2").read_text()
    assert "Checkpoint" in page and "backbone magnitude:0.2" in page and "<table" in page
    with pytest.raises(ConfigError, match="not a run directory"):
        write_report([tmp_path / "model.pt", runs / "mlp-set-s0"], tmp_path / "x.html")
    with pytest.raises(ConfigError, match="--backbone applies to checkpoints"):
        write_report([runs / "mlp-set-s0"], tmp_path / "x.html", backbone="magnitude:0.1")
    bad = subprocess.run([sys.executable, "-m", "topo.cli", "report", str(runs / "mlp-set-s0"), "-o",
                          str(tmp_path / "missing" / "r.html")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "no such directory" in bad.stderr and not (tmp_path / "missing").exists()


@pytest.mark.slow
def test_the_report_renders_in_a_headless_browser_without_errors_or_requests(runs, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("TOPO_REQUIRE_BROWSER"):
            pytest.fail("TOPO_REQUIRE_BROWSER is set but no chromium is installed (apt-get install chromium)")
        pytest.skip("no chromium here (CI installs it: apt-get install chromium)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    out = write_report([runs / "mlp-set-s0", runs / "mlp-rigl-s0"], tmp_path / "report.html")
    errors, requests = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("request", lambda request: requests.append(request.url))
        page.goto(out.as_uri())
        page.select_option("select", index=1)  # the layer selector works (its script runs without error)
        shown = page.eval_on_selector_all(".layer.shown", "elements => elements.map(e => e.dataset.layer)")
        page.screenshot(path=str(tmp_path / "shot.png"), full_page=True)
        browser.close()
    assert errors == [] and requests == [out.as_uri()]
    assert shown == ["2.weight"]
    image = imread(tmp_path / "shot.png")
    assert image.shape[0] > 2000 and np.std(image) > 0.05  # a long page, not blank

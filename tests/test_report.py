"""The HTML report: self-contained, opened in a real headless browser (Debian's chromium), nothing fetched."""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def watched_page():
    """A page of headless chromium (Debian's) with the console errors, page errors and requests it logs; the test
    is skipped where no chromium is installed, unless TOPO_REQUIRE_BROWSER is set."""
    if CHROMIUM is None:
        if os.environ.get("TOPO_REQUIRE_BROWSER"):
            pytest.fail("TOPO_REQUIRE_BROWSER is set but no chromium is installed (apt-get install chromium)")
        pytest.skip("no chromium here (CI installs it: apt-get install chromium)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    errors, requests = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("request", lambda request: requests.append(request.url))
        try:
            yield page, errors, requests
        finally:
            browser.close()


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
    with pytest.raises(ConfigError, match="mlp-set-s0: a report covers run directories or checkpoints, not both"):
        write_report([tmp_path / "model.pt", runs / "mlp-set-s0"], tmp_path / "x.html")
    with pytest.raises(ConfigError, match="--backbone applies to checkpoints"):
        write_report([runs / "mlp-set-s0"], tmp_path / "x.html", backbone="magnitude:0.1")
    bad = subprocess.run([sys.executable, "-m", "topo.cli", "report", str(runs / "mlp-set-s0"), "-o",
                          str(tmp_path / "missing" / "r.html")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "no such directory" in bad.stderr and not (tmp_path / "missing").exists()


@pytest.mark.slow
def test_the_report_renders_in_a_headless_browser_without_errors_or_requests(runs, tmp_path):
    out = write_report([runs / "mlp-set-s0", runs / "mlp-rigl-s0"], tmp_path / "report.html")
    with watched_page() as (page, errors, requests):
        page.goto(out.as_uri())
        page.select_option("select", index=1)  # the layer selector works (its script runs without error)
        shown = page.eval_on_selector_all(".layer.shown", "elements => elements.map(e => e.dataset.layer)")
        page.screenshot(path=str(tmp_path / "shot.png"), full_page=True)
    assert errors == [] and requests == [out.as_uri()]
    assert shown == ["2.weight"]
    image = imread(tmp_path / "shot.png")
    assert image.shape[0] > 2000 and np.std(image) > 0.05  # a long page, not blank


def write_llama(folder, seed: int = 0, changed: str | None = None) -> None:
    """A Llama-shaped checkpoint of 3 blocks (hidden 32, 4 heads), pruned 2:4 by magnitude; ``changed`` names one
    weight drawn from another seed (the rest equal to seed 0's)."""
    from safetensors.torch import save_file

    folder.mkdir()
    shapes = {"self_attn.q_proj": (32, 32), "self_attn.k_proj": (32, 32), "self_attn.v_proj": (32, 32),
              "self_attn.o_proj": (32, 32), "mlp.gate_proj": (48, 32), "mlp.up_proj": (48, 32),
              "mlp.down_proj": (32, 48)}
    generator, other = torch.Generator().manual_seed(0), torch.Generator().manual_seed(seed)
    tensors = {}
    for block in range(3):
        for part, shape in shapes.items():
            name = f"model.layers.{block}.{part}.weight"
            weight = torch.randn(shape, generator=generator)
            if name == changed:
                weight = torch.randn(shape, generator=other)
            keep = weight.abs().reshape(shape[0], -1, 4).topk(2, dim=-1).indices
            tensors[name] = weight * torch.zeros(shape[0], shape[1] // 4, 4).scatter_(-1, keep, 1.0).reshape(shape)
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text('{"model_type": "llama", "num_attention_heads": 4, "hidden_size": 32}')


CHANGED = "model.layers.1.mlp.up_proj.weight"


@pytest.fixture(scope="module")
def llamas(tmp_path_factory):
    root = tmp_path_factory.mktemp("llamas")
    write_llama(root / "a")
    write_llama(root / "b", seed=7, changed=CHANGED)
    return root


@pytest.fixture(scope="module")
def llama_report(llamas, tmp_path_factory):
    """The report of the two checkpoints, per head, against an ER null."""
    return write_report([llamas / "a", llamas / "b"], tmp_path_factory.mktemp("report") / "ab.html", heads=True,
                        null="er", null_samples=3)


def test_a_checkpoint_report_summarises_projections_heads_and_the_graphs_far_from_the_null(llama_report):
    import base64
    import io

    import pandas as pd

    from topo.summary import far_from_null

    whole = llama_report.read_text()
    page = whole[whole.index("<h2>Checkpoint "):whole.rindex("<h2>Checkpoint ")]  # the first checkpoint's section
    link = re.search(r'download="a-graphs.csv" href="data:text/csv;base64,([^"]+)"', page)
    table = pd.read_csv(io.StringIO(base64.b64decode(link.group(1)).decode()))  # the table the page carries
    assert page.index("<h3>Summary</h3>") < page.index("Far from the null") < page.index("<h3>Every graph</h3>")
    assert "57 graphs of 21 layers in 3 blocks; 48 of them heads" in page
    for projection in ("self_attn.q_proj[q]", "self_attn.o_proj[o]", "mlp.gate_proj", "mlp.down_proj"):
        assert f'<td class="text">{projection}</td>' in page
    assert "The same for every graph: mask_density 0.5" in page  # 2:4 everywhere: said once, not in each row
    assert "Per block (over its projections and heads)" in page
    far = far_from_null(table)
    assert 0 < len(far) and f"{len(far):,} of " in page and page.count('<td class="far">') >= len(far)
    for projection in ("q_proj[q]", "k_proj[k]", "v_proj[v]", "o_proj[o]"):
        assert f'alt="heads of self_attn.{projection}"' in page
        assert f'alt="z-scores of the heads of self_attn.{projection}"' in page
    assert 'alt="metrics by block"' in page and 'download="a-graphs.csv" href="data:text/csv;base64,' in page
    assert not re.search(r'(src|href)="(?!data:)', whole)


def test_two_checkpoints_are_compared_per_graph_and_per_layer(llamas, llama_report):
    from topo.analyze import layer_distances

    page = llama_report.read_text()
    assert "2 checkpoints compared" in page and page.index("compared") < page.index("Checkpoint ")
    distances = layer_distances([llamas / "a", llamas / "b"], samples=2).set_index("layer")
    assert distances.loc[CHANGED, "nnstd"] > 0.2
    assert (distances.drop(CHANGED)["nnstd"] == 0).all() and (distances["nnstd_random"] > 0.3).all()
    differences = page[page.index("Differences per graph"):page.index("Topology distance")]
    assert CHANGED in differences and differences.count("<tr>") == 2  # the heading and the one changed graph
    shown = page[page.index("Topology distance per layer (NNSTD)"):page.index("Checkpoint ")]
    row = f'<td class="text">{CHANGED}</td><td>{distances.loc[CHANGED, "nnstd"]:.4g}</td>'
    assert shown.count("<tr>") == 1 + 21 and row in shown


def test_report_options_are_checked_before_anything_is_read(llamas, runs, tmp_path):
    with pytest.raises(ConfigError, match="--embeddings applies to checkpoints"):
        write_report([runs / "mlp-set-s0"], tmp_path / "x.html", embeddings=True)
    with pytest.raises(ConfigError, match="not both"):
        write_report([llamas / "a", runs / "mlp-set-s0"], tmp_path / "x.html")
    bad = subprocess.run([sys.executable, "-m", "topo.cli", "report", str(llamas / "a"), str(llamas / "b"),
                          "--nnstd-samples", "1", "-o", str(tmp_path / "r.html")], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "--nnstd-samples" in bad.stderr
    assert not (tmp_path / "r.html").exists()


@pytest.mark.slow
def test_a_checkpoint_reports_tables_sort_in_a_headless_browser(llama_report, tmp_path):
    orders = []
    column = """table => { const i = [...table.tHead.rows[0].cells].findIndex(c => c.textContent === 'nnstd');
                           return [...table.tBodies[0].rows].map(r => parseFloat(r.cells[i].textContent)); }"""
    with watched_page() as (page, errors, requests):
        page.goto(llama_report.as_uri())
        table = page.locator("table.sortable", has=page.locator("th", has_text="nnstd_random_std"))
        orders.append(table.evaluate(column))
        for _ in range(2):  # ascending, then descending
            table.locator("th", has_text="nnstd").first.click()
            orders.append(table.evaluate(column))
        height = page.locator(".scroll").last.evaluate("box => box.scrollHeight > box.clientHeight")
        page.screenshot(path=str(tmp_path / "shot.png"), full_page=True)
    assert errors == [] and requests == [llama_report.as_uri()]
    model_order, ascending, descending = orders
    assert ascending == sorted(model_order) and descending == sorted(model_order, reverse=True)
    assert ascending != model_order and height  # the click reordered the rows; a long table scrolls in place
    image = imread(tmp_path / "shot.png")
    assert image.shape[0] > 3000 and np.std(image) > 0.05


def test_the_tables_topo_analyze_wrote_are_reported_without_a_second_analysis(llama_report, tmp_path):
    import base64

    from topo.errors import CheckpointError

    page = llama_report.read_text()
    for name in ("a", "b"):  # the tables the page carries are those topo analyze --csv writes
        link = re.search(rf'download="{name}-graphs.csv" href="data:text/csv;base64,([^"]+)"', page)
        (tmp_path / f"{name}.csv").write_bytes(base64.b64decode(link.group(1)))
    both = write_report([tmp_path / "a.csv", tmp_path / "b.csv"], tmp_path / "both.html").read_text()
    assert "the table of topo analyze in a.csv (57 graphs)" in both and "57 graphs of 21 layers in 3 blocks" in both
    assert "Far from the null" in both and 'alt="z-scores of the heads of self_attn.q_proj[q]"' in both
    assert "2 checkpoints compared" in both and CHANGED in both and "No NNSTD" in both
    with pytest.raises(ConfigError, match="--heads applies when topo report analyses a checkpoint"):
        write_report([tmp_path / "a.csv"], tmp_path / "x.html", heads=True)
    (tmp_path / "other.csv").write_text("x,y\n1,2\n")
    with pytest.raises(CheckpointError, match="other.csv: not a table of topo analyze"):
        write_report([tmp_path / "other.csv"], tmp_path / "x.html")

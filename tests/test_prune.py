"""``topo prune``: a Hugging Face model directory in, a pruned one out, read back by ``topo analyze``."""

from __future__ import annotations

import json

import pytest
import torch

from topo.cli import main
from topo.experiments.data import bundled, char_tokenizer

transformers = pytest.importorskip("transformers", reason="the test extra installs transformers")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny character-level Llama with its tokenizer, saved as a user's model folder would be, and a text."""
    folder = tmp_path_factory.mktemp("llama")
    text = bundled("sonnets.txt").read_text()[:20_000]
    tokenizer = char_tokenizer("".join(sorted(set(text))))
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=64)
    transformers.LlamaForCausalLM(config).save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    (folder / "text.txt").write_text(text)
    return folder


def run(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()  # what the test's own set-up printed
    code = main(["--quiet", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("method,target", [("wanda", ["--density", "0.5"]), ("sparsegpt", ["--structure", "2:4"]),
                                           ("magnitude", ["--density", "0.3"])])
def test_prune_writes_a_model_topo_analyze_reads(model_dir, tmp_path, capsys, method, target):
    out = tmp_path / "pruned"
    calibration = ["--calibration", str(model_dir / "text.txt")] if method != "magnitude" else []
    code, _, err = run(capsys, "prune", str(model_dir / "model"), "--method", method, *target, *calibration,
                       "--samples", "8", "--seqlen", "32", "-o", str(out))
    assert code == 0, err
    assert "14 layers pruned by" in err and (out / "model.safetensors").exists() and (out / "config.json").exists()
    pruned = transformers.LlamaForCausalLM.from_pretrained(out)
    q = pruned.model.layers[1].self_attn.q_proj.weight
    expected = {"wanda": 0.5, "sparsegpt": 0.5, "magnitude": 0.3}[method]
    assert abs((q != 0).float().mean().item() - expected) < 0.02
    assert torch.equal(pruned.model.embed_tokens.weight,
                       transformers.LlamaForCausalLM.from_pretrained(model_dir / "model").model.embed_tokens.weight)
    code, out_json, err = run(capsys, "analyze", str(out), "--json")
    rows = [row for row in json.loads(out_json) if row["layer"] != "lm_head.weight"]  # untied, never pruned
    assert code == 0 and len(rows) == 14
    assert all(row.get("n_m") == "2:4" for row in rows) == (method == "sparsegpt")


@pytest.mark.parametrize("case,message", [
    ("density", "density (the fraction of weights kept) must be in (0, 1)"),
    ("not-a-model", "not a Hugging Face model directory"),
    ("no-tokenizer", "no tokenizer saved with the model"),
    ("not-causal", "is not a causal language model"),
    ("no-calibration", "wanda needs --calibration"),
    ("output-taken", "exists and is not an empty folder"),
    ("too-long", "longer than the model's context"),
])
def test_bad_input_is_one_line_and_writes_nothing(model_dir, tmp_path, capsys, case, message):
    source = model_dir / "model"
    out = tmp_path / "out"
    if case == "no-tokenizer":
        source = tmp_path / "bare"
        transformers.LlamaForCausalLM.from_pretrained(model_dir / "model").save_pretrained(source)
    elif case == "not-causal":
        source = tmp_path / "bert"
        torch.manual_seed(0)
        transformers.BertModel(transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1,
                                                       num_attention_heads=2, intermediate_size=32)).save_pretrained(
            source)
        char_tokenizer("abc").save_pretrained(source)
    elif case == "output-taken":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    args = {"density": ["--density", "1.5"], "not-a-model": [], "no-tokenizer": [], "not-causal": [],
            "no-calibration": [], "output-taken": [], "too-long": ["--seqlen", "100"]}[case]
    if "--density" not in args:
        args += ["--density", "0.5"]
    if case != "no-calibration":
        args += ["--calibration", str(model_dir / "text.txt")]
    target = str(tmp_path / "nowhere") if case == "not-a-model" else str(source)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code, _, err = run(capsys, "prune", target, "--method", "wanda", *args, "-o", str(out))
    assert code == 1 and err.count("\n") == 1 and message in err, err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before

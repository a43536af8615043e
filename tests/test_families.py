"""Transformers as people prune them: GPT-2's Conv1D orientation, fused q/k/v, heads, embeddings, model order,
sparse training of their projections, N:M masks, convolution kernel graphs and number formats. Every model is built
locally from a config (no downloads)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from topo.analyze import analyze_checkpoint, analyze_model
from topo.errors import CheckpointError, ConfigError
from topo.families import detect, natural_key
from topo.graph import bipartite_graph, layer_graphs, summarize
from topo.sparsity import make_sparsifier
from topo.sparsity.structure import nm_pattern, to_semi_structured

transformers = pytest.importorskip("transformers", reason="the test extra installs transformers")
safetensors_torch = pytest.importorskip("safetensors.torch", reason="the test extra installs safetensors")
warnings.filterwarnings("ignore", module="transformers")


def tiny_gpt2(layers: int = 2):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=layers, n_head=4,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config)


def tiny_bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=32, type_vocab_size=2)
    return transformers.BertModel(config)


def topo_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "topo.cli", "--quiet", *args], capture_output=True, text=True,
                          timeout=300)


def hub_layer(model) -> None:
    """Make h.0's c_fc a layer whose outputs 0–7 read every input and the others two inputs each."""
    with torch.no_grad():
        weight = model.transformer.h[0].mlp.c_fc.weight  # Conv1D: (in 32, out 128)
        weight.zero_()
        weight[:, :8] = 1.0
        for out in range(8, 128):
            weight[out % 32, out] = weight[(out + 1) % 32, out] = 1.0


def test_gpt2_conv1d_weights_are_read_transposed_from_config_names_and_modules(tmp_path):
    model = tiny_gpt2()
    hub_layer(model)
    model.save_pretrained(tmp_path / "gpt2")
    linear = bipartite_graph(model.transformer.h[0].mlp.c_fc.weight.detach().T != 0)  # nn.Linear's (out, in)
    expected = summarize(linear)
    assert expected["fan_in_gini"] > expected["fan_out_gini"] + 0.3  # the hubs are outputs: fan-in concentrates
    via_config = analyze_checkpoint(tmp_path / "gpt2", layers="*h.0.mlp.c_fc*", progress=False)
    (tmp_path / "gpt2" / "config.json").unlink()
    via_names = analyze_checkpoint(tmp_path / "gpt2", layers="*h.0.mlp.c_fc*", progress=False)
    via_modules = analyze_model(model, layers="*h.0.mlp.c_fc*", progress=False)
    for result, found_by in ((via_config, "config.json (gpt2)"), (via_names, "names"),
                             (via_modules, "module classes")):
        row = result.table.iloc[0]
        assert row["fan_in_gini"] == pytest.approx(expected["fan_in_gini"])
        assert row["fan_out_gini"] == pytest.approx(expected["fan_out_gini"])
        assert row["shape"] == "128×32" and f"found by {found_by}" in result.reading


def test_the_cli_says_which_layers_were_transposed(tmp_path):
    tiny_gpt2().save_pretrained(tmp_path / "gpt2")
    result = topo_cli("analyze", str(tmp_path / "gpt2"), "--csv", str(tmp_path / "t.csv"))
    assert result.returncode == 0, result.stderr
    assert "8 Conv1D weight(s) stored (in, out) read transposed" in result.stderr
    assert "embedding table(s) left out: transformer.wpe.weight, transformer.wte.weight" in result.stderr


def test_fused_projections_are_one_graph_per_projection_and_heads_split_further(tmp_path):
    model = tiny_gpt2()
    with torch.no_grad():  # mark q, k and v by their sparsity: q keeps 1 of 32 inputs, k 2, v all
        weight = model.transformer.h[0].attn.c_attn.weight  # (in 32, out 96)
        weight.zero_()
        weight[0, :32] = 1.0
        weight[:2, 32:64] = 1.0
        weight[:, 64:] = 1.0
    table = analyze_model(model, layers="*h.0.attn.c_attn*", progress=False).table.set_index("graph")
    name = "transformer.h.0.attn.c_attn.weight"
    assert list(table.index) == [f"{name}[q]", f"{name}[k]", f"{name}[v]"]
    assert table["mask_density"].tolist() == pytest.approx([1 / 32, 2 / 32, 1.0])
    assert (table["kind"] == "attention").all()
    heads = analyze_model(model, layers="*h.0.attn.c_*", heads=True, progress=False).table
    graphs = list(heads.graph)
    assert graphs[:4] == [f"{name}[q.h{h}]" for h in range(4)] and f"{name}[v.h3]" in graphs
    output = heads[heads.graph.str.contains("c_proj")]
    assert list(output.graph) == [f"transformer.h.0.attn.c_proj.weight[o.h{h}]" for h in range(4)]
    assert (output.n_nodes == 32 + 8).all()  # the output projection splits along its inputs: 8 per head
    # every graph's shape is its own block's, out × in: a query head reads all 32 inputs into 8 outputs, an output
    # head 8 of the concatenated heads' inputs into all 32 outputs
    assert set(heads[heads.graph.str.contains(r"\[q\.h")]["shape"]) == {"8×32"}
    assert set(output["shape"]) == {"32×8"}
    with torch.no_grad():  # silence head 1's inputs of the output projection (stored (in, out): rows 8-15)
        model.transformer.h[0].attn.c_proj.weight[8:16] = 0.0
    silenced = analyze_model(model, layers="*h.0.attn.c_proj*", heads=True, progress=False).table
    assert silenced["mask_density"].tolist() == [1.0, 0.0, 1.0, 1.0]


def test_fused_qkv_splits_only_where_the_sizes_are_known():
    # q has the hidden size (the inputs) and k, v share the rest: (96, 64) is q 64, k 16, v 16, not three thirds
    for rows, sizes in ((96, (64, 16, 16)), (128, (64, 32, 32)), (192, (64, 64, 64))):
        graphs = layer_graphs({"layers.0.self_attn.qkv_proj.weight": torch.ones(rows, 64, dtype=torch.bool)},
                              family=detect({"layers.0.self_attn.qkv_proj.weight": (rows, 64)}))
        assert [g.parts[1] for g in graphs.values()] == list(sizes), rows
        assert [name[-3:] for name in graphs] == ["[q]", "[k]", "[v]"]
    odd = detect({"a.qkv_proj.weight": (65, 64)})  # no q of 64 with equal k and v: one graph, and said so
    assert list(layer_graphs({"a.qkv_proj.weight": torch.ones(65, 64, dtype=torch.bool)}, family=odd)) == \
        ["a.qkv_proj.weight"]
    assert any("a.qkv_proj.weight left fused" in note for note in odd.notes)
    # with head counts the k and v sizes must agree with them: 4 heads of 16, 2 key/value heads -> 32 each
    gqa = detect({"a.qkv_proj.weight": (128, 64)}, {"num_attention_heads": 4, "num_key_value_heads": 2})
    assert gqa.role("a.qkv_proj.weight", (128, 64)).sizes == (64, 32, 32)
    wrong = detect({"a.qkv_proj.weight": (128, 64)}, {"num_attention_heads": 4, "num_key_value_heads": 1})
    assert wrong.role("a.qkv_proj.weight", (128, 64)).parts == ()
    assert any("a.qkv_proj.weight left fused" in note for note in wrong.notes)  # said so, by the head counts
    llama = detect({"a.q_proj.weight": (64, 64)}, {"model_type": "llama"})
    assert gqa.notes == () and llama.notes == () and llama.model_type == "llama"
    assert detect({"a.qkv_proj.weight": (192,)}).notes == ()  # a 1-D weight is no fused projection
    assert gqa.role("a.num_batches_tracked", ()).kind == "layer"  # nor a 0-D one


def test_an_interleaved_query_key_value_is_left_fused_without_its_head_count_and_said_so():
    shapes = {"layers.0.attention.query_key_value.weight": (192, 64)}
    assert any("query_key_value left fused" in note for note in detect(shapes, {"model_type": "gpt_neox"}).notes)
    split = detect(shapes, {"model_type": "gpt_neox", "num_attention_heads": 4})
    assert split.notes == () and split.role(*shapes.popitem()).parts == ("q", "k", "v")


def test_erk_reads_a_conv1d_fused_projection_along_its_outputs():
    # c_attn is stored (in 32, out 96): its parts are three 32 x 32 projections, the shape of c_proj
    sparsifier = make_sparsifier("set", tiny_gpt2(), density=0.2, distribution="erk", seed=0)
    density = sparsifier.layer_density
    assert density["transformer.h.0.attn.c_attn.weight"] == pytest.approx(density["transformer.h.0.attn.c_proj.weight"])


def test_multihead_attention_in_proj_and_the_transformer_encoder_train_sparse():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, batch_first=True)
    encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=1e-2)
    sp = make_sparsifier("rigl", encoder, optimizer, density=0.3, delta_t=2, t_end=20, distribution="erk", seed=0)
    assert "layers.0.self_attn.in_proj_weight" in sp.sparse_layers
    assert "layers.0.self_attn.out_proj.weight" in sp.sparse_layers
    # ERK reads the fused (96, 32) in_proj as three 32×32 projections: the density of a 32×32 layer
    assert sp.layer_density["layers.0.self_attn.in_proj_weight"] == pytest.approx(
        sp.layer_density["layers.0.self_attn.out_proj.weight"])
    for _ in range(6):
        loss = encoder(torch.randn(4, 5, 32)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sp.step()
    weight = encoder.layers[0].self_attn.in_proj_weight.detach()
    assert torch.count_nonzero(weight[~sp.masks["layers.0.self_attn.in_proj_weight"]]) == 0
    graphs = layer_graphs({"self_attn.in_proj_weight": sp.masks["layers.0.self_attn.in_proj_weight"]},
                          family=sp.family)
    assert list(graphs) == [f"self_attn.in_proj_weight[{p}]" for p in "qkv"]


@pytest.mark.parametrize("method", ["rigl", "set", "adaptive", "random-fixed", "pruning"])
def test_every_sparse_method_sparsifies_gpt2_and_bert(method):
    for model in (tiny_gpt2(), tiny_bert()):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        extra = {"total_steps": 10} if method == "rigl" else {}
        sp = make_sparsifier(method, model, optimizer, density=0.25, seed=0, **extra)
        names = sp.sparse_layers
        assert not any("wte" in n or "wpe" in n or "embeddings" in n for n in names)
        if isinstance(model, transformers.GPT2LMHeadModel):
            assert "transformer.h.0.attn.c_attn.weight" in names and "transformer.h.1.mlp.c_proj.weight" in names
            assert sp.family.transposed >= {"transformer.h.0.attn.c_attn.weight"}
        else:
            assert "encoder.layer.0.attention.self.query.weight" in names


def test_the_trainer_callback_trains_gpt2_sparse(tmp_path):
    from topo.integrations.transformers import TopoTrainerCallback
    from topo.record import RunReader

    class Text(torch.utils.data.Dataset):
        def __len__(self):
            return 16

        def __getitem__(self, i):
            ids = torch.arange(i, i + 16) % 64
            return {"input_ids": ids, "labels": ids}

    topo = TopoTrainerCallback("set", density=0.3, record_dir=tmp_path / "run", seed=0)
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "hf"), num_train_epochs=2, report_to=[],
                                          per_device_train_batch_size=8, use_cpu=True, disable_tqdm=True,
                                          save_strategy="no")
    transformers.Trainer(model=tiny_gpt2(), args=args, train_dataset=Text(), callbacks=[topo]).train()
    reader = RunReader(tmp_path / "run")
    assert "transformer.h.0.attn.c_attn.weight" in reader.layers
    assert "transformer.h.0.attn.c_attn.weight" in reader.family.transposed
    masks = reader.masks(1)
    assert abs(masks["transformer.h.0.attn.c_attn.weight"].mean() - 0.3) < 0.01
    graphs = {g for g in layer_graphs(masks, family=reader.family)}
    assert "transformer.h.0.attn.c_attn.weight[q]" in graphs


def test_gpt_neox_query_key_value_is_de_interleaved_per_head(tmp_path):
    torch.manual_seed(0)
    config = transformers.GPTNeoXConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                        intermediate_size=64, max_position_embeddings=32)
    model = transformers.GPTNeoXForCausalLM(config)
    name = "gpt_neox.layers.0.attention.query_key_value.weight"
    with torch.no_grad():  # row r of the fused weight holds head r // 24, part (r // 8) % 3: mark the part
        weight = dict(model.named_parameters())[name]
        part = (torch.arange(96) // 8) % 3
        weight.copy_((torch.arange(32)[None, :] <= part[:, None] * 10).float())
    model.save_pretrained(tmp_path / "neox")
    table = analyze_checkpoint(tmp_path / "neox", layers="*query_key_value*", progress=False).table
    assert list(table.graph) == [f"{name}[{p}]" for p in "qkv"]
    assert table.mask_density.tolist() == pytest.approx([1 / 32, 11 / 32, 21 / 32])
    (tmp_path / "neox" / "config.json").unlink()  # without it the layout is unknown: one graph, said so
    unknown = analyze_checkpoint(tmp_path / "neox", layers="*query_key_value*", progress=False)
    assert list(unknown.table.graph) == [name] and "query_key_value left fused" in unknown.reading


def test_gate_up_and_grouped_query_heads(tmp_path):
    shapes = {"model.layers.0.mlp.gate_up_proj.weight": (128, 32), "model.layers.0.self_attn.q_proj.weight": (32, 32),
              "model.layers.0.self_attn.k_proj.weight": (16, 32), "model.layers.0.self_attn.o_proj.weight": (32, 32)}
    state = {n: torch.randn(s) for n, s in shapes.items()}
    safetensors_torch.save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "num_attention_heads": 4,
                                                      "num_key_value_heads": 2, "tie_word_embeddings": False}))
    table = analyze_checkpoint(tmp_path, heads=True, progress=False).table
    graphs = list(table.graph)
    assert "model.layers.0.mlp.gate_up_proj.weight[gate]" in graphs and "model.layers.0.mlp.gate_up_proj.weight[up]" \
        in graphs
    assert [g for g in graphs if "k_proj" in g] == [f"model.layers.0.self_attn.k_proj.weight[k.h{h}]" for h in (0, 1)]
    assert len([g for g in graphs if "q_proj" in g]) == 4
    up = table[table.graph.str.endswith("[up]")].iloc[0]
    assert up.n_nodes == 64 + 32


def test_embeddings_are_left_out_unless_asked(tmp_path):
    tiny_bert().save_pretrained(tmp_path / "bert")
    default = analyze_checkpoint(tmp_path / "bert", progress=False)
    assert not default.table.layer.str.contains("embeddings").any()
    assert "token_type_embeddings" in default.reading
    asked = analyze_checkpoint(tmp_path / "bert", embeddings=True, progress=False).table
    tables = asked[asked.kind == "embedding"]
    assert set(tables.layer) == {f"embeddings.{t}.weight" for t in
                                 ("word_embeddings", "position_embeddings", "token_type_embeddings")}
    model = tiny_gpt2()
    assert "lm_head.weight" not in set(analyze_model(model, progress=False).table.layer)  # tied to wte


def test_layers_come_in_model_order(tmp_path):
    model = tiny_gpt2(layers=12)
    model.save_pretrained(tmp_path / "gpt2")
    table = analyze_checkpoint(tmp_path / "gpt2", layers="*mlp.c_fc*", progress=False).table
    assert [int(layer.split(".")[2]) for layer in table.layer] == list(range(12))
    assert sorted(["h.10.a", "h.2.a", "h.1.b", "h.1.a"], key=natural_key) == ["h.1.a", "h.1.b", "h.2.a", "h.10.a"]
    shards = {f"h.{i}.weight": torch.ones(2, 2) for i in range(12)}
    safetensors_torch.save_file({k: v for k, v in shards.items() if int(k.split(".")[1]) >= 6},
                                str(tmp_path / "model-00001-of-00002.safetensors"))
    safetensors_torch.save_file({k: v for k, v in shards.items() if int(k.split(".")[1]) < 6},
                                str(tmp_path / "model-00002-of-00002.safetensors"))
    index = {"weight_map": {k: f"model-0000{1 if int(k.split('.')[1]) >= 6 else 2}-of-00002.safetensors"
                            for k in shards}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    sharded = analyze_checkpoint(tmp_path / "model.safetensors.index.json", progress=False).table
    assert [int(layer.split(".")[1]) for layer in sharded.layer] == [6, 7, 8, 9, 10, 11, 0, 1, 2, 3, 4, 5]


def test_a_tied_head_is_read_once_in_every_format(tmp_path):
    model = tiny_gpt2()
    torch.save(model.state_dict(), tmp_path / "gpt2.pt")  # lm_head shares wte's storage
    model.save_pretrained(tmp_path / "hf")  # safetensors: lm_head left out of the file
    state = {k: v.clone() for k, v in model.state_dict().items()}
    safetensors_torch.save_file(state, str(tmp_path / "copies.safetensors"))  # both kept, equal element for element
    layers = {}
    for path in (tmp_path / "gpt2.pt", tmp_path / "hf", tmp_path / "copies.safetensors"):
        result = analyze_checkpoint(path, embeddings=True, progress=False)
        layers[path.name] = sorted(set(result.table.layer))
        assert "lm_head.weight" not in layers[path.name], path.name
    assert layers["gpt2.pt"] == layers["hf"] == layers["copies.safetensors"]
    assert "lm_head.weight tied to transformer.wte.weight" in analyze_checkpoint(tmp_path / "gpt2.pt",
                                                                                 progress=False).reading
    untied = dict(state, **{"lm_head.weight": state["lm_head.weight"] + 1.0})
    torch.save(untied, tmp_path / "untied.pt")  # a head of its own stays a layer
    assert "lm_head.weight" in set(analyze_checkpoint(tmp_path / "untied.pt", progress=False).table.layer)


def test_with_a_config_safetensors_layers_come_in_module_order(tmp_path):
    names = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
             "model.layers.0.self_attn.k_proj.weight", "model.layers.0.self_attn.v_proj.weight",
             "model.layers.0.self_attn.o_proj.weight", "model.layers.0.mlp.gate_proj.weight",
             "model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.down_proj.weight",
             "model.layers.1.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight", "lm_head.weight"]
    generator = torch.Generator().manual_seed(0)
    safetensors_torch.save_file({n: torch.randn(8, 8, generator=generator) for n in names},
                                str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "num_attention_heads": 2,
                                                      "tie_word_embeddings": False}))
    table = analyze_checkpoint(tmp_path, embeddings=True, progress=False).table
    assert list(dict.fromkeys(table.layer)) == names
    tiny_bert().save_pretrained(tmp_path / "bert")
    bert = list(dict.fromkeys(analyze_checkpoint(tmp_path / "bert", progress=False).table.layer))
    block = [n for n in bert if n.startswith("encoder.layer.0.")]
    assert block == [f"encoder.layer.0.{n}.weight" for n in ("attention.self.query", "attention.self.key",
                                                              "attention.self.value", "attention.output.dense",
                                                              "intermediate.dense", "output.dense")]


# -- N:M --------------------------------------------------------------------------------------------------------
def test_nm_pattern_by_hand():
    two_four = torch.tensor([[1, 1, 0, 0, 0, 1, 0, 1], [0, 0, 1, 1, 1, 0, 1, 0]], dtype=torch.bool).repeat(20, 1)
    assert nm_pattern(two_four) == "2:4"
    assert nm_pattern(two_four[:2]) is None  # 4 groups: a random mask of density 1/2 fits 2:4 one time in 4.5
    one_four = torch.zeros(40, 8, dtype=torch.bool)
    one_four[:, [1, 6]] = True
    assert nm_pattern(one_four) == "1:4"
    four_eight = torch.zeros(40, 8, dtype=torch.bool)
    four_eight[:, :4] = True  # 4 of 4 in the first group: not 4-structured, 4 of every 8
    assert nm_pattern(four_eight) == "4:8"
    torch.manual_seed(0)
    assert nm_pattern(torch.rand(64, 64) < 0.1) is None  # unstructured, however sparse
    assert nm_pattern(torch.ones(4, 8, dtype=torch.bool)) is None


def test_analysis_reports_n_m_and_zero_fan_in_gini(tmp_path):
    torch.manual_seed(0)
    weight = torch.randn(16, 32)
    keep = weight.abs().reshape(16, 8, 4).topk(2, dim=-1).indices
    mask = torch.zeros(16, 8, 4, dtype=torch.bool).scatter_(-1, keep, True).reshape(16, 32)
    torch.save({"fc.weight": weight * mask, "other.weight": torch.randn(8, 8)}, tmp_path / "nm.pt")
    table = analyze_checkpoint(tmp_path / "nm.pt", progress=False).table.set_index("layer")
    assert table.loc["fc.weight", "n_m"] == "2:4" and pd.isna(table.loc["other.weight", "n_m"])
    assert table.loc["fc.weight", "fan_in_gini"] == 0.0  # every output reads N/M of its inputs


def test_a_convolution_pruned_2_4_along_input_channels_is_reported_n_m(tmp_path):
    # apex ASP's layout: at every output channel and tap, the two largest of each four input channels
    torch.manual_seed(0)
    weight = torch.randn(16, 32, 3, 3)
    groups = weight.permute(0, 2, 3, 1).reshape(16, 3, 3, 8, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.abs().topk(2, -1).indices, True)
    mask = keep.reshape(16, 3, 3, 32).permute(0, 3, 1, 2)
    torch.save({"conv.weight": weight * mask, "dense.weight": torch.randn(16, 32, 3, 3)}, tmp_path / "asp.pt")
    table = analyze_checkpoint(tmp_path / "asp.pt", progress=False).table.set_index("layer")
    assert table.loc["conv.weight", "n_m"] == "2:4" and pd.isna(table.loc["dense.weight", "n_m"])


@pytest.mark.slow
@settings(max_examples=8, deadline=None)
@given(method=st.sampled_from(["set", "rigl", "random-fixed"]), seed=st.integers(0, 1000))
def test_nm_training_keeps_every_mask_n_m_after_every_update(method, seed):
    model = tiny_gpt2()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    extra = {"delta_t": 1, "t_end": 100} if method == "rigl" else {}
    sp = make_sparsifier(method, model, optimizer, density=0.5, structure="2:4", seed=seed, **extra)
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(seed))
    for epoch in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        sp.step()
        optimizer.zero_grad()
        if method == "set":
            sp.end_epoch(epoch)
        for name in sp.sparse_layers:
            assert nm_pattern(sp.oriented(name, sp.masks[name])) == "2:4", (name, epoch)
    assert sp.pop_changes()["transformer.h.0.mlp.c_fc.weight"][0] > 0 or method == "random-fixed"


def test_nm_groups_run_along_a_conv1d_weights_inputs():
    model = tiny_gpt2()
    sp = make_sparsifier("random-fixed", model, density=0.5, structure="2:4", seed=0)
    stored = sp.masks["transformer.h.0.mlp.c_fc.weight"]  # (in 32, out 128)
    assert nm_pattern(stored.T) == "2:4" and stored.reshape(8, 4, 128).sum(1).eq(2).all()


def test_nm_magnitude_pruning_keeps_the_largest_of_every_group():
    model = tiny_gpt2()
    sp = make_sparsifier("pruning", model, density=0.5, structure="2:4", prune_after=[0], seed=0)
    sp.end_epoch(0)
    weight = sp.oriented("transformer.h.0.mlp.c_proj.weight", model.transformer.h[0].mlp.c_proj.weight.detach())
    mask = sp.oriented("transformer.h.0.mlp.c_proj.weight", sp.masks["transformer.h.0.mlp.c_proj.weight"])
    groups, kept = weight.abs().reshape(32, -1, 4), mask.reshape(32, -1, 4)
    smallest_kept = torch.where(kept, groups, torch.inf).min(-1).values
    largest_dropped = torch.where(~kept, groups, -torch.inf).max(-1).values
    assert (smallest_kept >= largest_dropped).all() and nm_pattern(mask) == "2:4"


def test_nm_bad_configurations_are_one_clear_error():
    with pytest.raises(ConfigError, match="2:4 sparsity has density 0.5"):
        make_sparsifier("set", tiny_gpt2(), density=0.3, structure="2:4")
    with pytest.raises(ConfigError, match="inputs do not divide into groups of 8"):
        make_sparsifier("set", nn.Sequential(nn.Linear(12, 4)), density=0.25, structure="2:8")
    with pytest.raises(ConfigError, match="N:M"):
        make_sparsifier("rigl", nn.Sequential(nn.Linear(8, 4)), density=0.5, structure="4:2", total_steps=4)


def test_semi_structured_export_off_gpu_is_one_clear_error():
    model = nn.Sequential(nn.Linear(64, 64))
    sp = make_sparsifier("random-fixed", model, density=0.5, structure="2:4", seed=0)
    assert nm_pattern(sp.masks["0.weight"]) == "2:4"
    with pytest.raises(ConfigError, match="need a CUDA GPU"):
        to_semi_structured(model)
    with pytest.raises(ConfigError, match="no nn.Linear or Conv1D weight of the model fits 2:4"):
        to_semi_structured(nn.Sequential(nn.Linear(8, 8)))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_semi_structured_export_matches_the_dense_output_on_cuda():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 64)).cuda().half()
    make_sparsifier("random-fixed", model, density=0.5, structure="2:4", seed=0)
    x = torch.randn(64, 128, device="cuda", dtype=torch.half)
    dense = model(x)
    to_semi_structured(model)
    assert torch.allclose(model(x), dense, rtol=1e-2, atol=1e-2)


# -- convolutions and number formats ------------------------------------------------------------------------------
def test_pruned_convolutions_get_the_kernel_view_where_channels_are_near_complete(tmp_path):
    from topo.experiments.models import ResNet

    model = ResNet(depth=20)
    sp = make_sparsifier("pruning", model, density=0.4, prune_after=[0], seed=0)
    sp.end_epoch(0)
    torch.save(model.state_dict(), tmp_path / "resnet.pt")
    auto = analyze_checkpoint(tmp_path / "resnet.pt", layers="blocks.8.conv*", progress=False).table
    channel = analyze_checkpoint(tmp_path / "resnet.pt", layers="blocks.8.conv*", conv="channel",
                                 progress=False).table
    assert (channel.density > 0.9).all() and (channel.mask_density < 0.41).all()  # channels near complete
    assert (auto.kind == "kernel").all() and auto.density.tolist() == pytest.approx(auto.mask_density.tolist())
    assert (auto.n_nodes == 64 * 9 + 64).all()
    result = topo_cli("analyze", str(tmp_path / "resnet.pt"), "--layers", "blocks.8.conv1*", "--json")
    assert result.returncode == 0 and json.loads(result.stdout)[0]["kind"] == "kernel"


def test_float8_weights_are_upcast_and_int8_is_one_line(tmp_path):
    weight = torch.randn(16, 8)
    weight[weight.abs() < 0.5] = 0
    safetensors_torch.save_file({"fc.weight": weight.to(torch.float8_e4m3fn)}, str(tmp_path / "fp8.safetensors"))
    table = analyze_checkpoint(tmp_path / "fp8.safetensors", progress=False).table
    assert table.mask_density.item() == pytest.approx(float((weight != 0).float().mean()))
    safetensors_torch.save_file({"fc.weight": weight.to(torch.int8)}, str(tmp_path / "int8.safetensors"))
    with pytest.raises(CheckpointError, match=r"layer 'fc.weight' is stored as I8 \(quantized\).*dequantize first"):
        analyze_checkpoint(tmp_path / "int8.safetensors", progress=False)
    result = topo_cli("analyze", str(tmp_path / "int8.safetensors"), "--csv", str(tmp_path / "out.csv"))
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "dequantize first" in result.stderr and not (tmp_path / "out.csv").exists()


def test_family_detection_by_names_without_config():
    shapes = {"h.0.attn.c_attn.weight": (32, 96), "h.0.attn.c_proj.weight": (32, 32), "h.0.mlp.c_fc.weight": (32, 128)}
    assert detect(shapes).transposed == frozenset(shapes)
    bigcode = {"h.0.attn.c_attn.weight": (96, 32), "h.0.mlp.c_fc.weight": (128, 32)}  # Linear layout: not Conv1D
    assert detect(bigcode).transposed == frozenset()


def test_module_order_key_by_hand():
    from topo.families import module_order_key

    llama = ["lm_head.weight", "model.norm.weight", "model.final_layernorm.weight",
             "model.layers.0.post_attention_layernorm.weight", "model.layers.0.mlp.gate_proj.weight",
             "model.layers.0.self_attn.o_proj.weight", "model.layers.0.input_layernorm.weight",
             "model.layers.0.self_attn.q_proj.weight", "model.embed_tokens.weight", "model.layers.1.mlp.up_proj.weight"]
    assert sorted(llama, key=module_order_key) == [
        "model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.o_proj.weight", "model.layers.0.input_layernorm.weight",
        "model.layers.0.post_attention_layernorm.weight", "model.layers.0.mlp.gate_proj.weight",
        "model.layers.1.mlp.up_proj.weight", "model.final_layernorm.weight", "model.norm.weight", "lm_head.weight"]
    t5 = ["decoder.block.0.layer.1.EncDecAttention.q.weight", "decoder.block.0.layer.0.SelfAttention.o.weight",
          "encoder.block.1.layer.0.SelfAttention.q.weight", "encoder.block.0.layer.1.DenseReluDense.wo.weight",
          "shared.weight"]
    assert sorted(t5, key=module_order_key) == [
        "shared.weight", "encoder.block.0.layer.1.DenseReluDense.wo.weight",
        "encoder.block.1.layer.0.SelfAttention.q.weight", "decoder.block.0.layer.0.SelfAttention.o.weight",
        "decoder.block.0.layer.1.EncDecAttention.q.weight"]


def test_a_family_survives_its_json_round_trip():
    from topo.families import Family

    family = Family("gpt_neox", frozenset({"b", "a"}), frozenset({"wte.weight"}), 8, 2, True, "config.json (x)")
    data = family.to_json()
    assert data == {"model_type": "gpt_neox", "transposed": ["a", "b"], "embeddings": ["wte.weight"], "heads": 8,
                    "kv_heads": 2, "interleaved_qkv": True, "found_by": "config.json (x)"}
    assert Family.from_json(json.loads(json.dumps(data))) == family
    assert Family.from_json(None) == Family() and Family.from_json({}) == Family()
    partial = Family.from_json({"heads": 4})
    assert partial.heads == 4 and partial.transposed == frozenset() and partial.found_by == "run.json"
    assert partial.interleaved_qkv is False and partial.model_type is None and partial.kv_heads is None


def test_views_cut_every_projection_exactly():
    from topo.families import Family, views

    gpt2 = Family(transposed=frozenset({"h.0.attn.c_attn.weight"}), heads=2)
    stored = torch.arange(8 * 24).reshape(8, 24)  # Conv1D (in 8, out 24): q, k, v of 8 rows once transposed
    pieces = {name: (block, kind) for name, block, kind in views("h.0.attn.c_attn.weight", stored, gpt2)}
    out_in = stored.T
    assert list(pieces) == [f"h.0.attn.c_attn.weight[{p}]" for p in "qkv"]
    for index, part in enumerate("qkv"):
        assert torch.equal(pieces[f"h.0.attn.c_attn.weight[{part}]"][0], out_in[8 * index:8 * (index + 1)])
    assert {kind for _, kind in pieces.values()} == {"attention"}
    family = Family(heads=2, kv_heads=1)  # grouped-query attention: q 8 rows, k and v one head of 4
    fused = torch.arange(16 * 8).reshape(16, 8)
    heads = dict((name, block) for name, block, _ in views("layers.0.self_attn.qkv_proj.weight", fused, family,
                                                           heads=True))
    assert list(heads) == [f"layers.0.self_attn.qkv_proj.weight[{h}]" for h in ("q.h0", "q.h1", "k.h0", "v.h0")]
    assert torch.equal(heads["layers.0.self_attn.qkv_proj.weight[q.h1]"], fused[4:8])
    assert torch.equal(heads["layers.0.self_attn.qkv_proj.weight[v.h0]"], fused[12:])
    output = torch.arange(8 * 8).reshape(8, 8)
    o_heads = views("layers.0.self_attn.o_proj.weight", output, family, heads=True)
    assert [n for n, _, _ in o_heads] == [f"layers.0.self_attn.o_proj.weight[o.h{h}]" for h in (0, 1)]
    assert torch.equal(o_heads[1][1], output[:, 4:]) and o_heads[1][2] == "attention"
    gate_up = views("mlp.gate_up_proj.weight", torch.arange(12).reshape(6, 2), family)
    assert [(n, k) for n, _, k in gate_up] == [("mlp.gate_up_proj.weight[gate]", "bipartite"),
                                              ("mlp.gate_up_proj.weight[up]", "bipartite")]
    assert torch.equal(gate_up[1][1], torch.arange(12).reshape(6, 2)[3:])
    plain = views("fc.weight", torch.ones(3, 2), family)
    assert [(n, tuple(b.shape), k) for n, b, k in plain] == [("fc.weight", (3, 2), "bipartite")]
    table = Family(embeddings=frozenset({"wte.weight"}))
    assert [(n, k) for n, _, k in views("wte.weight", torch.ones(5, 3), table)] == [("wte.weight", "embedding")]


def test_interleaved_query_key_value_is_de_interleaved_per_head():
    from topo.families import Family, views

    family = Family("gpt_neox", heads=2, kv_heads=2, interleaved_qkv=True)
    rows = torch.arange(12)[:, None].expand(12, 4)  # (heads 2, q|k|v, head_dim 2) rows of the hidden size 4
    pieces = {n: b for n, b, _ in views("gpt_neox.layers.0.attention.query_key_value.weight", rows, family)}
    q = pieces["gpt_neox.layers.0.attention.query_key_value.weight[q]"][:, 0].tolist()
    k = pieces["gpt_neox.layers.0.attention.query_key_value.weight[k]"][:, 0].tolist()
    assert q == [0, 1, 6, 7] and k == [2, 3, 8, 9]  # head 0's q rows, then head 1's


def test_split_heads_and_head_counts_by_hand():
    from topo.families import Family, split_heads

    with pytest.raises(ConfigError, match="x: 6 outputs do not split into 4 heads"):
        split_heads(torch.ones(6, 4), "q", 4, "x")
    with pytest.raises(ConfigError, match="x: 6 inputs do not split into 4 heads"):
        split_heads(torch.ones(4, 6), "o", 4, "x")
    family = Family(heads=8, kv_heads=2)
    assert [family.head_counts(p) for p in "qkvo"] == [8, 2, 2, 8]
    assert Family(heads=8).head_counts("k") == 8 and Family().head_counts("q") is None


def test_read_config_from_a_folder_or_a_file_beside_it(tmp_path):
    from topo.families import read_config

    assert read_config(tmp_path) is None
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    assert read_config(tmp_path) == {"model_type": "llama"}
    assert read_config(tmp_path / "model.safetensors") == {"model_type": "llama"}
    (tmp_path / "config.json").write_text("[1, 2]")
    assert read_config(tmp_path) is None  # JSON, but not a configuration
    (tmp_path / "config.json").write_text("{broken")
    assert read_config(tmp_path) is None


def test_grouped_query_heads_are_read_off_the_key_projection_when_no_config_says(tmp_path):
    shapes = {f"model.layers.{i}.self_attn.{part}.weight": shape for i in range(2)
              for part, shape in [("q_proj", (96, 96)), ("k_proj", (48, 96)), ("v_proj", (48, 96)),
                                  ("o_proj", (96, 96))]}
    assert (detect(shapes, heads=4).heads, detect(shapes, heads=4).kv_heads) == (4, 2)
    assert detect(shapes, {"model_type": "llama", "num_attention_heads": 4}).kv_heads == 2
    assert detect(shapes, heads=4, kv_heads=1).kv_heads == 1  # an explicit count decides
    assert detect(shapes, {"num_attention_heads": 4, "num_key_value_heads": 4}).kv_heads == 4
    assert detect(shapes).kv_heads is None
    bert = {"attention.self.query.weight": (8, 8), "attention.self.key.weight": (8, 8)}
    assert detect(bert, heads=2).kv_heads == 2
    disagreeing = {**shapes, "model.layers.1.self_attn.k_proj.weight": (24, 96)}
    assert detect(disagreeing, heads=4).kv_heads == 4  # blocks that disagree say nothing: kv = heads
    torch.manual_seed(0)
    state = {name: torch.randn(shape) for name, shape in shapes.items()}
    torch.save(state, tmp_path / "gqa.pt")
    graphs = analyze_checkpoint(tmp_path / "gqa.pt", heads=True, num_heads=4, progress=False).table
    keys = graphs[graphs.layer == "model.layers.0.self_attn.k_proj.weight"]
    assert keys.graph.str.slice(-6).tolist() == ["[k.h0]", "[k.h1]"] and set(keys["shape"]) == {"24×96"}


def test_numbered_modules_sort_before_named_ones_at_the_same_depth():
    names = ["net.norm.weight", "net.10.weight", "net.2.weight"]
    assert sorted(names, key=natural_key) == ["net.2.weight", "net.10.weight", "net.norm.weight"]


def test_fused_weights_that_do_not_split_stay_one_graph():
    from topo.families import Family

    family = Family()
    assert family.role("mlp.gate_up_proj.weight", (7, 4)).parts == ()  # odd rows: no equal gate and up
    assert family.role("mlp.gate_up_proj.weight", (8, 4)).sizes == (4, 4)
    assert family.role("attn.qkv_proj.weight", (64, 64)).parts == ()  # no rows left for k and v
    assert family.role("attn.qkv_proj.weight", (96, 64)).sizes == (64, 16, 16)
    # GPT-2's cross-attention c_attn, stored (in, out) = (32, 64): keys and values of the hidden size
    cross = Family(transposed=frozenset({"h.0.crossattention.c_attn.weight"}))
    role = cross.role("h.0.crossattention.c_attn.weight", (32, 64))
    assert (role.parts, role.sizes) == (("k", "v"), (32, 32))


@pytest.mark.parametrize("config, heads, kv_heads", [
    ({"num_heads": 4}, 4, 4), ({"n_heads": 8}, 8, 8), ({"n_head": 8, "n_head_kv": 1}, 8, 1),
    ({"num_attention_heads": 8, "num_kv_heads": 2}, 8, 2)])
def test_head_counts_under_every_configuration_key(config, heads, kv_heads):
    family = detect({}, config)
    assert (family.heads, family.kv_heads) == (heads, kv_heads)


def test_key_value_heads_are_read_off_the_shapes_only_where_they_say_so():
    # query rows not a multiple of the heads: the query's head size is unknown, so nothing is read
    assert detect({"l.q_proj.weight": (64, 64), "l.k_proj.weight": (42, 64)}, heads=3).kv_heads == 3
    assert detect({"l.k_proj.weight": (16, 64)}, heads=4).kv_heads == 4  # no query projection beside the key
    # the head size comes from the query's outputs, whatever its inputs (hidden size ≠ heads × head size)
    assert detect({"l.q_proj.weight": (64, 50), "l.k_proj.weight": (32, 50)}, heads=4).kv_heads == 2
    assert detect({"l.q_proj.weight": (64, 40), "l.k_proj.weight": (32, 40)}, heads=4).kv_heads == 2


def test_unsplit_projections_are_attention_graphs_and_other_layers_bipartite():
    from topo.families import Family, views

    family = Family(heads=2)
    assert [kind for _, _, kind in views("layers.0.self_attn.q_proj.weight", torch.ones(8, 8), family)] == [
        "attention"]
    assert [kind for _, _, kind in views("layers.0.mlp.fc1.weight", torch.ones(8, 8), family)] == ["bipartite"]
    with pytest.raises(ConfigError, match="layers.0.self_attn.q_proj.weight: 9 outputs"):
        views("layers.0.self_attn.q_proj.weight", torch.ones(9, 8), family, heads=True)


def test_a_model_at_hand_is_read_by_its_module_classes():
    from topo.families import detect_model

    # an embedding named like nothing: its class says what it is, also for a bare nn.Embedding
    assert detect_model(nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10))).embeddings == {"0.weight"}
    assert detect_model(nn.Embedding(10, 4)).embeddings == {"weight"}
    # the head count of nn.MultiheadAttention; a config given decides over none
    attention = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32)
    assert detect_model(attention).heads == 4
    assert detect_model(nn.Linear(4, 4), {"num_attention_heads": 2}).heads == 2
    # only Hugging Face's Conv1D is stored (in, out), not any module with an ``nf`` attribute

    class Projection(nn.Linear):
        nf = 4

    assert detect_model(nn.Sequential(Projection(4, 4))).transposed == frozenset()
    # an output head sharing the embedding table's storage is a table too
    gpt2 = tiny_gpt2()
    assert detect_model(gpt2).embeddings == {"transformer.wte.weight", "transformer.wpe.weight", "lm_head.weight"}


def test_a_leading_number_sorts_before_a_leading_name_whatever_its_value():
    assert sorted(["norm.weight", "5.weight"], key=natural_key) == ["5.weight", "norm.weight"]


def test_only_conv1d_weights_are_read_transposed_and_heads_tie_as_the_config_says():
    gpt2 = {"transformer.wte.weight": (64, 32), "transformer.h.0.attn.c_attn.weight": (32, 96),
            "transformer.h.0.attn.c_proj.weight": (32, 32), "lm_head.weight": (64, 32)}
    conv1d = {"transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_proj.weight"}
    assert detect(gpt2, {"model_type": "gpt2"}).transposed == conv1d  # by config.json
    assert detect(gpt2).transposed == conv1d  # by names
    # a family without Conv1D modules keeps every weight as stored, whatever its names
    assert detect({"h.0.attn.c_proj.weight": (8, 8)}, {"model_type": "llama"}).transposed == frozenset()
    # an output head shaped like the embedding table is tied unless config.json says otherwise (default: tied)
    assert "lm_head.weight" in detect(gpt2, {"model_type": "gpt2"}).embeddings
    assert "lm_head.weight" not in detect(gpt2, {"model_type": "gpt2", "tie_word_embeddings": False}).embeddings

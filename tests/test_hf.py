"""pyllmc.hf: a Hugging Face GPT-2 (built here by transformers, random
weights, a vocabulary that llm.c pads) converts to an llm.c model file and
back, with the same logits on CPU."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from pyllmc import Model  # noqa: E402
from pyllmc import hf  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB, LAYERS, CHANNELS, HEADS, POSITIONS = 777, 2, 64, 4, 64


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=POSITIONS, n_embd=CHANNELS,
                                     n_layer=LAYERS, n_head=HEADS)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # biases and LayerNorms off their init values, so a mix-up shows
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    folder = tmp_path_factory.mktemp("hf") / "gpt2"
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def tokens(seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, size=(2, 24))


def hf_logits(folder, x):
    model = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(torch.from_numpy(x)).logits.numpy()


def test_import_gives_the_hf_logits(hf_dir, tmp_path):
    path = tmp_path / "model.bin"
    run = subprocess.run([sys.executable, "-m", "pyllmc.hf", "import", str(hf_dir), str(path)],
                         env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    x = tokens()
    with Model.load(path, max_batch_size=2) as model:
        assert model.config.padded_vocab_size == 896
        wte = model.parameters()[:896 * CHANNELS].reshape(896, CHANNELS)
        assert not wte[VOCAB:].any()  # padded rows are zero
        np.testing.assert_allclose(model.logits(x), hf_logits(hf_dir, x), atol=1e-4, rtol=0)


def test_export_loads_in_transformers_and_round_trips(hf_dir, tmp_path):
    imported, exported, again = tmp_path / "a.bin", tmp_path / "hf_out", tmp_path / "b.bin"
    hf.import_hf(hf_dir, imported)
    hf.export_hf(imported, exported)
    x = tokens(1)
    with Model.load(imported, max_batch_size=2) as model:
        np.testing.assert_allclose(hf_logits(exported, x), model.logits(x), atol=1e-4, rtol=0)
    assert safetensors_numpy.load_file(exported / "model.safetensors")[
        "transformer.wte.weight"].shape == (VOCAB, CHANNELS)  # padding dropped
    hf.import_hf(exported, again)
    assert again.read_bytes() == imported.read_bytes()


def test_refuses_what_it_cannot_convert(hf_dir, tmp_path, capsys):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((hf_dir / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not read")
    relu = tmp_path / "relu"
    relu.mkdir()
    config = json.loads((hf_dir / "config.json").read_text())
    (relu / "config.json").write_text(json.dumps({**config, "activation_function": "relu"}))
    for folder, message in [(pickled, "pytorch_model.bin is there: only a single model.safetensors"),
                            (relu, "activation_function 'relu'"),
                            (tmp_path / "none", "config.json does not exist")]:
        with pytest.raises(SystemExit):
            hf.main(["import", str(folder), str(tmp_path / "x.bin")])
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.bin").exists()


# ---- hostile folders: each ends in one line naming the file and the problem ----------------
# A tiny GPT-2 written tensor by tensor, so that each case changes one thing.

SMALL = {"model_type": "gpt2", "vocab_size": 50, "n_positions": 8, "n_embd": 8, "n_layer": 1,
         "n_head": 2}


def small_tensors():
    rng = np.random.default_rng(0)
    shapes = hf.hf_shapes(hf.config_from_hf(SMALL, 'config.json')[0])
    return {"transformer." + name: rng.standard_normal(shape).astype(np.float32)
            for name, shape in shapes.items()}


def safetensors_bytes(tensors, dtypes=None, header_edit=None):
    """A safetensors file written by hand: tensors (name -> array) laid out in
    order; dtypes overrides the dtype names; header_edit(header) may change
    the header before it is written."""
    names = {np.dtype("float32"): "F32", np.dtype("float64"): "F64", np.dtype("float16"): "F16",
             np.dtype("int64"): "I64", np.dtype("uint8"): "U8", np.dtype("bool"): "BOOL",
             np.dtype("uint16"): "BF16"}
    header, data = {}, b""
    for name, t in tensors.items():
        raw = np.ascontiguousarray(t).tobytes()
        header[name] = {"dtype": (dtypes or {}).get(name, names[t.dtype]), "shape": list(t.shape),
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if header_edit:
        header_edit(header)
    text = header if isinstance(header, (bytes, str)) else json.dumps(header)
    text = text.encode() if isinstance(text, str) else text
    return len(text).to_bytes(8, "little") + text + data


def folder(tmp_path, config=SMALL, tensors=None, weights=None, name="hf"):
    path = tmp_path / name
    path.mkdir()
    if config is not None:
        (path / "config.json").write_bytes(config if isinstance(config, bytes)
                                           else json.dumps(config).encode())
    weights = weights if weights is not None else safetensors_bytes(tensors or small_tensors())
    (path / "model.safetensors").write_bytes(weights)
    return path


def with_tensor(name, value):
    tensors = small_tensors()
    tensors[name] = value
    return tensors


def edit_offsets(name, offsets):
    return lambda header: header[name].update(data_offsets=offsets)


def test_a_hand_written_folder_imports_exactly(tmp_path):
    tensors = small_tensors()
    out = tmp_path / "m.bin"
    hf.import_hf(folder(tmp_path, tensors=tensors), out)
    with Model.load(out) as model:
        back = hf.llmc_to_hf(model.parameters(), model.config)
    assert back.keys() == tensors.keys()
    for name in tensors:
        np.testing.assert_array_equal(back[name], tensors[name])


def test_bf16_and_fp16_weights_import(tmp_path):
    tensors = small_tensors()
    bf16 = {k: (v.view(np.uint32) >> 16).astype(np.uint16) for k, v in tensors.items()}
    fp16 = {k: v.astype(np.float16) for k, v in tensors.items()}
    for kind, converted, expect in [
            ("bf16", bf16, {k: (v.astype(np.uint32) << 16).view(np.float32) for k, v in bf16.items()}),
            ("fp16", fp16, {k: v.astype(np.float32) for k, v in fp16.items()})]:
        out = tmp_path / f"{kind}.bin"
        hf.import_hf(folder(tmp_path, weights=safetensors_bytes(converted), name=kind), out)
        with Model.load(out) as model:
            back = hf.llmc_to_hf(model.parameters(), model.config)
        for name in tensors:
            np.testing.assert_array_equal(back[name], expect[name])


def raw_header(text, data=b""):
    return len(text).to_bytes(8, "little") + text + data


W = "transformer.h.0.attn.c_attn.weight"
ENTRY = b'{"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}'
HOSTILE = {
    # config.json
    "config-list": ({"config": b"[1, 2]"}, "config.json: a JSON list, expected an object"),
    "config-string": ({"config": b'"x"'}, "a JSON str, expected an object"),
    "config-null": ({"config": b"null"}, "a JSON NoneType, expected an object"),
    "config-binary": ({"config": b"\xff\xfe\x00\x01"}, "config.json: not JSON (UnicodeDecodeError"),
    "config-deep": ({"config": b"[" * 100000 + b"]" * 100000}, "not JSON (RecursionError"),
    "config-huge": ({"config": b" " * (hf.CONFIG_LIMIT + 1) + b"{}"}, "larger than 1048576 bytes"),
    "no-n_embd": ({"config": {k: v for k, v in SMALL.items() if k != "n_embd"}},
                  "n_embd is None, expected a positive integer"),
    "n_embd-string": ({"config": {**SMALL, "n_embd": "8"}}, "n_embd is '8', expected"),
    "n_layer-bool": ({"config": {**SMALL, "n_layer": True}}, "n_layer is True, expected"),
    "n_head-float": ({"config": {**SMALL, "n_head": 2.0}}, "n_head is 2.0, expected"),
    "config-twice": ({"config": b'{"model_type": "gpt2", "model_type": "gpt2"}'},
                     "the name 'model_type' appears twice"),
    "epsilon": ({"config": {**SMALL, "layer_norm_epsilon": 1e-6}},
                "layer_norm_epsilon is 1e-06; llm.c computes only 1e-05"),
    "unscaled": ({"config": {**SMALL, "scale_attn_weights": False}}, "scale_attn_weights is False"),
    "layer-scaled": ({"config": {**SMALL, "scale_attn_by_inverse_layer_idx": True}},
                     "scale_attn_by_inverse_layer_idx is True"),
    "untied": ({"config": {**SMALL, "tie_word_embeddings": False}}, "no lm_head.weight"),
    # model.safetensors: its header
    "header-too-long": ({"weights": (10 ** 6).to_bytes(8, "little") + b"{}"},
                        "the header claims 1000000 bytes"),
    "truncated": ({"weights": safetensors_bytes(small_tensors())[:-100]},
                  "expected [begin, end] within"),
    "tiny-file": ({"weights": b"\x01\x02"}, "too short for the 8-byte header length"),
    "header-not-json": ({"weights": raw_header(b"{{{")}, "the header is not JSON"),
    "header-list": ({"weights": raw_header(b"[]")}, "the header is a JSON list"),
    "overlap": ({"weights": safetensors_bytes(small_tensors(), header_edit=edit_offsets(
        "transformer.wpe.weight", [0, 256]))}, "overlap in the data"),
    "unknown-dtype": ({"weights": safetensors_bytes(small_tensors(),
                                                    dtypes={"transformer.wpe.weight": "F7"})},
                      "tensor 'transformer.wpe.weight': unknown dtype 'F7'"),
    "size-lie": ({"weights": safetensors_bytes(small_tensors(), dtypes={
        "transformer.wpe.weight": "F64"})}, "is 512 bytes, but its offsets span 256"),
    "name-twice": ({"weights": raw_header(b'{"a": %s, "a": %s}' % (ENTRY, ENTRY), bytes(4))},
                   "the name 'a' appears twice"),
    # tensors against the config
    "wte-rows": ({"tensors": with_tensor("transformer.wte.weight", np.zeros((49, 8), np.float32))},
                 "'transformer.wte.weight' has shape [49, 8], expected [50, 8]"),
    "wte-scalar": ({"tensors": with_tensor("transformer.wte.weight", np.float32(1.0).reshape(()))},
                   "has shape [], expected [50, 8]"),
    "c_attn-orientation": ({"tensors": with_tensor(W, np.zeros((24, 8), np.float32))},
                           "has shape [24, 8], expected [8, 24]"),
    "int64": ({"tensors": with_tensor(W, np.zeros((8, 24), np.int64))},
              f"tensor '{W}' is I64: expected floating-point"),
    "uint8": ({"tensors": with_tensor(W, np.zeros((8, 24), np.uint8))}, "is U8: expected floating"),
    "bool": ({"tensors": with_tensor(W, np.zeros((8, 24), bool))}, "is BOOL: expected floating"),
    "nan": ({"tensors": with_tensor(W, np.full((8, 24), np.nan, np.float32))},
            f"tensor '{W}' holds nan at element 0"),
    "inf": ({"tensors": with_tensor(W, np.full((8, 24), -np.inf, np.float32))}, "holds -inf"),
    "f64-beyond-f32": ({"tensors": with_tensor(W, np.full((8, 24), 1e300))}, "holds inf"),
    "ambiguous": ({"tensors": {**small_tensors(), "wte.weight": np.zeros((50, 8), np.float32)}},
                  "both 'transformer.wte.weight' and 'wte.weight'"),
    "missing": ({"tensors": {k: v for k, v in small_tensors().items() if "ln_f.bias" not in k}},
                "has no tensor 'ln_f.bias'"),
    "extra-layer": ({"tensors": {**small_tensors(), "transformer.h.1.ln_1.weight":
                                 np.zeros(8, np.float32)}}, "unexpected tensor 'transformer.h.1"),
    "lm_head-differs": ({"tensors": {**small_tensors(), "lm_head.weight":
                                     np.zeros((50, 8), np.float32)}}, "lm_head.weight differs"),
}


@pytest.mark.parametrize("case", HOSTILE, ids=list(HOSTILE))
def test_hostile_folders_are_refused_in_one_line(tmp_path, case, capsys):
    spec, message = HOSTILE[case]
    path = folder(tmp_path, config=spec.get("config", SMALL), tensors=spec.get("tensors"),
                  weights=spec.get("weights"))
    with pytest.raises(SystemExit) as exit:
        hf.main(["import", str(path), str(tmp_path / "x.bin")])
    err = capsys.readouterr().err
    assert exit.value.code == 1 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert not (tmp_path / "x.bin").exists()


@pytest.mark.parametrize("which", ["config.json", "model.safetensors"])
@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_fifos_and_devices_are_refused_without_waiting(tmp_path, which, kind):
    path = folder(tmp_path)
    os.remove(path / which)
    if kind == "fifo":
        os.mkfifo(path / which)
    else:
        os.symlink("/dev/zero", path / which)
    run = subprocess.run([sys.executable, "-m", "pyllmc.hf", "import", str(path),
                          str(tmp_path / "x.bin")], env=dict(os.environ, PYTHONPATH=REPO),
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and run.stderr.count("\n") == 1, run.stderr
    assert f"{which}: is {'a FIFO' if kind == 'fifo' else 'a device or socket'}" in run.stderr


def test_outputs_are_not_overwritten_without_force(tmp_path, capsys):
    path = folder(tmp_path)
    out = tmp_path / "m.bin"
    out.write_bytes(b"keep")
    with pytest.raises(SystemExit):
        hf.main(["import", str(path), str(out)])
    assert "m.bin exists: pass --force" in capsys.readouterr().err and out.read_bytes() == b"keep"
    hf.main(["import", str(path), str(out), "--force"])
    exported = tmp_path / "exported"
    hf.main(["export", str(out), str(exported)])
    with pytest.raises(SystemExit):
        hf.main(["export", str(out), str(exported)])
    assert "already holds model.safetensors, config.json: pass --force" in capsys.readouterr().err
    hf.main(["export", str(out), str(exported), "--force"])


def test_export_writes_a_tokenizer_that_works_offline(tmp_path):
    from pyllmc import tokenizer
    config = {**SMALL, "vocab_size": tokenizer.VOCAB_SIZE, "n_positions": 16}
    shapes = hf.hf_shapes(hf.config_from_hf(config, 'config.json')[0])
    rng = np.random.default_rng(1)
    tensors = {name: rng.standard_normal(s).astype(np.float32) * 0.1 for name, s in shapes.items()}
    model_bin, out = tmp_path / "m.bin", tmp_path / "exported"
    hf.import_hf(folder(tmp_path, config=config, tensors=tensors), model_bin)
    hf.export_hf(model_bin, out)
    text = "Hello world, it's llmc's tokenizer:  two  spaces\n\ttabs, ünïcödé 123456 <|endoftext|>"
    auto = transformers.AutoTokenizer.from_pretrained(out)
    assert auto(text)["input_ids"] == tokenizer.gpt2_encoding().encode(text,
                                                                      allowed_special="all")
    generate = transformers.pipeline("text-generation", model=str(out), device="cpu")
    result = generate("The", max_new_tokens=3, do_sample=False)[0]["generated_text"]
    assert result.startswith("The") and len(auto(result)["input_ids"]) == 4

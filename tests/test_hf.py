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

"""
Hugging Face GPT-2 weights to llm.c model files and back.

    python -m pyllmc.hf import HF_DIR model.bin    # config.json + model.safetensors -> llm.c
    python -m pyllmc.hf export model.bin HF_DIR    # llm.c -> config.json + model.safetensors

HF_DIR is what `GPT2LMHeadModel.save_pretrained` writes and `from_pretrained`
reads. Only safetensors files are read: they hold tensors and nothing else,
whereas the pickled pytorch_model.bin can run code when it is loaded.

The layouts differ in three ways. HF's Conv1D keeps a linear layer's weight
as (in, out), llm.c as (out, in), so those four matrices are transposed. llm.c
pads the vocabulary of wte to a multiple of 128 rows (zeros, masked out of the
softmax); they are added on import and dropped on export. Both tie the output
layer to wte, so HF's lm_head.weight is wte itself.
"""
import argparse
import json
import os
import sys

import numpy as np

from . import _lib
from .files import os_error_message, write_atomic

# HF's names of each layer's tensors, in llm.c's order, and whether HF keeps
# it transposed (Conv1D). wte, wpe come before them and ln_f after.
LAYER_TENSORS = [("ln_1.weight", False), ("ln_1.bias", False),
                 ("attn.c_attn.weight", True), ("attn.c_attn.bias", False),
                 ("attn.c_proj.weight", True), ("attn.c_proj.bias", False),
                 ("ln_2.weight", False), ("ln_2.bias", False),
                 ("mlp.c_fc.weight", True), ("mlp.c_fc.bias", False),
                 ("mlp.c_proj.weight", True), ("mlp.c_proj.bias", False)]
# HF activations that are llm.c's GELU (the tanh approximation)
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh")


class HfError(ValueError):
    """A Hugging Face folder that cannot be converted, told in one line."""


def safetensors_numpy():
    try:
        import safetensors.numpy
    except ImportError:
        raise HfError("Hugging Face files need the safetensors package: pip install safetensors "
                      "(or pip install -e '.[hf]' in the llmc repository)") from None
    return safetensors.numpy


def read_hf_config(hf_dir):
    """llm.c's Config for a HF GPT-2 folder's config.json."""
    from .model import Config
    path = os.path.join(hf_dir, "config.json")
    try:
        with open(path) as f:
            hf = json.load(f)
    except FileNotFoundError:
        raise HfError(f"{path} does not exist: expected a Hugging Face GPT-2 folder "
                      "(config.json + model.safetensors)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise HfError(f"cannot read {path}: {e}") from None
    if hf.get("model_type") != "gpt2":
        raise HfError(f"{path}: model_type is {hf.get('model_type')!r}, only 'gpt2' converts")
    activation = hf.get("activation_function", "gelu_new")
    if activation not in TANH_GELU:
        raise HfError(f"{path}: activation_function {activation!r}; llm.c computes GELU's tanh "
                      f"approximation ({' or '.join(TANH_GELU)})")
    channels = hf["n_embd"]
    if hf.get("n_inner") not in (None, 4 * channels):
        raise HfError(f"{path}: n_inner {hf['n_inner']}; llm.c's MLP is 4 * n_embd = {4 * channels}")
    return Config(max_seq_len=hf["n_positions"], vocab_size=hf["vocab_size"],
                  num_layers=hf["n_layer"], num_heads=hf["n_head"], channels=channels)


def hf_to_llmc(tensors, config, padded_vocab_size):
    """llm.c's flat parameter vector from HF's tensors (a name -> array dict)."""
    # save_pretrained of GPT2LMHeadModel prefixes "transformer."; GPT2Model and
    # OpenAI's original upload do not
    tensors = {name.removeprefix("transformer."): t for name, t in tensors.items()}

    def get(name, transpose=False):
        if name not in tensors:
            raise HfError(f"model.safetensors has no tensor {name!r}")
        t = np.asarray(tensors[name], dtype=np.float32)
        return t.T if transpose else t

    wte = get("wte.weight")
    if "lm_head.weight" in tensors and not np.array_equal(get("lm_head.weight"), wte):
        raise HfError("lm_head.weight differs from wte.weight: llm.c ties the output layer to "
                      "the token embedding")
    padded_wte = np.zeros((padded_vocab_size, config.channels), dtype=np.float32)
    padded_wte[:config.vocab_size] = wte
    parts = [padded_wte, get("wpe.weight")]
    for name, transpose in LAYER_TENSORS:  # each llm.c tensor holds all layers
        parts += [get(f"h.{layer}.{name}", transpose) for layer in range(config.num_layers)]
    parts += [get("ln_f.weight"), get("ln_f.bias")]
    return np.concatenate([np.ascontiguousarray(p).reshape(-1) for p in parts])


def llmc_to_hf(params, config):
    """HF's tensors (a name -> array dict) from llm.c's flat parameter vector."""
    V, Vp, C, L = config.vocab_size, config.padded_vocab_size, config.channels, config.num_layers
    # each layer's tensors as llm.c shapes them
    layer_shapes = {"ln_1.weight": (C,), "ln_1.bias": (C,),
                    "attn.c_attn.weight": (3 * C, C), "attn.c_attn.bias": (3 * C,),
                    "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,),
                    "ln_2.weight": (C,), "ln_2.bias": (C,),
                    "mlp.c_fc.weight": (4 * C, C), "mlp.c_fc.bias": (4 * C,),
                    "mlp.c_proj.weight": (C, 4 * C), "mlp.c_proj.bias": (C,)}
    offset = 0

    def take(shape):
        nonlocal offset
        size = int(np.prod(shape))
        t = params[offset:offset + size].reshape(shape)
        offset += size
        return t

    tensors = {"transformer.wte.weight": take((Vp, C))[:V],  # padded rows dropped
               "transformer.wpe.weight": take((config.max_seq_len, C))}
    for name, transpose in LAYER_TENSORS:
        for layer in range(L):
            t = take(layer_shapes[name])
            tensors[f"transformer.h.{layer}.{name}"] = t.T if transpose else t
    tensors["transformer.ln_f.weight"] = take((C,))
    tensors["transformer.ln_f.bias"] = take((C,))
    assert offset == len(params)
    return {name: np.ascontiguousarray(t) for name, t in tensors.items()}


def import_hf(hf_dir, out_path):
    """Write HF_DIR's GPT-2 (config.json + model.safetensors) as an llm.c
    model file; returns its Config."""
    from .model import Model
    config = read_hf_config(hf_dir)
    weights = os.path.join(hf_dir, "model.safetensors")
    if not os.path.exists(weights):
        others = [n for n in ("pytorch_model.bin", "model.safetensors.index.json")
                  if os.path.exists(os.path.join(hf_dir, n))]
        raise HfError(f"{weights} does not exist" + (
            f" ({', '.join(others)} is there: only a single model.safetensors is read; a "
            "pickled checkpoint can run code when loaded)" if others else ""))
    tensors = safetensors_numpy().load_file(weights)
    with Model.from_config(config, max_batch_size=1, max_seq_len=1) as model:
        model.set_parameters(hf_to_llmc(tensors, config, model.config.padded_vocab_size))
        model.save(out_path)
        return model.config


def export_hf(model_path, hf_dir):
    """Write an llm.c model file as HF_DIR/config.json + model.safetensors,
    which transformers.GPT2LMHeadModel.from_pretrained loads; returns its Config."""
    from .model import Model
    with Model.load(model_path, max_batch_size=1, max_seq_len=1) as model:
        config, params = model.config, model.parameters()
    tensors = llmc_to_hf(params, config)
    hf_config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
                 "vocab_size": config.vocab_size, "n_positions": config.max_seq_len,
                 "n_embd": config.channels, "n_layer": config.num_layers,
                 "n_head": config.num_heads, "activation_function": "gelu_new",
                 "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True,
                 "bos_token_id": 50256, "eos_token_id": 50256}
    os.makedirs(hf_dir, exist_ok=True)
    # "format": "pt" tells transformers the tensors are laid out as PyTorch's
    data = safetensors_numpy().save(tensors, metadata={"format": "pt"})
    write_atomic(os.path.join(hf_dir, "model.safetensors"), [data])
    write_atomic(os.path.join(hf_dir, "config.json"), [json.dumps(hf_config, indent=2).encode()])
    return config


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m pyllmc.hf",
                                description="Convert GPT-2 weights between Hugging Face "
                                            "(safetensors) and llm.c model files.")
    commands = p.add_subparsers(dest="command", required=True)
    i = commands.add_parser("import", help="HF folder -> llm.c model file")
    i.add_argument("hf_dir", help="folder with config.json and model.safetensors")
    i.add_argument("model", help="llm.c model file to write (fp32)")
    e = commands.add_parser("export", help="llm.c model file -> HF folder")
    e.add_argument("model", help="llm.c model file (fp32 or bf16)")
    e.add_argument("hf_dir", help="folder to write config.json and model.safetensors into")
    args = p.parse_args(argv)
    try:
        if args.command == "import":
            config = import_hf(args.hf_dir, args.model)
            print(f"{args.model}: {config.num_layers} layers, {config.channels} channels, "
                  f"vocabulary {config.vocab_size} (padded to {config.padded_vocab_size})")
        else:
            config = export_hf(args.model, args.hf_dir)
            print(f"{args.hf_dir}: config.json + model.safetensors, {config.num_layers} layers, "
                  f"{config.channels} channels, vocabulary {config.vocab_size}")
    except OSError as e:
        print(f"error: {os_error_message(e)}", file=sys.stderr)
        sys.exit(1)
    except (HfError, _lib.LlmcError, _lib.LibraryError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

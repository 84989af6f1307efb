"""
Hugging Face GPT-2 weights to llm.c model files and back.

    python -m pyllmc.hf import HF_DIR model.bin    # config.json + model.safetensors -> llm.c
    python -m pyllmc.hf export model.bin HF_DIR    # llm.c -> config.json + model.safetensors
                                                   #   + GPT-2's tokenizer files

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
import math
import os
import sys

import numpy as np

from . import _lib
from .files import open_regular, os_error_message, write_atomic
from .safetensors_file import SafetensorsError, SafetensorsFile, unique_keys

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


CONFIG_LIMIT = 1 << 20  # bytes; GPT-2's config.json is under 1 kB
# config fields with other values than these would change what the model
# computes, and llm.c computes only this: (name, llm.c's value; also HF's default)
FIXED_MATH = (("layer_norm_epsilon", 1e-5), ("scale_attn_weights", True),
              ("scale_attn_by_inverse_layer_idx", False), ("add_cross_attention", False))
# per-layer buffers older GPT-2 files carry (the causal mask), not weights
IGNORED_BUFFERS = ("attn.bias", "attn.masked_bias")


def read_hf_config(hf_dir):
    """(llm.c's Config, whether the output layer is tied to wte) for a HF
    GPT-2 folder's config.json, every field that matters checked (type,
    value, fields that would change the math)."""
    path = os.path.join(hf_dir, "config.json")
    try:
        with open_regular(path) as f:
            text = f.read(CONFIG_LIMIT + 1)
    except FileNotFoundError:
        raise HfError(f"{path} does not exist: expected a Hugging Face GPT-2 folder "
                      "(config.json + model.safetensors)") from None
    except OSError as e:
        raise HfError(f"cannot read {os_error_message(e)}") from None
    if len(text) > CONFIG_LIMIT:
        raise HfError(f"{path}: larger than {CONFIG_LIMIT} bytes, not a model's config.json")
    try:
        hf = json.loads(text.decode("utf-8"), object_pairs_hook=unique_keys)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise HfError(f"{path}: not JSON ({type(e).__name__}: {e})") from None
    return config_from_hf(hf, path)


def config_from_hf(hf, path):
    """read_hf_config for config.json's content hf (path names it in errors)."""
    from .model import Config
    if not isinstance(hf, dict):
        raise HfError(f"{path}: a JSON {type(hf).__name__}, expected an object")
    if hf.get("model_type") != "gpt2":
        raise HfError(f"{path}: model_type is {hf.get('model_type')!r}, only 'gpt2' converts")
    sizes = {}
    for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
        value = hf.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise HfError(f"{path}: {name} is {value!r}, expected a positive integer")
        sizes[name] = value
    activation = hf.get("activation_function", "gelu_new")
    if activation not in TANH_GELU:
        raise HfError(f"{path}: activation_function {activation!r}; llm.c computes GELU's tanh "
                      f"approximation ({' or '.join(TANH_GELU)})")
    channels = sizes["n_embd"]
    if hf.get("n_inner") not in (None, 4 * channels):
        raise HfError(f"{path}: n_inner {hf['n_inner']!r}; llm.c's MLP is 4 * n_embd = {4 * channels}")
    for name, value in FIXED_MATH:
        if name in hf and (hf[name] != value or type(hf[name]) is not type(value)):
            raise HfError(f"{path}: {name} is {hf[name]!r}; llm.c computes only {value!r}")
    tied = hf.get("tie_word_embeddings", True)
    if not isinstance(tied, bool):
        raise HfError(f"{path}: tie_word_embeddings is {tied!r}, expected true or false")
    return Config(max_seq_len=sizes["n_positions"], vocab_size=sizes["vocab_size"],
                  num_layers=sizes["n_layer"], num_heads=sizes["n_head"], channels=channels), tied


def hf_shapes(config):
    """Each tensor's exact shape as HF stores it (Conv1D weights as (in, out)),
    without the prefix "transformer.", in llm.c's order."""
    V, P, C, L = config.vocab_size, config.max_seq_len, config.channels, config.num_layers
    per_layer = {"ln_1.weight": (C,), "ln_1.bias": (C,),
                 "attn.c_attn.weight": (C, 3 * C), "attn.c_attn.bias": (3 * C,),
                 "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,),
                 "ln_2.weight": (C,), "ln_2.bias": (C,),
                 "mlp.c_fc.weight": (C, 4 * C), "mlp.c_fc.bias": (4 * C,),
                 "mlp.c_proj.weight": (4 * C, C), "mlp.c_proj.bias": (C,)}
    shapes = {"wte.weight": (V, C), "wpe.weight": (P, C)}
    for name, _ in LAYER_TENSORS:  # each llm.c tensor holds all layers
        shapes.update({f"h.{layer}.{name}": per_layer[name] for layer in range(L)})
    shapes.update({"ln_f.weight": (C,), "ln_f.bias": (C,)})
    return shapes


def tensor_names(names, config, where):
    """{short name: name in the file} for the tensors of a GPT-2 of config;
    HfError for a missing, unexpected or ambiguous one."""
    expected = hf_shapes(config)
    found = {}
    for name in names:
        # save_pretrained of GPT2LMHeadModel prefixes "transformer."; GPT2Model
        # and OpenAI's original upload do not
        short = name.removeprefix("transformer.")
        if short in found:
            raise HfError(f"{where}: both {found[short]!r} and {name!r}: which one is meant is "
                          "ambiguous")
        if short not in expected and short != "lm_head.weight" and not (
                short.startswith("h.") and short.split(".", 2)[-1] in IGNORED_BUFFERS):
            raise HfError(f"{where}: unexpected tensor {name!r} (not part of a GPT-2 of "
                          f"{config.num_layers} layers)")
        found[short] = name
    for short in expected:
        if short not in found:
            raise HfError(f"{where} has no tensor {short!r}")
    return found


def read_hf_tensors(weights, config, padded_vocab_size, tied=True):
    """llm.c's flat parameter vector from a GPT-2 model.safetensors: every
    tensor's name, dtype, exact shape and values checked."""
    with SafetensorsFile(weights) as st:
        names = tensor_names(st.entries, config, weights)

        def get(short, shape):
            name = names[short]
            if st.entries[name][1] != shape:
                raise HfError(f"{weights}: tensor {name!r} has shape {list(st.entries[name][1])}, "
                              f"expected {list(shape)} for this config.json")
            return st.read(name)

        shapes = hf_shapes(config)
        wte = get("wte.weight", shapes["wte.weight"])
        if "lm_head.weight" in names:
            if not np.array_equal(get("lm_head.weight", shapes["wte.weight"]), wte):
                raise HfError(f"{weights}: lm_head.weight differs from wte.weight: llm.c ties the "
                              "output layer to the token embedding")
        elif not tied:
            raise HfError(f"{weights}: no lm_head.weight, and config.json unties it "
                          "(tie_word_embeddings false)")
        params = np.zeros(padded_vocab_size * config.channels + sum(
            math.prod(s) for n, s in shapes.items() if n != "wte.weight"), dtype=np.float32)
        params[:wte.size] = wte.reshape(-1)  # padded rows stay zero
        offset = padded_vocab_size * config.channels
        transposed = {name for name, t in LAYER_TENSORS if t}
        for short, shape in shapes.items():
            if short == "wte.weight":
                continue
            t = get(short, shape)
            if short.split(".", 2)[-1] in transposed:
                t = t.T
            params[offset:offset + t.size] = t.reshape(-1)
            offset += t.size
        return params


def llmc_to_hf(params, config):
    """HF's tensors (a name -> array dict) from llm.c's flat parameter vector."""
    transposed = {name for name, t in LAYER_TENSORS if t}
    tensors, offset = {}, 0
    for short, shape in hf_shapes(config).items():
        flip = short.split(".", 2)[-1] in transposed
        rows = shape[0]
        if short == "wte.weight":  # llm.c's has padded rows, dropped below
            shape = (config.padded_vocab_size, config.channels)
        size = math.prod(shape)
        t = params[offset:offset + size].reshape(shape[::-1] if flip else shape)
        offset += size
        tensors["transformer." + short] = t.T if flip else t[:rows]
    assert offset == len(params)
    return {name: np.ascontiguousarray(t) for name, t in tensors.items()}


def import_hf(hf_dir, out_path, force=False):
    """Write HF_DIR's GPT-2 (config.json + model.safetensors) as an llm.c
    model file; returns its Config. An existing out_path is an error unless
    force."""
    from .model import Model
    if os.path.lexists(out_path) and not force:
        raise HfError(f"{os.fspath(out_path)} exists: pass --force to overwrite it")
    config, tied = read_hf_config(hf_dir)
    weights = os.path.join(hf_dir, "model.safetensors")
    if not os.path.exists(weights):
        others = [n for n in ("pytorch_model.bin", "model.safetensors.index.json")
                  if os.path.exists(os.path.join(hf_dir, n))]
        raise HfError(f"{weights} does not exist" + (
            f" ({', '.join(others)} is there: only a single model.safetensors is read; a "
            "pickled checkpoint can run code when loaded)" if others else ""))
    with Model.from_config(config, max_batch_size=1, max_seq_len=1) as model:
        try:
            params = read_hf_tensors(weights, config, model.config.padded_vocab_size, tied)
        except SafetensorsError as e:
            raise HfError(str(e)) from None
        model.set_parameters(params)
        model.save(out_path)
        return model.config


def export_hf(model_path, hf_dir, force=False):
    """Write an llm.c model file as HF_DIR/config.json + model.safetensors,
    which transformers.GPT2LMHeadModel.from_pretrained loads, with GPT-2's
    tokenizer files when the model has GPT-2's vocabulary; returns (its
    Config, the files written). A folder that already holds any of them is
    an error unless force."""
    from .model import Model
    from .tokenizer import VOCAB_SIZE, hf_tokenizer_files
    with Model.load(model_path, max_batch_size=1, max_seq_len=1) as model:
        config, params = model.config, model.parameters()
    tensors = llmc_to_hf(params, config)
    hf_config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
                 "vocab_size": config.vocab_size, "n_positions": config.max_seq_len,
                 "n_embd": config.channels, "n_layer": config.num_layers,
                 "n_head": config.num_heads, "activation_function": "gelu_new",
                 "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True,
                 "bos_token_id": 50256, "eos_token_id": 50256}
    # "format": "pt" tells transformers the tensors are laid out as PyTorch's
    files = {"model.safetensors": safetensors_numpy().save(tensors, metadata={"format": "pt"}),
             "config.json": json.dumps(hf_config, indent=2).encode()}
    if config.vocab_size == VOCAB_SIZE:  # llmc's tokenizer is GPT-2's
        files.update(hf_tokenizer_files(config.max_seq_len))
    there = [name for name in files if os.path.lexists(os.path.join(hf_dir, name))]
    if there and not force:
        raise HfError(f"{os.fspath(hf_dir)} already holds {', '.join(there)}: pass --force to "
                      "overwrite")
    os.makedirs(hf_dir, exist_ok=True)
    for name, data in files.items():
        write_atomic(os.path.join(hf_dir, name), [data])
    return config, list(files)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m pyllmc.hf",
                                description="Convert GPT-2 weights between Hugging Face "
                                            "(safetensors) and llm.c model files.")
    commands = p.add_subparsers(dest="command", required=True)
    i = commands.add_parser("import", help="HF folder -> llm.c model file")
    i.add_argument("hf_dir", help="folder with config.json and model.safetensors")
    i.add_argument("model", help="llm.c model file to write (fp32)")
    i.add_argument("--force", action="store_true", help="overwrite the model file if it exists")
    e = commands.add_parser("export", help="llm.c model file -> HF folder")
    e.add_argument("model", help="llm.c model file (fp32 or bf16)")
    e.add_argument("hf_dir", help="folder to write config.json, model.safetensors and (for "
                                  "GPT-2's vocabulary) the tokenizer files into")
    e.add_argument("--force", action="store_true",
                   help="overwrite those files where the folder already holds them")
    args = p.parse_args(argv)
    try:
        if args.command == "import":
            config = import_hf(args.hf_dir, args.model, args.force)
            print(f"{args.model}: {config.num_layers} layers, {config.channels} channels, "
                  f"vocabulary {config.vocab_size} (padded to {config.padded_vocab_size})")
        else:
            config, files = export_hf(args.model, args.hf_dir, args.force)
            print(f"{args.hf_dir}: {' + '.join(files)}; {config.num_layers} layers, "
                  f"{config.channels} channels, vocabulary {config.vocab_size}")
    except OSError as e:
        print(f"error: {os_error_message(e)}", file=sys.stderr)
        sys.exit(1)
    except (HfError, _lib.LlmcError, _lib.LibraryError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

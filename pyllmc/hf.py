"""
Hugging Face GPT-2 and Llama weights to llm.c model files and back.

    python -m pyllmc.hf import HF_DIR model.bin    # config.json + model.safetensors -> llm.c
    python -m pyllmc.hf export model.bin HF_DIR    # llm.c -> config.json + model.safetensors
                                                   #   + GPT-2's tokenizer files

HF_DIR is what `GPT2LMHeadModel.save_pretrained` (or `LlamaForCausalLM`'s)
writes and `from_pretrained` reads. Only safetensors files are read: they hold tensors and nothing else,
whereas the pickled pytorch_model.bin can run code when it is loaded.

The layouts differ in three ways. HF's Conv1D keeps a linear layer's weight
as (in, out), llm.c as (out, in), so those four matrices are transposed. llm.c
pads the vocabulary of wte to a multiple of 128 rows (zeros, masked out of the
softmax); they are added on import and dropped on export. Both tie the output
layer to wte, so HF's lm_head.weight is wte itself.

Llama (model_type "llama") goes to llm.c's llama3 file (magic 20240803):
q, k and v stacked into one qkv matrix, up and gate into one fc matrix, and
the rows of q and k reordered within each head from transformers' RoPE
pairing (channel i with i + hs/2) to Meta's and llm.c's (2i with 2i + 1);
the vocabulary is padded as GPT-2's; lm_head is kept unless
tie_word_embeddings. Its weights may be bf16 and split over the shards that
model.safetensors.index.json lists, as Llama models are published.
"""
import argparse
import contextlib
import json
import math
import os

import numpy as np

from . import _lib
from .files import open_regular, os_error_message, write_atomic
from .safetensors_file import SafetensorsError, SafetensorsFile, unique_keys
from .cli import one_line_errors

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
    GPT-2 or Llama folder's config.json, every field that matters checked
    (type, value, fields that would change the math)."""
    path = os.path.join(hf_dir, "config.json")
    return config_from_hf(read_json(path, "expected a Hugging Face GPT-2 or Llama folder "
                                          "(config.json + model.safetensors)"), path)


def read_json(path, missing):
    """The JSON in path (at most CONFIG_LIMIT bytes, each name once); missing
    says what was expected when the file does not exist."""
    try:
        with open_regular(path) as f:
            text = f.read(CONFIG_LIMIT + 1)
    except FileNotFoundError:
        raise HfError(f"{path} does not exist: {missing}") from None
    except OSError as e:
        raise HfError(f"cannot read {os_error_message(e)}") from None
    if len(text) > CONFIG_LIMIT:
        raise HfError(f"{path}: larger than {CONFIG_LIMIT} bytes, not a model's JSON file")
    try:
        return json.loads(text.decode("utf-8"), object_pairs_hook=unique_keys)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise HfError(f"{path}: not JSON ({type(e).__name__}: {e})") from None


def positive_ints(hf, path, names):
    """{name: value} of config fields that must be positive integers."""
    sizes = {}
    for name in names:
        value = hf.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise HfError(f"{path}: {name} is {value!r}, expected a positive integer")
        sizes[name] = value
    return sizes


def tie_flag(hf, path, default):
    tied = hf.get("tie_word_embeddings", default)
    if not isinstance(tied, bool):
        raise HfError(f"{path}: tie_word_embeddings is {tied!r}, expected true or false")
    return tied


def config_from_hf(hf, path):
    """read_hf_config for config.json's content hf (path names it in errors)."""
    from .model import Config
    if not isinstance(hf, dict):
        raise HfError(f"{path}: a JSON {type(hf).__name__}, expected an object")
    if hf.get("model_type") == "llama":
        return read_llama_config(hf, path), tie_flag(hf, path, False)
    if hf.get("model_type") != "gpt2":
        raise HfError(f"{path}: model_type is {hf.get('model_type')!r}, only 'gpt2' and 'llama' "
                      "convert")
    sizes = positive_ints(hf, path, ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"))
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
    tied = tie_flag(hf, path, True)
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
    """Write HF_DIR's GPT-2 or Llama (config.json + model.safetensors, or a
    Llama's shards) as an llm.c model file; returns its Config. An existing
    out_path is an error unless force."""
    from .model import Model
    if os.path.lexists(out_path) and not force:
        raise HfError(f"{os.fspath(out_path)} exists: pass --force to overwrite it")
    config, tied = read_hf_config(hf_dir)
    if config.is_llama:
        with Model.from_config(config, max_batch_size=1, max_seq_len=1) as model:
            try:
                model.set_parameters(read_llama_tensors(hf_dir, model.config))
            except SafetensorsError as e:
                raise HfError(str(e)) from None
            model.save(out_path)
            return model.config
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
    which transformers.GPT2LMHeadModel.from_pretrained (LlamaForCausalLM's
    for a Llama) loads, with GPT-2's
    tokenizer files when the model has GPT-2's vocabulary; returns (its
    Config, the files written). A folder that already holds any of them is
    an error unless force."""
    from .model import Model
    from .tokenizer import VOCAB_SIZE, hf_tokenizer_files
    with Model.load(model_path, max_batch_size=1, max_seq_len=1) as model:
        config, params = model.config, model.parameters()
    if config.is_llama:
        tensors, hf_config = llmc_to_llama_hf(params, config), llama_hf_config(config)
    else:
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


# ---------------------------------------------------------------------------
# Llama

def read_llama_config(hf, path):
    """llmc's Config for a LlamaForCausalLM config.json's content hf (a dict;
    path names it in errors), every field that matters checked."""
    from .model import Config
    sizes = positive_ints(hf, path, ("hidden_size", "num_attention_heads", "max_position_embeddings",
                                     "vocab_size", "num_hidden_layers", "intermediate_size"))
    C, heads = sizes["hidden_size"], sizes["num_attention_heads"]
    kv_heads = positive_ints(hf, path, ("num_key_value_heads",))["num_key_value_heads"] \
        if hf.get("num_key_value_heads") is not None else heads
    if hf.get("hidden_act", "silu") != "silu":
        raise HfError(f"{path}: hidden_act {hf['hidden_act']!r}; llmc's SwiGLU uses silu")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise HfError(f"{path}: attention_bias/mlp_bias set; llmc's Llama has no biases")
    if hf.get("head_dim") not in (None, C // heads):
        raise HfError(f"{path}: head_dim {hf['head_dim']!r}; llmc's is hidden_size / "
                      f"num_attention_heads = {C // heads}")
    # transformers 5 writes rope_parameters (theta inside); older ones rope_theta + rope_scaling
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        raise HfError(f"{path}: rope_parameters/rope_scaling is {rope!r}, expected an object")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    numbers = {"rope_theta": rope.get("rope_theta", hf.get("rope_theta", 10000.0)),
               "rms_norm_eps": hf.get("rms_norm_eps", 1e-6)}
    scaling = {}
    if rope_type == "llama3":
        fields = {"factor": "rope_scaling_factor", "low_freq_factor": "rope_low_freq_factor",
                  "high_freq_factor": "rope_high_freq_factor",
                  "original_max_position_embeddings": "rope_original_max_seq_len"}
        for name in fields:
            numbers[name] = rope.get(name)
        scaling = {ours: numbers[name] for name, ours in fields.items()}
    elif rope_type != "default":
        raise HfError(f"{path}: rope type {rope_type!r}; llmc computes RoPE plain or with "
                      "Llama 3.1's 'llama3' scaling")
    for name, value in numbers.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0 \
                or not math.isfinite(value):
            raise HfError(f"{path}: {name} is {value!r}, expected a positive number")
    return Config(family=_lib.FAMILIES["llama"], max_seq_len=sizes["max_position_embeddings"],
                  vocab_size=sizes["vocab_size"], num_layers=sizes["num_hidden_layers"],
                  num_heads=heads, channels=C, num_kv_heads=kv_heads,
                  ffn_hidden=sizes["intermediate_size"],
                  untied_head=0 if tie_flag(hf, path, False) else 1,
                  rope_theta=numbers["rope_theta"], norm_eps=numbers["rms_norm_eps"], **scaling)


def rope_to_meta(w, heads):
    """Rows of a q or k projection (heads * hs, C) from transformers' RoPE
    pairing (i, i + hs/2) to Meta's (2i, 2i + 1), head by head."""
    hs = w.shape[0] // heads
    return w.reshape(heads, 2, hs // 2, -1).transpose(0, 2, 1, 3).reshape(w.shape)


def rope_to_hf(w, heads):
    """The inverse of rope_to_meta."""
    hs = w.shape[0] // heads
    return w.reshape(heads, hs // 2, 2, -1).transpose(0, 2, 1, 3).reshape(w.shape)


def llama_shapes(config):
    """(name, shape) of each tensor of llmc's Llama vector, in order."""
    C, L, F, Vp = config.channels, config.num_layers, config.ffn_hidden, config.padded_vocab_size
    hs = C // config.num_heads
    qkv = (config.num_heads + 2 * config.num_kv_heads) * hs
    shapes = [("wte", (Vp, C))] + ([("lm_head", (Vp, C))] if config.untied_head else [])
    return shapes + [("ln1w", (L, C)), ("qkvw", (L, qkv, C)), ("attprojw", (L, C, C)),
                     ("ln2w", (L, C)), ("fcw", (L, 2 * F, C)), ("fcprojw", (L, C, F)),
                     ("lnfw", (C,))]


def llama_hf_names(config):
    """{name without "model.": shape} of every tensor of a LlamaForCausalLM
    of config, lm_head.weight included."""
    V, C, L = config.vocab_size, config.channels, config.num_layers
    H, KV, F = config.num_heads, config.num_kv_heads, config.ffn_hidden
    hs = C // H
    shapes = {"embed_tokens.weight": (V, C), "lm_head.weight": (V, C), "norm.weight": (C,)}
    per_layer = {"input_layernorm.weight": (C,), "self_attn.q_proj.weight": (H * hs, C),
                 "self_attn.k_proj.weight": (KV * hs, C), "self_attn.v_proj.weight": (KV * hs, C),
                 "self_attn.o_proj.weight": (C, C), "post_attention_layernorm.weight": (C,),
                 "mlp.up_proj.weight": (F, C), "mlp.gate_proj.weight": (F, C),
                 "mlp.down_proj.weight": (C, F)}
    for i in range(L):
        shapes.update({f"layers.{i}.{name}": shape for name, shape in per_layer.items()})
    return shapes


# per-layer buffers older Llama checkpoints carry (RoPE's frequencies), not weights
LLAMA_IGNORED_BUFFERS = ("self_attn.rotary_emb.inv_freq",)


def llama_weight_files(hf_dir):
    """The safetensors files of a Llama folder: model.safetensors, or the
    shards that model.safetensors.index.json lists (file names in hf_dir)."""
    single = os.path.join(hf_dir, "model.safetensors")
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.lexists(single):
        return [single]
    if not os.path.lexists(index):
        others = " (pytorch_model.bin is there: a pickled checkpoint can run code when " \
                 "loaded and is never read)" if os.path.lexists(
                     os.path.join(hf_dir, "pytorch_model.bin")) else ""
        raise HfError(f"{hf_dir}: neither model.safetensors nor model.safetensors.index.json"
                      + others)
    index_json = read_json(index, "")
    weight_map = index_json.get("weight_map") if isinstance(index_json, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not all(
            isinstance(f, str) for f in weight_map.values()):
        raise HfError(f"{index}: no weight_map of tensor names to shard file names")
    files = sorted(set(weight_map.values()))
    for name in files:
        if os.path.basename(name) != name or name in ("", ".", ".."):
            raise HfError(f"{index}: shard {name!r} is not a file name in {hf_dir}")
    return [os.path.join(hf_dir, name) for name in files]


def read_llama_tensors(hf_dir, config):
    """llmc's flat Llama vector from a LlamaForCausalLM folder's safetensors
    (config: the model's, padded_vocab_size filled in): every tensor's name,
    exact shape and values checked, each file read through SafetensorsFile."""
    expected = llama_hf_names(config)
    with contextlib.ExitStack() as stack:
        where = {}  # short name -> (open file, name in it)
        for path in llama_weight_files(hf_dir):
            st = stack.enter_context(SafetensorsFile(path))
            for name in st.entries:
                short = name.removeprefix("model.")  # a bare LlamaModel's names have no prefix
                if short in where:
                    raise HfError(f"{path}: tensor {name!r} is also in {where[short][0].path}: "
                                  "which one is meant is ambiguous")
                if short not in expected and not (
                        short.startswith("layers.") and short.split(".", 2)[-1]
                        in LLAMA_IGNORED_BUFFERS):
                    raise HfError(f"{path}: unexpected tensor {name!r} (not part of a Llama of "
                                  f"{config.num_layers} layers)")
                where[short] = (st, name)

        tensors = {}
        for short, (st, name) in where.items():
            if short in expected and st.entries[name][1] != expected[short]:
                raise HfError(f"{st.path}: tensor {name!r} has shape {list(st.entries[name][1])}, "
                              f"expected {list(expected[short])} for this config.json")
            if short in expected:
                tensors[short] = st.read(name)
        return llama_hf_to_llmc(tensors, config, hf_dir)


def llama_hf_to_llmc(tensors, config, where="the weights"):
    """llmc's flat Llama vector from LlamaForCausalLM's tensors (name ->
    array, names with or without "model."); config is the model's
    (padded_vocab_size filled in). A tied model's lm_head, when given, must be
    the embedding itself; where names the source in errors."""
    V, Vp, C, L = config.vocab_size, config.padded_vocab_size, config.channels, config.num_layers
    H, KV = config.num_heads, config.num_kv_heads
    tensors = {name.removeprefix("model."): t for name, t in tensors.items()}
    shapes = llama_hf_names(config)

    def get(name):
        if name not in tensors:
            raise HfError(f"{where}: no tensor {name!r} (nor 'model.{name}')")
        t = np.asarray(tensors[name], dtype=np.float32)
        if t.shape != shapes[name]:
            raise HfError(f"{where}: {name} has shape {list(t.shape)}, expected "
                          f"{list(shapes[name])} for this config")
        return t

    def padded(t):
        out = np.zeros((Vp, C), dtype=np.float32)
        out[:V] = t
        return out

    wte = get("embed_tokens.weight")
    parts = {"wte": padded(wte)}
    if config.untied_head:
        parts["lm_head"] = padded(get("lm_head.weight"))
    elif "lm_head.weight" in tensors and not np.array_equal(get("lm_head.weight"), wte):
        raise HfError(f"{where}: lm_head.weight differs from embed_tokens.weight, but the "
                      "config ties them (tie_word_embeddings true)")
    layer = [f"layers.{i}." for i in range(L)]
    parts["ln1w"] = [get(p + "input_layernorm.weight") for p in layer]
    parts["qkvw"] = [np.concatenate([rope_to_meta(get(p + "self_attn.q_proj.weight"), H),
                                     rope_to_meta(get(p + "self_attn.k_proj.weight"), KV),
                                     get(p + "self_attn.v_proj.weight")]) for p in layer]
    parts["attprojw"] = [get(p + "self_attn.o_proj.weight") for p in layer]
    parts["ln2w"] = [get(p + "post_attention_layernorm.weight") for p in layer]
    parts["fcw"] = [np.concatenate([get(p + "mlp.up_proj.weight"), get(p + "mlp.gate_proj.weight")])
                    for p in layer]
    parts["fcprojw"] = [get(p + "mlp.down_proj.weight") for p in layer]
    parts["lnfw"] = get("norm.weight")
    return np.concatenate([np.ascontiguousarray(parts[name], dtype=np.float32).reshape(-1)
                           for name, _ in llama_shapes(config)])


def llmc_to_llama_hf(params, config):
    """LlamaForCausalLM's tensors (name -> array) from llmc's flat Llama vector."""
    V, C, L = config.vocab_size, config.channels, config.num_layers
    H, KV = config.num_heads, config.num_kv_heads
    hs = C // H
    parts, offset = {}, 0
    for name, shape in llama_shapes(config):
        size = int(np.prod(shape))
        parts[name] = params[offset:offset + size].reshape(shape)
        offset += size
    assert offset == len(params)
    tensors = {"model.embed_tokens.weight": parts["wte"][:V], "model.norm.weight": parts["lnfw"]}
    if config.untied_head:
        tensors["lm_head.weight"] = parts["lm_head"][:V]
    for i in range(L):
        p = f"model.layers.{i}."
        q, k, v = np.split(parts["qkvw"][i], [H * hs, (H + KV) * hs])
        up, gate = np.split(parts["fcw"][i], 2)
        tensors.update({p + "input_layernorm.weight": parts["ln1w"][i],
                        p + "self_attn.q_proj.weight": rope_to_hf(q, H),
                        p + "self_attn.k_proj.weight": rope_to_hf(k, KV),
                        p + "self_attn.v_proj.weight": v,
                        p + "self_attn.o_proj.weight": parts["attprojw"][i],
                        p + "post_attention_layernorm.weight": parts["ln2w"][i],
                        p + "mlp.up_proj.weight": up, p + "mlp.gate_proj.weight": gate,
                        p + "mlp.down_proj.weight": parts["fcprojw"][i]})
    return {name: np.ascontiguousarray(t) for name, t in tensors.items()}


def llama_hf_config(config):
    """LlamaForCausalLM's config.json (a dict) for an llmc Llama config."""
    rope = {"rope_type": "default", "rope_theta": config.rope_theta}
    if config.rope_scaling_factor:
        rope.update(rope_type="llama3", factor=config.rope_scaling_factor,
                    low_freq_factor=config.rope_low_freq_factor,
                    high_freq_factor=config.rope_high_freq_factor,
                    original_max_position_embeddings=config.rope_original_max_seq_len)
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": config.vocab_size, "hidden_size": config.channels,
            "intermediate_size": config.ffn_hidden, "num_hidden_layers": config.num_layers,
            "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
            "head_dim": config.channels // config.num_heads, "hidden_act": "silu",
            "max_position_embeddings": config.max_seq_len, "rms_norm_eps": config.norm_eps,
            "rope_theta": config.rope_theta, "rope_parameters": rope,
            "rope_scaling": rope if config.rope_scaling_factor else None,
            "tie_word_embeddings": not config.untied_head, "attention_bias": False,
            "mlp_bias": False, "torch_dtype": "float32"}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m pyllmc.hf",
                                description="Convert GPT-2 or Llama weights between Hugging Face "
                                            "(safetensors) and llm.c model files.")
    commands = p.add_subparsers(dest="command", required=True)
    i = commands.add_parser("import", help="HF folder -> llm.c model file")
    i.add_argument("hf_dir", help="folder with config.json and model.safetensors (a Llama's "
                                  "may be sharded: model.safetensors.index.json)")
    i.add_argument("model", help="llm.c model file to write (fp32)")
    i.add_argument("--force", action="store_true", help="overwrite the model file if it exists")
    e = commands.add_parser("export", help="llm.c model file -> HF folder")
    e.add_argument("model", help="llm.c model file (fp32 or bf16)")
    e.add_argument("hf_dir", help="folder to write config.json, model.safetensors and (for "
                                  "GPT-2's vocabulary) the tokenizer files into")
    e.add_argument("--force", action="store_true",
                   help="overwrite those files where the folder already holds them")
    args = p.parse_args(argv)
    with one_line_errors(HfError, _lib.LlmcError, _lib.LibraryError):
        if args.command == "import":
            config = import_hf(args.hf_dir, args.model, args.force)
            print(f"{args.model}: {config.num_layers} layers, {config.channels} channels, "
                  f"vocabulary {config.vocab_size} (padded to {config.padded_vocab_size})")
        else:
            config, files = export_hf(args.model, args.hf_dir, args.force)
            print(f"{args.hf_dir}: {' + '.join(files)}; {config.num_layers} layers, "
                  f"{config.channels} channels, vocabulary {config.vocab_size}")


if __name__ == "__main__":
    main()

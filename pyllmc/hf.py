"""
Hugging Face GPT-2 and Llama weights to llm.c model files and back.

    python -m pyllmc.hf import HF_DIR model.bin    # config.json + model.safetensors -> llm.c
    python -m pyllmc.hf export model.bin HF_DIR    # llm.c -> config.json + model.safetensors

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
tie_word_embeddings.
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
        raise HfError(f"{path}: model_type is {hf.get('model_type')!r}, only 'gpt2' and 'llama' "
                      "convert")
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
    hf_config = read_config_json(hf_dir)
    llama = hf_config.get("model_type") == "llama"
    config = read_llama_config(hf_config, hf_dir) if llama else read_hf_config(hf_dir)
    if llama:  # bf16 and sharded checkpoints, as Llama models are published
        tensors = read_llama_weights(hf_dir)
    else:
        weights = os.path.join(hf_dir, "model.safetensors")
        if not os.path.exists(weights):
            others = [n for n in ("pytorch_model.bin", "model.safetensors.index.json")
                      if os.path.exists(os.path.join(hf_dir, n))]
            raise HfError(f"{weights} does not exist" + (
                f" ({', '.join(others)} is there: only a single model.safetensors is read; a "
                "pickled checkpoint can run code when loaded)" if others else ""))
        tensors = safetensors_numpy().load_file(weights)
    with Model.from_config(config, max_batch_size=1, max_seq_len=1) as model:
        model.set_parameters(llama_hf_to_llmc(tensors, model.config) if llama else
                             hf_to_llmc(tensors, config, model.config.padded_vocab_size))
        model.save(out_path)
        return model.config


def export_hf(model_path, hf_dir):
    """Write an llm.c model file as HF_DIR/config.json + model.safetensors,
    which transformers.GPT2LMHeadModel.from_pretrained loads; returns its Config."""
    from .model import Model
    with Model.load(model_path, max_batch_size=1, max_seq_len=1) as model:
        config, params = model.config, model.parameters()
    if config.is_llama:
        return write_hf_folder(hf_dir, llmc_to_llama_hf(params, config), llama_hf_config(config),
                               config)
    tensors = llmc_to_hf(params, config)
    hf_config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
                 "vocab_size": config.vocab_size, "n_positions": config.max_seq_len,
                 "n_embd": config.channels, "n_layer": config.num_layers,
                 "n_head": config.num_heads, "activation_function": "gelu_new",
                 "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True,
                 "bos_token_id": 50256, "eos_token_id": 50256}
    return write_hf_folder(hf_dir, tensors, hf_config, config)


def write_hf_folder(hf_dir, tensors, hf_config, config):
    """HF_DIR/model.safetensors and config.json; returns config."""
    os.makedirs(hf_dir, exist_ok=True)
    # "format": "pt" tells transformers the tensors are laid out as PyTorch's
    data = safetensors_numpy().save(tensors, metadata={"format": "pt"})
    write_atomic(os.path.join(hf_dir, "model.safetensors"), [data])
    write_atomic(os.path.join(hf_dir, "config.json"), [json.dumps(hf_config, indent=2).encode()])
    return config


# ---------------------------------------------------------------------------
# Llama

def read_config_json(hf_dir):
    """HF_DIR/config.json as a dict (model_type decides the family)."""
    path = os.path.join(hf_dir, "config.json")
    try:
        with open(path) as f:
            hf = json.load(f)
    except FileNotFoundError:
        raise HfError(f"{path} does not exist: expected a Hugging Face GPT-2 or Llama folder "
                      "(config.json + model.safetensors)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise HfError(f"cannot read {path}: {e}") from None
    if not isinstance(hf, dict):
        raise HfError(f"{path}: expected a JSON object")
    return hf


def read_llama_config(hf, hf_dir):
    """llmc's Config for a LlamaForCausalLM config.json (a dict)."""
    from .model import Config
    path = os.path.join(hf_dir, "config.json")

    def field(name, default=None):
        value = hf.get(name, default)
        if value is None:
            raise HfError(f"{path}: no {name!r}")
        return value

    C, heads = field("hidden_size"), field("num_attention_heads")
    if hf.get("hidden_act", "silu") != "silu":
        raise HfError(f"{path}: hidden_act {hf['hidden_act']!r}; llmc's SwiGLU uses silu")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise HfError(f"{path}: attention_bias/mlp_bias set; llmc's Llama has no biases")
    if hf.get("head_dim") not in (None, C // heads):
        raise HfError(f"{path}: head_dim {hf['head_dim']}; llmc's is hidden_size / "
                      f"num_attention_heads = {C // heads}")
    # transformers 5 writes rope_parameters (theta inside); older ones rope_theta + rope_scaling
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    scaling = {}
    if rope_type == "llama3":
        scaling = dict(rope_scaling_factor=rope["factor"],
                       rope_low_freq_factor=rope["low_freq_factor"],
                       rope_high_freq_factor=rope["high_freq_factor"],
                       rope_original_max_seq_len=rope["original_max_position_embeddings"])
    elif rope_type != "default":
        raise HfError(f"{path}: rope type {rope_type!r}; llmc computes RoPE plain or with "
                      "Llama 3.1's 'llama3' scaling")
    return Config(family=_lib.FAMILIES["llama"], max_seq_len=field("max_position_embeddings"),
                  vocab_size=field("vocab_size"), num_layers=field("num_hidden_layers"),
                  num_heads=heads, channels=C,
                  num_kv_heads=hf.get("num_key_value_heads") or heads,
                  ffn_hidden=field("intermediate_size"),
                  untied_head=0 if hf.get("tie_word_embeddings", False) else 1,
                  rope_theta=theta, norm_eps=hf.get("rms_norm_eps", 1e-6), **scaling)


# safetensors dtypes Llama checkpoints come in, read as float32 (bf16 widened exactly)
SAFETENSORS_DTYPES = {"F32": np.dtype("<f4"), "BF16": np.dtype("<u2"), "F16": np.dtype("<f2")}


def read_safetensors(path):
    """name -> float32 array of a .safetensors file of F32, BF16 or F16
    tensors. The format is an 8-byte length, a JSON header and raw bytes,
    read here directly (numpy has no bfloat16, which the safetensors package's
    numpy API needs): nothing in the file is executed."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 2 <= n <= size - 8:
            raise HfError(f"{path}: not a safetensors file (header length {n}, file {size} bytes)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise HfError(f"{path}: damaged safetensors header ({e})") from None
    data = (np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n) if size > 8 + n
            else np.zeros(0, np.uint8))
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = SAFETENSORS_DTYPES[info["dtype"]]
            shape = [int(d) for d in info["shape"]]
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError, AttributeError):
            raise HfError(f"{path}: tensor {name!r}: {info!r} is not an F32, BF16 or F16 tensor's "
                          "entry") from None
        count = int(np.prod(shape, dtype=np.int64))
        if min(shape, default=0) < 0 or not 0 <= begin <= end <= len(data) or \
                end - begin != count * dtype.itemsize:
            raise HfError(f"{path}: tensor {name!r} of shape {shape} ({info['dtype']}) does not fit "
                          f"its bytes {begin}..{end} of {len(data)}")
        raw = data[begin:end].view(dtype)
        if info["dtype"] == "BF16":
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = raw.astype(np.float32).reshape(shape)
    return tensors


def read_llama_weights(hf_dir):
    """All tensors of HF_DIR's model.safetensors, or of the shards listed in
    model.safetensors.index.json (how larger models are published)."""
    single = os.path.join(hf_dir, "model.safetensors")
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.exists(single):
        return read_safetensors(single)
    if not os.path.exists(index):
        raise HfError(f"{hf_dir}: neither model.safetensors nor model.safetensors.index.json "
                      "(a pickled pytorch_model.bin is never read: it can run code when loaded)")
    try:
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        files = sorted(set(weight_map.values()))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise HfError(f"{index}: not a safetensors index ({e})") from None
    tensors = {}
    for name in files:
        if os.path.basename(name) != name:
            raise HfError(f"{index}: shard {name!r} is not a file name in {hf_dir}")
        tensors.update(read_safetensors(os.path.join(hf_dir, name)))
    return tensors


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


def llama_hf_to_llmc(tensors, config):
    """llmc's flat Llama vector from LlamaForCausalLM's tensors (name -> array).
    config is the model's (padded_vocab_size and defaults filled in)."""
    V, Vp, C, L = config.vocab_size, config.padded_vocab_size, config.channels, config.num_layers
    H, KV, F = config.num_heads, config.num_kv_heads, config.ffn_hidden
    hs = C // H
    # a bare LlamaModel's names have no "model." prefix
    tensors = {name.removeprefix("model."): t for name, t in tensors.items()}

    def get(name, shape):
        if name not in tensors:
            raise HfError(f"model.safetensors has no tensor {name!r}")
        t = np.asarray(tensors[name], dtype=np.float32)
        if t.shape != shape:
            raise HfError(f"model.safetensors: {name} has shape {t.shape}, the config gives {shape}")
        return t

    def padded(t):
        out = np.zeros((Vp, C), dtype=np.float32)
        out[:V] = t
        return out

    parts = {"wte": padded(get("embed_tokens.weight", (V, C)))}
    if config.untied_head:
        parts["lm_head"] = padded(get("lm_head.weight", (V, C)))
    layer = [f"layers.{i}." for i in range(L)]
    parts["ln1w"] = [get(p + "input_layernorm.weight", (C,)) for p in layer]
    parts["qkvw"] = [np.concatenate([rope_to_meta(get(p + "self_attn.q_proj.weight", (H * hs, C)), H),
                                     rope_to_meta(get(p + "self_attn.k_proj.weight", (KV * hs, C)), KV),
                                     get(p + "self_attn.v_proj.weight", (KV * hs, C))])
                     for p in layer]
    parts["attprojw"] = [get(p + "self_attn.o_proj.weight", (C, C)) for p in layer]
    parts["ln2w"] = [get(p + "post_attention_layernorm.weight", (C,)) for p in layer]
    parts["fcw"] = [np.concatenate([get(p + "mlp.up_proj.weight", (F, C)),
                                    get(p + "mlp.gate_proj.weight", (F, C))]) for p in layer]
    parts["fcprojw"] = [get(p + "mlp.down_proj.weight", (C, F)) for p in layer]
    parts["lnfw"] = get("norm.weight", (C,))
    return np.concatenate([np.ascontiguousarray(parts[name], dtype=np.float32).reshape(-1)
                           for name, _ in llama_shapes(config)])


def llmc_to_llama_hf(params, config):
    """LlamaForCausalLM's tensors (name -> array) from llmc's flat Llama vector."""
    V, C, L = config.vocab_size, config.channels, config.num_layers
    H, KV, F = config.num_heads, config.num_kv_heads, config.ffn_hidden
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

"""The Llama family on the CPU backend against transformers' LlamaForCausalLM
(the reference), fp32, from the same weights and batches: logits, losses,
every parameter's gradient, AdamW training; llm.c llama3 model files,
checkpoints and resume; the presets; Hugging Face import and export."""
import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.nn import functional as F

transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from pyllmc import Config, Model, UnsupportedError, hf  # noqa: E402
from torch_reference import rel_err, torch_on_one_thread  # noqa: E402,F401 (autouse fixture)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name: (HF config fields, B, T). Odd sizes throughout; the vocabulary is
# padded by llmc; query heads per key/value head 1, 2 and 4; tied and
# untied; Llama 3.1's RoPE scaling with an original length short enough that
# the low, middle (interpolated) and high frequency bands all occur.
SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
           "original_max_position_embeddings": 24}
CASES = {
    "mha_untied": (dict(vocab_size=301, hidden_size=48, intermediate_size=72, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False,
                        rope_theta=10000.0), 3, 19),
    "gqa2_tied_scaled": (dict(vocab_size=257, hidden_size=60, intermediate_size=100,
                              num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=3,
                              tie_word_embeddings=True, rope_theta=500000.0,
                              rope_scaling=SCALING), 2, 37),
    "gqa4_untied_scaled": (dict(vocab_size=333, hidden_size=64, intermediate_size=88,
                                num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=2,
                                tie_word_embeddings=False, rope_theta=500000.0,
                                rope_scaling=SCALING), 2, 70),
    "gqa4_tied": (dict(vocab_size=199, hidden_size=32, intermediate_size=56, num_hidden_layers=1,
                       num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True,
                       rope_theta=10000.0), 3, 23),
}


def hf_model(fields, seed=0):
    """A random LlamaForCausalLM; the RMSNorm weights moved off 1 so that a
    mix-up between them shows."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(max_position_embeddings=80, rms_norm_eps=1e-5,
                                      attn_implementation="eager", **fields)
    ref = transformers.LlamaForCausalLM(config).float()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.2)
            else:
                p.normal_(0.0, 0.08)  # larger than the init: attention picks positions out
    return ref


def make_pair(case, seed=0):
    """transformers' model and the same weights in libllmc (Model, B, T)."""
    fields, B, T = CASES[case]
    ref = hf_model(fields, seed)
    config = hf.read_llama_config(ref.config.to_dict(), "test")
    model = Model.from_config(config, max_batch_size=B + 1, max_seq_len=T + 3)
    state = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    model.set_parameters(hf.llama_hf_to_llmc(state, model.config))
    return ref, model, B, T


def make_batch(rng, V, B, T, micro_steps=None, ignored=4):
    shape = (B, T) if micro_steps is None else (micro_steps, B, T)
    x = rng.integers(0, V, shape)
    y = (5 * x + 2) % V
    y.reshape(-1, T)[0, :ignored] = -1
    return x, y


def ref_loss(ref, x, y, reduction="mean"):
    logits = ref(torch.from_numpy(x)).logits
    V = logits.shape[-1]
    return logits, F.cross_entropy(logits.reshape(-1, V), torch.from_numpy(y).reshape(-1),
                                   ignore_index=-1, reduction=reduction)


def test_rope_permutation_round_trips():
    w = np.arange(6 * 8 * 3, dtype=np.float32).reshape(48, 3)
    assert np.array_equal(hf.rope_to_hf(hf.rope_to_meta(w, 6), 6), w)
    # head 0's first row pair in Meta's order: HF rows 0 and hs/2 = 4
    assert np.array_equal(hf.rope_to_meta(w, 6)[:2], w[[0, 4]])


@pytest.mark.parametrize("case", CASES)
def test_logits_losses_and_every_gradient_match_transformers(case):
    ref, model, B, T = make_pair(case)
    x, y = make_batch(np.random.default_rng(1), model.config.vocab_size, B, T)
    logits = model.logits(x)
    ref_logits, loss_ref = ref_loss(ref, x, y)
    assert rel_err(logits, ref_logits.detach().numpy()) < 1e-5
    assert rel_err(model.logits(x, last_only=True), logits[:, -1]) < 1e-6
    loss, per_token = model.eval(x, y, per_token=True)
    assert abs(loss - loss_ref.item()) < 1e-5
    _, ref_per_token = ref_loss(ref, x, y, reduction="none")
    assert np.abs(per_token.ravel() - ref_per_token.detach().numpy()).max() < 1e-5

    assert abs(model.backward(x, y) - loss_ref.item()) < 1e-5
    loss_ref.backward()
    grads = model.gradients()
    ref_grads = hf.llama_hf_to_llmc({k: p.grad.numpy() for k, p in ref.named_parameters()},
                                    model.config)
    offset = 0
    for name, shape in hf.llama_shapes(model.config):
        end = offset + int(np.prod(shape))
        assert rel_err(grads[offset:end], ref_grads[offset:end]) < 1e-5, name
        offset = end
    # the padded vocabulary rows never see a gradient
    V, C = model.config.vocab_size, model.config.channels
    assert model.config.padded_vocab_size > V
    assert np.all(grads[V * C:model.config.padded_vocab_size * C] == 0)


@pytest.mark.parametrize("case", ["gqa2_tied_scaled", "gqa4_untied_scaled"])
def test_adamw_training_matches_torch(case):
    """10 steps with weight decay on the 2-D weights, clipping and 2
    micro-steps: the same losses and gradient norms as torch.optim.AdamW on
    transformers' model."""
    ref, model, B, T = make_pair(case, seed=1)
    rng = np.random.default_rng(5)
    batches = [make_batch(rng, model.config.vocab_size, B, T, micro_steps=2) for _ in range(10)]
    hp = dict(lr=3e-3, weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8)
    clip = {"gqa2_tied_scaled": 2.2, "gqa4_untied_scaled": 1.8}[case]  # bites in some steps
    results = [model.step(x, y, grad_clip=clip, **hp) for x, y in batches]

    params = list(ref.parameters())
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2],
                              "weight_decay": hp["weight_decay"]},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                            lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"])
    ref_losses, ref_norms = [], []
    for x, y in batches:
        counted, total = int((y != -1).sum()), 0.0
        for xm, ym in zip(x, y):
            _, loss = ref_loss(ref, xm, ym, reduction="sum")
            (loss / counted).backward()
            total += loss.item() / counted
        ref_norms.append(torch.nn.utils.clip_grad_norm_(params, clip).item())
        opt.step()
        opt.zero_grad(set_to_none=True)
        ref_losses.append(total)
    losses, norms = zip(*results)
    assert np.abs(np.array(losses) - ref_losses).max() < 1e-5
    assert np.allclose(norms, ref_norms, rtol=1e-4)
    assert min(norms) < clip < max(norms)
    assert losses[-1] < losses[0] - 0.2  # the model learned
    state = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    final = hf.llama_hf_to_llmc(state, model.config)
    assert np.linalg.norm(model.parameters() - final) / np.linalg.norm(final) < 1e-4


def write_llmc_llama3_file(path, ref, dtype=np.float32):
    """A model file as llm.c's train_llama3.py write_model lays it out (read
    from its source): 256 ints, 256 floats, the 16 tensors with zero biases,
    the output layer in wpe's place, up (c_fc) then gate (c_fc2), Meta's q/k
    row order, no vocabulary padding, none of llmc's extra header fields."""
    c = ref.config
    C, L, H, KV = c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads
    ints, floats = np.zeros(256, np.int32), np.zeros(256, np.float32)
    # multiple_of and ffn_dim_multiplier that llm.c's sizing turns into F
    ints[:12] = [20240803, 3, c.max_position_embeddings, c.vocab_size, L, H, KV, C,
                 c.intermediate_size, 0, 3, 1]
    base = 2 * 4 * C // 3
    floats[:3] = [min(1.0, c.intermediate_size / base), c.rms_norm_eps,
                  c.rope_parameters["rope_theta"]]
    hidden = int(floats[0] * np.float32(base))  # llm.c's sizing gives F
    assert 0 < hidden <= c.intermediate_size
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    lay = [f"model.layers.{i}." for i in range(L)]
    q = [hf.rope_to_meta(sd[p + "self_attn.q_proj.weight"], H) for p in lay]
    k = [hf.rope_to_meta(sd[p + "self_attn.k_proj.weight"], KV) for p in lay]
    tensors = [[sd["model.embed_tokens.weight"]], [sd["lm_head.weight"]],
               [sd[p + "input_layernorm.weight"] for p in lay], [np.zeros((L, C))],
               [np.concatenate([q[i], k[i], sd[p + "self_attn.v_proj.weight"]])
                for i, p in enumerate(lay)],
               [np.zeros((L, (H + 2 * KV) * C // H))],
               [sd[p + "self_attn.o_proj.weight"] for p in lay], [np.zeros((L, C))],
               [sd[p + "post_attention_layernorm.weight"] for p in lay], [np.zeros((L, C))],
               [np.concatenate([sd[p + "mlp.up_proj.weight"], sd[p + "mlp.gate_proj.weight"]])
                for p in lay],
               [np.zeros((L, 2 * c.intermediate_size))],
               [sd[p + "mlp.down_proj.weight"] for p in lay], [np.zeros((L, C))],
               [sd["model.norm.weight"]], [np.zeros(C)]]
    with open(path, "wb") as f:
        f.write(ints.tobytes())
        f.write(floats.tobytes())
        for group in tensors:
            for t in group:
                f.write(np.ascontiguousarray(t, dtype=dtype).tobytes())


def test_a_file_written_as_llm_c_llama3_writes_it_loads_with_transformers_logits(tmp_path):
    ref, _, B, T = make_pair("gqa4_untied_scaled")
    ref.config.rope_parameters = {"rope_type": "default", "rope_theta": 500000.0}
    ref = transformers.LlamaForCausalLM(ref.config).float().eval()  # unscaled: llm.c's flag off
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0.0, 0.08)
    path = tmp_path / "llmc_llama3.bin"
    write_llmc_llama3_file(path, ref)
    config = Config.from_file(path)
    assert config.is_llama and config.untied_head == 1 and config.num_kv_heads == 2
    assert config.ffn_hidden == 88 and config.rope_scaling_factor == 0
    assert config.padded_vocab_size == 384  # llmc pads what llm.c leaves unpadded
    x = np.random.default_rng(2).integers(0, config.vocab_size, (B, T))
    with Model.load(path, max_batch_size=B, max_seq_len=T) as model, torch.no_grad():
        assert rel_err(model.logits(x), ref(torch.from_numpy(x)).logits.numpy()) < 1e-5
        # written back by llmc: the same bytes (llmc's extra header fields aside)
        model.save(tmp_path / "again.bin")
    ours, theirs = (tmp_path / "again.bin").read_bytes(), path.read_bytes()
    assert len(ours) == len(theirs) and ours[2048:] == theirs[2048:]
    header = np.frombuffer(ours[:1024], np.int32)
    assert list(header[:12]) == list(np.frombuffer(theirs[:1024], np.int32)[:12])


@pytest.mark.parametrize("case", ["gqa2_tied_scaled", "mha_untied"])
def test_save_load_and_resume_are_exact(case, tmp_path):
    """A Llama model file round-trips bit for bit (fp32) and within bf16's
    rounding (bf16); model + optimizer state resume training exactly."""
    _, model, B, T = make_pair(case)
    rng = np.random.default_rng(3)
    batches = [make_batch(rng, model.config.vocab_size, B, T) for _ in range(4)]
    for x, y in batches[:2]:
        model.step(x, y, lr=1e-3, weight_decay=0.1)
    model.save(tmp_path / "m.bin")
    model.save(tmp_path / "m_bf16.bin", dtype="bf16")
    model.save_optimizer(tmp_path / "o.bin")
    assert Config.from_file(tmp_path / "m.bin") == model.config
    assert np.frombuffer((tmp_path / "m.bin").read_bytes()[:4], np.int32)[0] == 20240803
    later = [model.step(x, y, lr=1e-3, weight_decay=0.1) for x, y in batches[2:]]
    with Model.load(tmp_path / "m_bf16.bin", max_batch_size=B + 1, max_seq_len=T) as half:
        assert half.config == model.config
    with Model.load(tmp_path / "m.bin", max_batch_size=B + 1, max_seq_len=T + 3) as again:
        again.load_optimizer(tmp_path / "o.bin")
        assert again.step_count == 2
        resumed = [again.step(x, y, lr=1e-3, weight_decay=0.1) for x, y in batches[2:]]
        assert resumed == later
        assert np.array_equal(again.parameters(), model.parameters())


def test_a_gpt2_optimizer_file_does_not_load_into_a_llama(tmp_path):
    _, model, B, T = make_pair("gqa4_tied")
    with Model.from_config(Config(max_seq_len=32, vocab_size=199, num_layers=1, num_heads=4,
                                  channels=32)) as gpt2:
        gpt2.save_optimizer(tmp_path / "gpt2_opt.bin")
    with pytest.raises(ValueError, match="optimizer state"):
        model.load_optimizer(tmp_path / "gpt2_opt.bin")


def test_nonzero_biases_in_a_llama_file_are_refused(tmp_path):
    ref, _, _, _ = make_pair("mha_untied")
    path = tmp_path / "biased.bin"
    write_llmc_llama3_file(path, ref)
    data = bytearray(path.read_bytes())
    c = ref.config
    ln1b = 2048 + 4 * (2 * c.vocab_size * c.hidden_size + c.num_hidden_layers * c.hidden_size)
    data[ln1b:ln1b + 4] = np.float32(0.5).tobytes()
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="ln1b holds 0.5 at element 0: llmc's Llama has no biases"):
        Model.load(path)


def test_presets_have_the_released_models_shapes():
    """Parameter counts of the released checkpoints (transformers' num_parameters)."""
    expected = {"llama3.2-1b": 1_235_814_400, "llama3.2-3b": 3_212_749_824,
                "llama3.1-8b": 8_030_261_248}
    for name, count in expected.items():
        c = Config.preset(name)
        assert c.is_llama and c.vocab_size == 128256 and c.rope_theta == 500000.0
        assert sum(int(np.prod(s)) for _, s in hf.llama_shapes(c)) == count, name
    small = Config.preset("llama-124m")
    assert small.vocab_size == 50257 and small.channels == 768 and small.num_layers == 12
    n = sum(int(np.prod(s)) for _, s in hf.llama_shapes(small))
    assert abs(n - 124_475_904) / 124_475_904 < 0.03, n  # GPT-2 124M (d12, padded vocab)


def test_plan_memory_states_the_8b_needs_and_a_run_that_does_not_fit_fails_first():
    c = Config.preset("llama3.1-8b")
    need = Model.plan_memory(c, max_batch_size=1, max_seq_len=1024)
    params = 8_030_261_248
    assert need > 4 * 4 * params  # weights, gradients, two moments in fp32
    with pytest.raises(MemoryError, match="out of host memory"):
        Model.from_config(c, max_batch_size=1, max_seq_len=1024)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    ref = hf_model(CASES["gqa4_untied_scaled"][0], seed=4)
    folder = tmp_path_factory.mktemp("hf") / "llama"
    ref.save_pretrained(folder, safe_serialization=True)
    return folder


def run_hf(*args):
    return subprocess.run([sys.executable, "-m", "pyllmc.hf", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True)


def imported_logits(ref, folder, tmp_path, x):
    """`pyllmc.hf import` of folder: the model's config and its logits of x,
    and the reference model ref's logits of x."""
    with torch.no_grad():
        ref_logits = ref(torch.from_numpy(x)).logits.numpy()
    r = run_hf("import", folder, tmp_path / "m.bin")
    assert r.returncode == 0, r.stderr
    with Model.load(tmp_path / "m.bin", max_batch_size=x.shape[0], max_seq_len=x.shape[1]) as model:
        return model.config, model.logits(x), ref_logits


@pytest.mark.parametrize("tied", [False, True])
def test_hugging_face_import_and_export_keep_the_logits(tmp_path, tied):
    fields = dict(CASES["gqa4_untied_scaled"][0], tie_word_embeddings=tied)
    ref = hf_model(fields, seed=4).eval()
    folder = tmp_path / "llama"
    ref.save_pretrained(folder, safe_serialization=True)
    x = np.random.default_rng(6).integers(0, fields["vocab_size"], (2, 30))
    config, logits, ref_logits = imported_logits(ref, folder, tmp_path, x)
    assert config.untied_head == (not tied)
    assert config.rope_scaling_factor == 8.0
    assert rel_err(logits, ref_logits) < 1e-5
    r = run_hf("export", tmp_path / "m.bin", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    back = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out").float().eval()
    assert back.config.tie_word_embeddings == tied
    with torch.no_grad():
        assert rel_err(back(torch.from_numpy(x)).logits.numpy(), ref_logits) < 1e-5
    exported = safetensors_numpy.load_file(tmp_path / "out" / "model.safetensors")
    original = safetensors_numpy.load_file(folder / "model.safetensors")
    for name, t in original.items():
        assert np.array_equal(exported[name], t), name


def test_a_llama_folder_with_biases_is_refused(hf_dir, tmp_path):
    config = json.loads((hf_dir / "config.json").read_text())
    config["attention_bias"] = True
    (tmp_path / "config.json").write_text(json.dumps(config))
    r = run_hf("import", tmp_path, tmp_path / "m.bin")
    assert r.returncode == 1 and "no biases" in r.stderr


def test_cuda_plan_of_the_8b_with_and_without_zero1():
    """The CUDA plan needs the plugin, not a GPU. One rank holds bf16 weights
    and fp32 masters, gradients and both moments (18 bytes a parameter); ZeRO-1
    splits the masters and moments (12 of them) over the ranks."""
    c = Config.preset("llama3.1-8b")
    try:
        plan = {(ws, z): Model.plan_memory(c, device="cuda", max_batch_size=1, max_seq_len=2048,
                                           recompute=2, world_size=ws, zero_stage=z)
                for ws in (1, 2, 8) for z in (0, 1)}
    except UnsupportedError:
        pytest.skip("libllmc built without the CUDA backend")
    params = 8_030_261_248
    assert plan[1, 0] > 18 * params > 141e9  # beyond one H200
    for ws in (2, 8):
        assert plan[ws, 0] == pytest.approx(plan[1, 0], rel=1e-3)
        saved = plan[1, 0] - plan[ws, 1]
        assert saved == pytest.approx(12 * params * (1 - 1 / ws), rel=1e-3)
    assert plan[8, 1] < 80e9


def test_bf16_sharded_hugging_face_checkpoints_import(tmp_path):
    """As Llama models are published: bf16 tensors, split over several
    safetensors files listed in model.safetensors.index.json."""
    fields = CASES["gqa2_tied_scaled"][0]
    ref = hf_model(fields, seed=5)
    with torch.no_grad():  # weights that bf16 holds exactly; computed in fp32 below
        for p in ref.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    folder = tmp_path / "llama_bf16"
    copy.deepcopy(ref).to(torch.bfloat16).save_pretrained(folder, safe_serialization=True,
                                                          max_shard_size="20KB")
    assert (folder / "model.safetensors.index.json").exists()
    assert len(list(folder.glob("model-*.safetensors"))) > 1
    x = np.random.default_rng(7).integers(0, fields["vocab_size"], (2, 20))
    _, logits, ref_logits = imported_logits(ref, folder, tmp_path, x)
    assert rel_err(logits, ref_logits) < 1e-5


def test_a_damaged_safetensors_file_is_refused(hf_dir, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_bytes((hf_dir / "config.json").read_bytes())
    data = (hf_dir / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:len(data) // 2])  # truncated
    r = run_hf("import", folder, tmp_path / "m.bin")
    assert r.returncode == 1 and "within the" in r.stderr and "data bytes" in r.stderr, r.stderr
    assert not (tmp_path / "m.bin").exists()

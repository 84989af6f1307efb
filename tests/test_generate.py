"""Generation through the key/value cache (llmc.h "Generation", pyllmc.generate)
on the CPU backend, for GPT-2 and Llama: greedy tokens equal transformers'
cached greedy generate on the same weights, each step's log-probabilities match a full forward
without cache, batches equal sequences run alone, seeds repeat, bad
arguments are refused."""
import numpy as np
import pytest
import torch

import pyllmc
from pyllmc import Config, Model
from pyllmc.generate import Generator

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors.numpy")

VOCAB, LAYERS, CHANNELS, HEADS, POSITIONS = 777, 2, 64, 4, 256


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
    """A random transformers GPT-2 (weights wide enough that greedy choices
    are clear-cut, biases and LayerNorms off their init), and the same
    weights as an llmc Model."""
    from pyllmc import hf
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=POSITIONS, n_embd=CHANNELS,
                                     n_layer=LAYERS, n_head=HEADS, initializer_range=0.1,
                                     bos_token_id=None, eos_token_id=None)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    folder = tmp_path_factory.mktemp("hf")
    model.save_pretrained(folder / "gpt2", safe_serialization=True)
    hf.import_hf(folder / "gpt2", folder / "model.bin")
    with Model.load(folder / "model.bin", max_batch_size=1, num_threads=1) as ours:
        yield model, ours


def prompts(seed, lengths):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, VOCAB, size=n).tolist() for n in lengths]


def test_greedy_equals_transformers_generate(hf_pair):
    hf_model, ours = hf_pair
    batch = prompts(1, [5, 17, 1])
    got = ours.generate(batch, max_new_tokens=200, temperature=0)
    for prompt, tokens in zip(batch, got):
        with torch.no_grad():
            want = hf_model.generate(torch.tensor([prompt]), max_new_tokens=200, do_sample=False,
                                     use_cache=True, pad_token_id=0,
                                     attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
        assert tokens == want[0, len(prompt):].tolist()
    assert len(set(got[0])) > 5  # not one token repeated: the comparison means something


def full_forward_logprobs(model, prompt, tokens):
    """log-softmax of llmc_logits over the whole prefix, without a cache, at
    each generated token."""
    seq = np.array(prompt + tokens, dtype=np.int32)[None]
    logits = model.logits(seq)[0, len(prompt) - 1:-1].astype(np.float64)
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    return logp, logp[np.arange(len(tokens)), tokens]


def test_each_step_matches_a_forward_without_cache(hf_pair):
    _, ours = hf_pair
    batch = prompts(2, [3, 40])
    tokens, logprobs = ours.generate(batch, max_new_tokens=150, temperature=1.0, seed=5,
                                     logprobs=True)
    for prompt, toks, lp in zip(batch, tokens, logprobs):
        assert len(toks) == 150
        _, want = full_forward_logprobs(ours, prompt, toks)
        np.testing.assert_allclose(lp, want, atol=1e-4, rtol=0)
    greedy, logprobs = ours.generate(batch, max_new_tokens=50, temperature=0, logprobs=True)
    for prompt, toks, lp in zip(batch, greedy, logprobs):
        full, want = full_forward_logprobs(ours, prompt, toks)
        assert toks == full.argmax(1).tolist()
        np.testing.assert_allclose(lp, want, atol=1e-4, rtol=0)


# ---- Llama: RMSNorm, RoPE at each new token's position, grouped-query attention over the
# cache, SwiGLU; query heads per key/value head 2; with and without Llama 3.1's RoPE scaling
# (an original length short enough that all three frequency bands occur), tied and untied.

LLAMA_CASES = {
    "scaled_untied": dict(rope_theta=500000.0, tie_word_embeddings=False,
                          rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": 24}),
    "plain_tied": dict(rope_theta=10000.0, tie_word_embeddings=True),
}


@pytest.fixture(scope="module", params=sorted(LLAMA_CASES))
def llama_pair(request, tmp_path_factory):
    """A random transformers LlamaForCausalLM (weights wide enough that greedy
    choices are clear-cut, RMSNorm weights off 1) exported as transformers
    saves it, and the same weights imported into an llmc Model."""
    from pyllmc import hf
    torch.manual_seed(1)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=CHANNELS, intermediate_size=88,
                                      num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                      num_key_value_heads=HEADS // 2,
                                      max_position_embeddings=POSITIONS, rms_norm_eps=1e-5,
                                      bos_token_id=None, eos_token_id=None,
                                      attn_implementation="eager", **LLAMA_CASES[request.param])
    model = transformers.LlamaForCausalLM(config).float().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.2)
            else:
                p.normal_(0.0, 0.2)
    folder = tmp_path_factory.mktemp("llama")
    model.save_pretrained(folder / "hf", safe_serialization=True)
    hf.import_hf(folder / "hf", folder / "model.bin")
    with Model.load(folder / "model.bin", max_batch_size=1, num_threads=1) as ours:
        assert ours.config.is_llama and ours.config.num_kv_heads == HEADS // 2
        assert ours.config.untied_head == (not config.tie_word_embeddings)
        yield model, ours


def test_llama_greedy_equals_transformers_generate(llama_pair):
    test_greedy_equals_transformers_generate(llama_pair)


def test_llama_each_step_matches_a_forward_without_cache(llama_pair):
    test_each_step_matches_a_forward_without_cache(llama_pair)


def test_llama_batch_equals_each_sequence_alone(llama_pair):
    test_a_batch_equals_each_sequence_alone(llama_pair, dict(temperature=0.8, top_k=20))


SETTINGS = [dict(temperature=0), dict(temperature=0.8, top_k=20), dict(temperature=1.2, top_p=0.9),
            dict(temperature=1.0, top_k=50, top_p=0.5), dict(temperature=1.0)]


def first_difference(a, b):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@pytest.mark.parametrize("settings", SETTINGS)
def test_a_batch_equals_each_sequence_alone(hf_pair, settings):
    """The same tokens, but for the rounding of products of another batch size
    (the BLAS may take another path): the log-probabilities agree to 1e-5 and
    a divergence is a greedy near-tie or a draw at a sampling boundary, rare."""
    _, ours = hf_pair
    batch = prompts(3, [1, 9, 30, 2, 60])
    together, lp_together = ours.generate(batch, max_new_tokens=40, seed=11, logprobs=True,
                                          **settings)
    diverged = 0
    for i, prompt in enumerate(batch):
        alone, lp_alone = ours.generate([prompt], max_new_tokens=40, seed=11 + i, logprobs=True,
                                        **settings)
        same = first_difference(together[i], alone[0])
        np.testing.assert_allclose(lp_together[i][:same + 1], lp_alone[0][:same + 1], atol=1e-5,
                                   rtol=0)
        if same < 40:
            diverged += 1
            if settings["temperature"] == 0:
                full, _ = full_forward_logprobs(ours, prompt, together[i])
                assert abs(full[same, together[i][same]] - full[same, alone[0][same]]) < 1e-4
    assert diverged <= 1
    # fewer slots than prompts: sequences wait for a free slot, the same batch shapes at the end
    waiting = ours.generate(batch, max_new_tokens=40, seed=11, max_batch=2, **settings)
    assert sum(first_difference(a, b) < 40 for a, b in zip(waiting, together)) <= 1


def test_seeds_repeat_and_differ(hf_pair):
    _, ours = hf_pair
    batch = prompts(4, [4, 4])
    a = ours.generate(batch, max_new_tokens=60, seed=3, top_p=0.95)
    assert a == ours.generate(batch, max_new_tokens=60, seed=3, top_p=0.95)
    assert a != ours.generate(batch, max_new_tokens=60, seed=4, top_p=0.95)
    assert a[0] != a[1]  # the same prompt, seeds 3 and 4


def nucleus(p, top_p, slack=0):
    """Tokens of the smallest set of the likeliest holding top_p (and `slack`
    more, for float32's rounding at the boundary)."""
    order = np.argsort(-p)
    return order[:np.searchsorted(np.cumsum(p[order]), top_p * p.sum()) + 1 + slack]


def test_top_k_and_top_p_keep_only_the_likeliest(hf_pair):
    _, ours = hf_pair
    prompt = prompts(5, [6])[0]
    # top_p 0.97 reaches past the 256 likeliest tokens of this random model: the threshold path
    for settings, allowed in [(dict(top_k=3), lambda p: np.argsort(-p)[:3]),
                              (dict(top_p=0.3), lambda p: nucleus(p, 0.3)),
                              (dict(top_p=0.97), lambda p: nucleus(p, 0.97, slack=2)),
                              (dict(top_k=100, top_p=0.5), lambda p: nucleus(
                                  np.where(p >= np.sort(p)[-100], p, 0), 0.5))]:
        tokens = ours.generate([prompt], max_new_tokens=30, seed=9, **settings)[0]
        full, _ = full_forward_logprobs(ours, prompt, tokens)
        for step, token in enumerate(tokens):
            assert token in allowed(np.exp(full[step]))
    wide = nucleus(np.exp(full_forward_logprobs(ours, prompt, tokens)[0][0]), 0.97)
    assert len(wide) > 256


def test_stop_token_budget_and_length():
    config = Config(max_seq_len=32, vocab_size=50304, num_layers=1, num_heads=2, channels=16)
    with Model.from_config(config, max_batch_size=1, num_threads=1) as model:
        with Generator(model, 3, max_len=12) as gen:
            greedy = gen.sampling(100, temperature=0, stop_token=None)
            ids = gen.start([[1, 2, 3]], [greedy])
            events = gen.run(50)
            assert [e[0] for e in events] == ids * 9 and events[-1][3] == 3  # max_len 12
            stop = events[2][1]  # stop at the third token's value
            ids = gen.start([[1, 2, 3], [1, 2, 3]], [gen.sampling(100, temperature=0, stop_token=stop),
                                                     gen.sampling(2, temperature=0, stop_token=None)])
            events = gen.run(50)
            ends = {seq: (i, finish) for i, (seq, _, _, finish) in enumerate(events) if finish}
            assert ends[ids[1]][1] == 2 and ends[ids[0]][1] == 1
            assert [e[1] for e in events if e[0] == ids[0]][-1] == stop
            assert gen.live == 0 and gen.run(5) == []
        # <|endoftext|> stops by default
        sampling = Generator(model, 1).sampling(5)
        assert sampling.stop_token == 50256


def test_streaming_and_strings():
    config = Config(max_seq_len=64, vocab_size=50304, num_layers=1, num_heads=2, channels=16)
    with Model.from_config(config, max_batch_size=1, num_threads=1) as model:
        seen = []
        out = model.generate(["Hello", ""], max_new_tokens=7, seed=1, stop_token=None,
                             stream=lambda i, t, lp: seen.append((i, t)))
        assert [len(t) for t in out] == [7, 7]
        assert [t for i, t in seen if i == 0] == out[0] and [t for i, t in seen if i == 1] == out[1]
        assert model.generate("Hello", max_new_tokens=7, seed=1, stop_token=None) == out[:1]
    # a model's vocabulary may hold ids the tokenizer lacks (padding): they print as nothing
    from pyllmc.tokenizer import decode_bytes
    assert decode_bytes([15496, 50300]) == b"Hello"


def test_bad_arguments_are_refused_and_leave_it_usable(hf_pair):
    _, ours = hf_pair
    with Generator(ours, 2, max_len=32) as gen:
        ok = gen.sampling(4)
        bad = [dict(temperature=-1.0), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5),
               dict(max_new_tokens=0), dict(stop_token=VOCAB)]
        for b in bad:
            args = dict(max_new_tokens=4, stop_token=None)
            args.update(b)
            with pytest.raises(pyllmc.InvalidArgumentError, match="sampling"):
                gen.start([[1]], [gen.sampling(**args)])
        for p, match in [([], "lengths"), (list(range(32)), "lengths"), ([VOCAB], "token"),
                         ([-1], "outside")]:
            with pytest.raises(pyllmc.InvalidArgumentError, match=match):
                gen.start([p], [ok])
        with pytest.raises(pyllmc.InvalidArgumentError, match="slots are free"):
            gen.start([[1], [2], [3]], [ok, ok, ok])
        with pytest.raises(pyllmc.InvalidArgumentError, match="not live"):
            gen.cancel(0)
        assert gen.live == 0
        ids = gen.start([[1], [2]], [ok, ok])
        gen.cancel(ids[0])
        assert gen.live == 1 and {e[0] for e in gen.run(10)} == {ids[1]}
    for S, T, match in [(0, 0, "max_sequences"), (1, 1, "max_len"), (1, POSITIONS + 1, "max_len"),
                        (2**20, 0, "cached tokens")]:
        with pytest.raises(pyllmc.InvalidArgumentError, match=match):
            Generator(ours, S, T)
    with pytest.raises(pyllmc.InvalidArgumentError, match="leaves no room"):
        ours.generate([[1] * POSITIONS], max_new_tokens=1)


def test_the_c_api_refuses_null_arguments():
    import ctypes
    from pyllmc._lib import TokenEventStruct, lib
    config = Config(max_seq_len=16, vocab_size=100, num_layers=1, num_heads=1, channels=8)
    with Model.from_config(config, max_batch_size=1, num_threads=1) as model:
        with model._using() as handle:
            out = ctypes.c_void_p()
            assert lib.llmc_generator_create(None, 1, 0, ctypes.byref(out)) == 1
            assert lib.llmc_generator_create(handle, 1, 0, None) == 1
            assert lib.llmc_generator_create(handle, 1, 0, ctypes.byref(out)) == 0
        gen = out
        tokens, n = (ctypes.c_int32 * 2)(1, 1), ctypes.c_int()
        sampling = (ctypes.c_int32 * 1)(1)
        assert lib.llmc_generator_start(gen, 1, None, tokens, None, tokens) == 1
        assert lib.llmc_generator_start(None, 1, tokens, sampling, None, tokens) == 1
        events = (TokenEventStruct * 1)()
        assert lib.llmc_generator_run(gen, 1, None, 1, ctypes.byref(n)) == 1
        assert lib.llmc_generator_run(gen, 1, events, 1, None) == 1
        assert lib.llmc_generator_run(gen, 0, events, 1, ctypes.byref(n)) == 1
        assert lib.llmc_generator_run(gen, 1, events, 0, ctypes.byref(n)) == 1
        assert lib.llmc_generator_run(gen, 1, events, 1, ctypes.byref(n)) == 0 and n.value == 0
        assert lib.llmc_generator_cancel(None, 0) == 1
        assert lib.llmc_generator_live(None) == 0 and lib.llmc_generator_memory_bytes(None) == 0
        assert lib.llmc_generator_memory_bytes(gen) > 0
        lib.llmc_generator_free(gen)
        lib.llmc_generator_free(None)


def test_a_cache_too_big_is_an_error_not_a_crash():
    # 100 layers x 16384 sequences x 1024 positions x 16 channels x 2: 214 GB
    config = Config(max_seq_len=1024, vocab_size=100, num_layers=100, num_heads=1, channels=16)
    with Model.from_config(config, max_batch_size=1, max_seq_len=1, num_threads=1) as model:
        assert Generator.plan_memory(model, 16384) > 200e9
        with pytest.raises(pyllmc.OutOfMemoryError, match="key/value cache"):
            Generator(model, 16384)
        assert model.generate([[1, 2]], max_new_tokens=3, temperature=0, stop_token=None)


def test_closing_the_model_closes_its_generators():
    config = Config(max_seq_len=16, vocab_size=100, num_layers=1, num_heads=1, channels=8)
    model = Model.from_config(config, max_batch_size=1, num_threads=1)
    gen = Generator(model, 1)
    model.close()
    with pytest.raises(pyllmc.InvalidArgumentError, match="closed"):
        gen.run()

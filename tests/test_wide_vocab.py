"""Vocabularies beyond uint16 (Llama 3's 128,256 tokens): llm.c's uint32 token
shards (magic 20240801, version 7) written and read, a local tokenizer.json
for data preparation and sampling, and a Llama trained from such shards."""
import json

import numpy as np
import pytest

from pyllmc import Config, Model, fineweb, sample
from pyllmc.sample import sample_text
from pyllmc.shards import DataLoader, ShardError, read_shard, read_shard_header, write_shard
from pyllmc.tokenizer import TokenizerError, load_tokenizer

tokenizers = pytest.importorskip("tokenizers")

VOCAB = 70_001  # past uint16
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory):
    """A word-level tokenizer.json whose words sit at ids beyond 65535, the
    document token <|begin_of_text|> (Llama 3's) last."""
    vocab = {"[UNK]": 0, **{w: 65_536 + 7 * i for i, w in enumerate(WORDS)},
             "<|begin_of_text|>": VOCAB - 1}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.decoder = tokenizers.decoders.WordPiece()  # joins words with spaces
    tok.add_special_tokens(["<|begin_of_text|>"])
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


def test_wide_shards_round_trip_in_llm_c_format(tmp_path):
    tokens = np.array([0, 65_535, 65_536, 128_255, 2**32 - 1], dtype=np.int64)
    write_shard(tmp_path / "w.bin", tokens, wide=True)
    header = np.fromfile(tmp_path / "w.bin", dtype="<i4", count=3)
    assert list(header) == [20240801, 7, 5]
    assert (tmp_path / "w.bin").stat().st_size == 1024 + 4 * 5
    back = read_shard(tmp_path / "w.bin")
    assert back.dtype == np.uint32 and np.array_equal(back, tokens)
    with pytest.raises(ValueError, match="needs wide shards"):
        write_shard(tmp_path / "n.bin", tokens)
    (tmp_path / "t.bin").write_bytes((tmp_path / "w.bin").read_bytes()[:-4])
    with pytest.raises(ShardError, match="header says 5 tokens"):
        read_shard_header(tmp_path / "t.bin")


def test_tokenizer_json(tokenizer_json, tmp_path):
    tok = load_tokenizer(tokenizer_json)
    assert tok.vocab_size == VOCAB and tok.eot == VOCAB - 1 and tok.wide
    ids = tok.encode("beta gamma")
    assert ids == [65_543, 65_550] and tok.decode(ids) == "beta gamma"
    tokens, lengths = tok.encode_documents(["alpha", "", "beta beta"])
    assert tokens.dtype == np.uint32 and list(lengths) == [2, 1, 3]
    assert list(tokens) == [tok.eot, 65_536, tok.eot, tok.eot, 65_543, 65_543]
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(TokenizerError, match="bad.json"):
        load_tokenizer(tmp_path / "bad.json")
    gpt2 = load_tokenizer()
    assert gpt2.vocab_size == 50257 and not gpt2.wide and gpt2.encode("hello world") == [31373, 995]


def test_fineweb_prepares_wide_shards_that_train_a_llama(tokenizer_json, tmp_path):
    rng = np.random.default_rng(0)
    docs = [" ".join(rng.choice(WORDS, size=int(rng.integers(5, 60)))) for _ in range(200)]
    with open(tmp_path / "docs.jsonl", "w") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")
    out = tmp_path / "shards"
    fineweb.main(["--input", str(tmp_path / "docs.jsonl"), "-o", str(out), "-s", "4000",
                  "--tokenizer", str(tokenizer_json)])
    tok = load_tokenizer(tokenizer_json)
    expected = np.concatenate([tok.encode_documents([d])[0] for d in docs])
    shards = sorted(out.glob("*.bin"), key=lambda p: p.name.split("_")[-1])  # the stream's order
    got = np.concatenate([read_shard(p) for p in shards])
    assert got.dtype == np.uint32 and np.array_equal(got, expected)
    assert got[0] == tok.eot

    config = Config(family=1, max_seq_len=32, vocab_size=VOCAB, num_layers=1, num_heads=2,
                    channels=16, num_kv_heads=1)
    loader = DataLoader(str(out), 2, 32)
    with Model.from_config(config, max_batch_size=2, max_seq_len=32) as model:
        losses = []
        for _ in range(8):
            x, y = loader.next_batch()
            assert x.max() >= 65_536
            losses.append(model.step(x, y, lr=1e-2)[0])
        assert losses[-1] < losses[0]
        text = sample_text(model, "alpha", 5, temperature=0, tokenizer=tok)
        assert text.startswith("alpha")


def test_sampling_a_llama_from_the_command_line_with_either_tokenizer_file(
        llama3_tokenizer_files, tmp_path, capsys):
    """`python -m pyllmc.sample LLAMA.bin --tokenizer FILE --prompt ...` with
    Llama 3's vocabulary as a tiktoken rank file and as a tokenizer.json: the
    same text, the prompt followed by the model's greedy tokens."""
    config = Config(family=1, max_seq_len=48, vocab_size=128_256, num_layers=1, num_heads=2,
                    channels=16, num_kv_heads=1)
    prompt = "Hello, I'm a language model, 1234567"
    tok = load_tokenizer(llama3_tokenizer_files[0])
    with Model.from_config(config, max_batch_size=1, max_seq_len=48, seed=3) as model:
        model.save(tmp_path / "llama.bin")
        new = model.generate([tok.encode(prompt)], 12, temperature=0)[0]
    expected = tok.decode(tok.encode(prompt) + new)
    assert expected.startswith(prompt) and len(expected) > len(prompt)
    for path in llama3_tokenizer_files:
        sample.main([str(tmp_path / "llama.bin"), "--tokenizer", str(path), "--prompt", prompt,
                     "--max-new-tokens", "12", "--temperature", "0"])
        assert capsys.readouterr().out == expected + "\n"
    with pytest.raises(SystemExit):
        sample.main([str(tmp_path / "llama.bin"), "--tokenizer", str(tmp_path / "llama.bin")])
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'llama.bin'}: line 1") and err.count("\n") == 1

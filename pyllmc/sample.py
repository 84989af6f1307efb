"""
Text from a model: `python -m pyllmc.sample out/model_00000300.bin --prompt "The"`.

Sampling runs the model over the whole context for each new token (no
key/value cache): simple, and quick enough for the short samples training
prints and for trying a checkpoint.
"""
import argparse
import sys

import numpy as np

from .files import os_error_message
from .tokenizer import load_tokenizer


def generate(model, prompt_tokens, max_new_tokens, temperature=1.0, top_k=None, seed=0):
    """prompt_tokens followed by max_new_tokens sampled ones (a list of ints).

    temperature 0 picks the most likely token; top_k keeps only the k most
    likely before sampling. The context is the last model.max_seq_len tokens.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    rng = np.random.default_rng(seed)
    tokens = list(prompt_tokens) or [EOT]
    for _ in range(max_new_tokens):
        context = np.array(tokens[-model.max_seq_len:], dtype=np.int32)[None]
        logits = model.logits(context, last_only=True)[0].astype(np.float64)
        if temperature == 0:
            tokens.append(int(np.argmax(logits)))
            continue
        logits /= temperature
        if top_k is not None and top_k < len(logits):
            kth = np.partition(logits, -top_k)[-top_k]
            logits[logits < kth] = -np.inf
        probs = np.exp(logits - logits.max())
        cdf = np.cumsum(probs)
        tokens.append(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")))
    return tokens


def sample_text(model, prompt="", max_new_tokens=64, temperature=1.0, top_k=None, seed=0,
                tokenizer=None):
    """The prompt and its sampled continuation as text (an empty prompt starts
    from <|endoftext|>, i.e. the start of a document). tokenizer: a
    tokenizer.Tokenizer, GPT-2's when None."""
    tok = tokenizer or load_tokenizer()
    prompt_tokens = tok.encode(prompt) if prompt else [tok.eot]
    tokens = generate(model, prompt_tokens, max_new_tokens, temperature, top_k, seed)
    return tok.decode(tokens[0 if prompt else 1:])


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m pyllmc.sample",
                                description="Sample text from a model file (llm.c format).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="model file, e.g. out/model_00000300.bin")
    p.add_argument("--prompt", default="", help="text to continue (empty: a new document)")
    p.add_argument("--max-new-tokens", type=int, default=100, help="tokens to generate")
    p.add_argument("--temperature", type=float, default=1.0, help="0: always the likeliest token")
    p.add_argument("--top-k", type=int, default=40, help="sample among the k likeliest (0: all)")
    p.add_argument("--num-samples", type=int, default=1, help="independent samples")
    p.add_argument("--seed", type=int, default=0, help="random seed of the first sample")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--tokenizer", metavar="TOKENIZER_JSON",
                   help="the model's local tokenizer.json (default: GPT-2's)")
    args = p.parse_args(argv)

    import pyllmc
    try:
        tokenizer = load_tokenizer(args.tokenizer)
        # the context never exceeds the prompt and the new tokens: a plan for
        # that, not for all of a Llama's 131,072 positions
        needed = len(tokenizer.encode(args.prompt)) + 1 + args.max_new_tokens
        T = min(pyllmc.Config.from_file(args.checkpoint).max_seq_len, needed)
        with pyllmc.Model.load(args.checkpoint, device=args.device, max_batch_size=1,
                               max_seq_len=T) as model:
            for i in range(args.num_samples):
                text = sample_text(model, args.prompt, args.max_new_tokens, args.temperature,
                                   args.top_k or None, args.seed + i, tokenizer)
                print(f"--- sample {i + 1} ---\n{text}" if args.num_samples > 1 else text)
    except OSError as e:
        print(f"error: {os_error_message(e)}", file=sys.stderr)
        sys.exit(1)
    except (pyllmc.LlmcError, pyllmc.LibraryError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

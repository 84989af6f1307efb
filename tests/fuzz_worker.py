"""Loads the files of a fuzz manifest one after another (tests/test_fuzz.py
runs several of these at once). For each file it prints `start I` before
touching it and `done I OUTCOME` after, so that when the process dies from a
signal or hangs, the parent knows the file that did it. OUTCOME is `loaded`,
`refused:<exception type>` for the clean exceptions of each loader, or
`unclean:<type>: <message>` for anything else.

    python tests/fuzz_worker.py MANIFEST.json
"""
import json
import sys
import traceback

import numpy as np

import pyllmc
from pyllmc import hellaswag, shards
from pyllmc.files import NotRegularFileError

# what a loader may raise on a bad file: the library's errors and each
# module's own error type (OSError covers unreadable and non-regular files)
CLEAN = (pyllmc.LlmcError, shards.ShardError, hellaswag.DataError, NotRegularFileError, OSError)


def load_model(path, _):
    pyllmc.Config.from_file(path)
    with pyllmc.Model.load(path, max_batch_size=1, max_seq_len=1, num_threads=1) as model:
        model.eval(np.zeros((1, 1), np.int32), np.zeros((1, 1), np.int32))


def load_optimizer(path, model):
    try:
        model.load_optimizer(path)
    finally:  # loaded or refused, the model must stay usable
        loss = model.eval(np.zeros((1, 4), np.int32), np.ones((1, 4), np.int32))
        assert np.isfinite(loss), f"eval after load_optimizer gave {loss}"


def load_shard(path, _):
    shards.read_shard_header(path)
    tokens = shards.read_shard(path)
    int(np.asarray(tokens[:16], dtype=np.int64).sum())
    loader = shards.DataLoader(path, 1, 4)
    loader.next_batch()


def load_hellaswag(path, _):
    hellaswag.load_examples(path)


LOADERS = {"model": load_model, "optimizer": load_optimizer, "shard": load_shard,
           "hellaswag_bin": load_hellaswag, "hellaswag_jsonl": load_hellaswag}


def main(manifest_path):
    with open(manifest_path) as f:
        manifest = json.load(f)
    base = pyllmc.Model.load(manifest["base_model"], max_batch_size=1, max_seq_len=4, num_threads=1)
    for i, (kind, path) in enumerate(manifest["files"]):
        print(f"start {i}", flush=True)
        try:
            LOADERS[kind](path, base)
            outcome = "loaded"
        except CLEAN as e:
            outcome = f"refused:{type(e).__name__}"
        except BaseException as e:  # noqa: B902 - any other exception is the finding
            detail = traceback.format_exception_only(type(e), e)[-1].strip()
            outcome = f"unclean:{detail[:300]}"
        print(f"done {i} {outcome}", flush=True)
    base.close()


if __name__ == "__main__":
    main(sys.argv[1])

"""HellaSwag files for the tests, written without PyTorch (test_fuzz runs
under the sanitizers, where the suite's references are not needed)."""
import numpy as np


def write_eval_file(path, examples):
    """llm.c's tokenized eval format, from its documentation: 256 int32 (magic
    20240522, version 1, number of examples, longest example in bytes), then
    per example uint16: 65535, bytes, index, label, 4, then the context and
    each ending as a length and its tokens."""
    streams = []
    for index, (context, endings, label) in enumerate(examples):
        words = [65535, 0, index, label, len(endings), len(context), *context]
        for ending in endings:
            words += [len(ending), *ending]
        words[1] = 2 * len(words)
        streams.append(words)
    header = np.zeros(256, dtype="<i4")
    header[:4] = [20240522, 1, len(streams), max(s[1] for s in streams)]
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.array([w for s in streams for w in s], dtype="<u2").tobytes())

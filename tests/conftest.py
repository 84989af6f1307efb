"""Fixtures that several test files share."""
import pytest


@pytest.fixture(scope="session")
def llama3_tokenizer_files(tmp_path_factory):
    """A Llama-3-shaped tiktoken rank file and the same vocabulary as a
    tokenizer.json (rank_files.write_llama3_files): made once, ~3 s."""
    pytest.importorskip("transformers")
    from rank_files import write_llama3_files
    with pytest.MonkeyPatch.context() as monkeypatch:
        return write_llama3_files(tmp_path_factory.mktemp("llama3_tokenizer"), monkeypatch)

"""What the tests that compare libllmc with a PyTorch reference share."""
import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def torch_on_one_thread():
    """The reference models here are tiny: threads only cost PyTorch time.
    Autouse in every test module that imports it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rel_err(a, b):
    """Largest difference relative to the largest reference magnitude."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)

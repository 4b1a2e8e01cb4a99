import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _one_torch_thread():
    """One intra-op thread: on a shared, oversubscribed CPU, spinning OpenMP threads made these runs ~6x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

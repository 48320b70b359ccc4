import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread_per_test():
    """Tests run side by side with other work on 2 cores: competing intra-op threads made small
    convolutions ~10× slower, so each test uses one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

import os

import pytest
import torch

# Two cores on CI: keep each test single-threaded so the suite's timing is predictable.
torch.set_num_threads(int(os.environ.get("FXCACHE_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()

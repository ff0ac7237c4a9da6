"""Shared test set-up."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The test nets are tiny: one intra-op thread is faster, and immune to a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def slurm():
    """A single-node SLURM on 127.0.0.1 for the whole session (``slurm_fixture.py``); skips where it cannot start."""
    from slurm_fixture import start_slurm

    yield from start_slurm()


@pytest.fixture(scope="session")
def s3():
    """A moto S3 server on 127.0.0.1 for the whole session, reached through the AWS environment variables
    (``s3_fixture.py``); skips where it cannot start."""
    from s3_fixture import start_s3

    yield from start_s3()

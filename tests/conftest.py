"""Shared pytest fixtures."""

from __future__ import annotations

import os
import time

import pytest
import torch

pytest.register_assert_rewrite("helpers")  # its asserts report their operands, as in a test module
from helpers import synthetic_train_data  # noqa: E402  (tests/ is on sys.path: rootdir conftest)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny models: threading only adds overhead (and
    contention on a shared machine). Restored afterwards. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data():
    """The training loop's test data: 192 synthetic 16x16 training images in 4 classes
    (6 steps per epoch at batch 32), augmented; 64 val and 64 test images normalised with
    the training statistics. A module that needs other data defines its own ``data``."""
    return synthetic_train_data(192, 64, 64, augment=True)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A real single-node SLURM cluster (tests/slurm_cluster.py), once per session.

    Installs the Debian packages if missing (root, apt-get), starts munged, mariadbd,
    slurmdbd, slurmctld and slurmd, sets SLURM_CONF for the session and stops the daemons
    (by PID) at the end. A cluster already started by hand in the same workdir
    (`python -m tests.slurm_cluster start`) is reused and left running.
    """
    import slurm_cluster as sc  # tests/ is on sys.path (rootdir conftest)

    t0 = time.monotonic()
    installed = sc.ensure_packages()
    install_seconds = time.monotonic() - t0
    cluster = sc.start_cluster(sc.DEFAULT_WORKDIR, ports=sc._port_overrides())
    cluster.install_seconds = install_seconds if installed else 0.0
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.slurm_conf)
    try:
        yield cluster
    finally:
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
        if not cluster.reused:
            cluster.stop()


@pytest.fixture(scope="session")
def local_demo(tmp_path_factory):
    """The whole demo DAG run once per session on this machine (a copy of the workflow),
    shared by the tests that compare other runs with it (SLURM, killed and resumed,
    concurrent invocations). Defined here so that every module shares the one run."""
    from test_pipeline import copy_workflow, snakemake

    root = tmp_path_factory.mktemp("local_demo")
    copy_workflow(root)
    t0 = time.monotonic()
    # forkserver (fisherlab.forkserver): the jobs fork from one process; the tests that rerun
    # a run of it without (SLURM, killed and resumed, concurrent) check that it changes no number
    snakemake("--configfile", "configs/demo.yaml", "--cores", "2", "--config", "forkserver=True", cwd=root)
    print(f"local demo: {time.monotonic() - t0:.0f} s")
    return root

"""Shared pytest fixtures."""

from __future__ import annotations

import os
import time

import pytest


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
    snakemake("--configfile", "configs/demo.yaml", "--cores", "2", cwd=root)
    print(f"local demo: {time.monotonic() - t0:.0f} s")
    return root

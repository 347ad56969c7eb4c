"""The test cluster's layout rules (no engine needed); the cluster itself runs in test_slurm_integration.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hpcimages.cluster import testcluster

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("node,cpus,spec", [
    (1, 2, "node1=2"),          # node1 holds every core: an intra-node job runs there
    (2, 2, "node2=2:0"),        # node2's jobs start on core 1: one rank per node lands on distinct cores
    (3, 4, "node3=4:0-1"),
    (3, 2, "node3=2"),          # more nodes than cores: they wrap around
    (1, 1, "node1=1"),
])
def test_each_node_keeps_the_cores_of_the_nodes_before_it_out_of_jobs(node, cpus, spec):
    assert testcluster.node_spec(node, cpus) == spec


@pytest.mark.parametrize("nodes", ["0", "9", "two"])
def test_a_node_count_out_of_range_is_refused_before_anything_starts(nodes):
    proc = subprocess.run([sys.executable, "-m", "invoke", "testcluster", "--nodes", nodes], cwd=ROOT,
                          capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--nodes" in proc.stderr and "Traceback" not in proc.stderr

import os

import pytest


@pytest.fixture(autouse=True)
def _privileged_needs_root(request):
    # On the machines this project targets everything is present: a privileged test that cannot
    # run fails and says why, it is never skipped.
    if request.node.get_closest_marker("privileged") and os.geteuid() != 0:
        pytest.fail("this test needs root (network namespaces, netfilter, BPF): run scripts/test as root")

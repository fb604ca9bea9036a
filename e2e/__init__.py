"""End-to-end suite: a real cluster, kubelet driving the driver (see e2e/harness.py)."""

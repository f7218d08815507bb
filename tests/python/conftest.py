"""pytest setup for the flash4 PyTorch tests.

Run from the checkout with flash4 importable: either installed
(`pip install --no-build-isolation .`) or from a CMake build tree
(`cmake -S . -B build-torch -DFLASH4_TORCH=ON && cmake --build build-torch`,
then `PYTHONPATH=build-torch/python python3 -m pytest tests/python`).

Without torch every test module is skipped (pytest.importorskip says why).
With torch but without an importable flash4 the run fails: a build that cannot
be imported is an error, not a skip. Tests marked `gpu` skip with a message when torch sees
no CUDA device (of compute capability 8.0 or newer).
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # attn_ref

try:
    import torch
except ImportError:  # pragma: no cover - depends on the machine
    torch = None


def pytest_collection_modifyitems(config, items):
    if torch is None:
        return
    reason = gpu_skip_reason()
    if reason:
        skip = pytest.mark.skip(reason=reason)
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


def gpu_skip_reason():
    if not torch.cuda.is_available():
        return "no CUDA device visible to torch: GPU test skipped"
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        return f"CUDA device of compute capability {major}.{minor}: flash4 needs 8.0 or newer"
    return None


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")

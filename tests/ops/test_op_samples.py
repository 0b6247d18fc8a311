"""The checks every operator with a reference gets (the public ones and the internal
activation), on every sample of its ``sample_inputs`` and on every device (the CUDA variants are skipped without a GPU): the result and the gradients for a
random upstream gradient against its float64 reference, torch.library.opcheck, and
torch.compile forward and backward. The operators, references and samples: op_references.py;
the checks: op_checks.py. Each operator's own behaviour is tested in test_<operator>.py."""
import pytest
import torch

from op_checks import check_against_reference, check_compile, check_opcheck, need
from op_references import DEVICES, OPERATORS

each_operator_and_device = pytest.mark.parametrize(
    "name, device", [(name, device) for name in OPERATORS for device in DEVICES])


def op_of(name):
    return getattr(torch.ops.arwrap, name).default


@each_operator_and_device
def test_samples_match_reference_with_random_upstream(name, device):
    need(device)
    reference, sample_inputs, _ = OPERATORS[name]
    for args in sample_inputs(device):
        check_against_reference(op_of(name), reference, args)


@each_operator_and_device
def test_samples_opcheck(name, device):
    need(device)
    _, sample_inputs, dtype = OPERATORS[name]
    for args in sample_inputs(device, dtype):
        check_opcheck(op_of(name), args)


@each_operator_and_device
def test_samples_compile(name, device):
    need(device)
    _, sample_inputs, _ = OPERATORS[name]
    for args in sample_inputs(device):
        check_compile(op_of(name), args)

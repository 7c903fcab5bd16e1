"""Compressed Core ML packages of GPT-2 and MiniLM (tests/coreml_packages.py): int8 (iOS 17's per-channel and
iOS 18's per-block), int4, 4- and 6-bit palettization, each within ondevice.verify.COMPRESSED_TOLERANCES, emitting
its compression op, and within the ANE rules."""

from __future__ import annotations

import pytest

from tests.coreml_packages import (
    VARIANTS,
    check_ane_rules,
    check_compression_emits_its_op,
    check_package_matches_reference,
    package_maker,
)

COMPRESSED = [name for name, (_, options, _) in VARIANTS.items() if options.compress != "none"]


@pytest.fixture(scope="module")
def packages(tmp_path_factory, request):
    return package_maker(tmp_path_factory.mktemp("coreml-compressed"), request)


@pytest.mark.parametrize("name", COMPRESSED)
def test_package_matches_reference(packages, name):
    check_package_matches_reference(packages, name)


@pytest.mark.parametrize("name", COMPRESSED)
def test_compression_emits_its_op(packages, name):
    check_compression_emits_its_op(packages, name)


@pytest.mark.parametrize("name", COMPRESSED)
def test_ane_rules(packages, name):
    check_ane_rules(packages, name)

"""Fixtures of the report tests."""
from __future__ import annotations


import pytest

from tests.unit.report.ledgers import scenario


@pytest.fixture()
def ledger_file(tmp_path):
    return scenario().write(tmp_path / "ledger.jsonl", tail='{"ev": "copy", "step": 2')

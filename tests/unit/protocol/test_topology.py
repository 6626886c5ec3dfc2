"""The collector tree: pure construction from the job size, the setting and the node keys."""
from __future__ import annotations

import pytest

from raven_hpc.errors import ConfigError
from raven_hpc.protocol.topology import build_tree


def _check(tree):
    """Every rank but 0 has one parent, reachable from 0; children lists agree with parents."""
    seen = tree.subtree(0)
    assert seen == list(range(tree.size))
    for p, kids in tree.children.items():
        for k in kids:
            assert tree.parent[k] == p


def test_flat_star_when_zero_or_few_workers():
    for setting in (0, "auto"):
        t = build_tree(9, setting, fan_in=16)
        _check(t)
        assert t.flat and t.children == {0: list(range(1, 9))}
    assert build_tree(1, "auto").children == {0: []}


def test_integer_cuts_workers_into_that_many_groups():
    t = build_tree(7, 2)
    _check(t)
    assert t.children == {0: [1, 4], 1: [2, 3], 4: [5, 6]}
    assert t.collectors == [1, 4] and t.depth() == 2


def test_two_levels_when_leaders_exceed_fan_in():
    t = build_tree(13, 4, fan_in=2)
    _check(t)
    assert t.children[0] == [1, 7]
    assert t.children[1] == [2, 3, 4] and t.children[4] == [5, 6]
    assert t.children[7] == [8, 9, 10] and t.children[10] == [11, 12]
    assert t.depth() == 3


def test_auto_groups_by_node_and_cuts_big_nodes():
    keys = [0] * 5 + [5] * 40 + [45] * 20      # 65 ranks: node sizes 5, 40, 20
    t = build_tree(65, "auto", fan_in=16, keys=keys)
    _check(t)
    for c in t.collectors:
        assert len(t.children[c]) <= 16
        assert len({keys[r] for r in t.subtree(c) if t.parent[r] == c} | {keys[c]}) == 1   # one node per group
    assert len(t.children[0]) <= 16


def test_auto_on_one_node_of_65_ranks_gives_four_groups():
    t = build_tree(65, "auto", fan_in=16)
    assert len(t.collectors) == 4
    assert all(len(t.children[c]) == 15 for c in t.collectors)


def test_lone_rank_of_a_node_is_a_plain_worker_of_the_root():
    keys = [0] + [1] * 20 + [21]
    t = build_tree(22, "auto", fan_in=16, keys=keys)
    _check(t)
    assert 21 in t.children[0] and 21 not in t.children


@pytest.mark.parametrize("bad", [-1, 4, "many", True])
def test_bad_settings_are_config_errors(bad):
    with pytest.raises(ConfigError):
        build_tree(7, bad)


def test_fan_in_below_two_is_a_config_error():
    with pytest.raises(ConfigError):
        build_tree(7, "auto", fan_in=1)

"""distasks.broker.keys: every key of a queue lives in one Redis Cluster slot."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from distasks.broker.keys import QueueKeys, queue_keys

QUEUES = ["default", "emails", "a", "A.b-c_9", "x" * 64]
PREFIXES = ["distasks", "dt-1a2b3c4d-7", "tenant:a", "a"]


def hash_tag(key: str) -> str:
    """The part of `key` Redis Cluster hashes: the text between the first `{` and the
    next `}` when it is not empty, else the whole key (CLUSTER KEYSLOT rules)."""
    start = key.find("{")
    if start != -1:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1:end]
    return key


def all_keys(keys: QueueKeys) -> list[str]:
    return [getattr(keys, f.name) for f in dataclasses.fields(keys)]


def test_hash_tag_helper_follows_redis_rules():
    assert hash_tag("p:{q:a}:ready") == "q:a"
    assert hash_tag("p:{}:{q:a}") == "p:{}:{q:a}"  # empty first tag: whole key
    assert hash_tag("p:{q:a}:{other}") == "q:a"  # only the first tag counts
    assert hash_tag("plain") == "plain"


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("queue", QUEUES)
def test_every_key_of_a_queue_shares_the_queue_hash_tag(prefix, queue):
    for key in all_keys(queue_keys(prefix, queue)):
        assert hash_tag(key) == f"q:{queue}", key


@pytest.mark.parametrize("prefix", PREFIXES)
def test_every_key_starts_with_the_prefix_and_a_colon(prefix):
    for key in all_keys(queue_keys(prefix, "default")):
        assert key.startswith(f"{prefix}:"), key


def test_the_keys_of_one_queue_are_all_different():
    keys = all_keys(queue_keys("distasks", "default"))

    assert len(set(keys)) == len(keys)


def test_keys_follow_the_documented_layout():
    keys = queue_keys("distasks", "emails")

    assert keys == QueueKeys(
        ready="distasks:{q:emails}:ready",
        bands="distasks:{q:emails}:bands",
        bell="distasks:{q:emails}:bell",
        priorities="distasks:{q:emails}:priorities",
        delayed="distasks:{q:emails}:delayed",
        dlq="distasks:{q:emails}:dlq",
        leases="distasks:{q:emails}:leases",
        mover_lock="distasks:{q:emails}:mover-lock",
        paused="distasks:{q:emails}:paused",
        max_running="distasks:{q:emails}:max-running",
        room="distasks:{q:emails}:room",
        key_turns="distasks:{q:emails}:key-turns",
        key_running="distasks:{q:emails}:key-running",
        max_per_key="distasks:{q:emails}:max-per-key",
        rate="distasks:{q:emails}:rate",
    )


def test_a_concurrency_key_list_stays_in_the_queue_slot_and_apart_from_priorities():
    keys = queue_keys("distasks", "emails")
    for key in ("a", "{x}", "7", "customer/42"):
        assert hash_tag(keys.keyed(key)) == "q:emails"
        assert keys.keyed(key) not in {keys.band(p) for p in (-1, 0, 7)}


def test_two_queues_get_different_hash_tags():
    assert hash_tag(queue_keys("p", "a").ready) != hash_tag(queue_keys("p", "b").ready)


def test_two_prefixes_never_share_a_key():
    for p1, p2 in itertools.combinations(PREFIXES, 2):
        for queue in QUEUES:
            assert not set(all_keys(queue_keys(p1, queue))) & set(all_keys(queue_keys(p2, queue)))


def test_no_prefix_queue_pair_builds_the_key_of_another():
    seen: dict[str, tuple[str, str]] = {}
    for prefix, queue in itertools.product(PREFIXES, QUEUES):
        for key in all_keys(queue_keys(prefix, queue)):
            assert seen.setdefault(key, (prefix, queue)) == (prefix, queue), key

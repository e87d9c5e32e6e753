"""What the broker decides about a Redis Cluster without one: which URL names one, and
which of the cluster client's failures are outages (retried) rather than bugs."""

from __future__ import annotations

import pytest
import redis.exceptions

from distasks.broker import broker_errors, cluster_url
from distasks.broker.keys import rate_keys
from distasks.domain.errors import BrokerUnavailable


@pytest.mark.parametrize(("url", "flag", "want"), [
    ("redis://h:6379/0", False, ("redis://h:6379/0", False)),
    ("redis://h:6379/0", True, ("redis://h:6379/0", True)),
    ("redis+cluster://h:7000", False, ("redis://h:7000", True)),
    ("rediss+cluster://u:p@h:7000/0", False, ("rediss://u:p@h:7000/0", True)),
])
def test_a_cluster_url_or_the_flag_says_cluster(url, flag, want):
    assert cluster_url(url, flag) == want


@pytest.mark.parametrize("error", [
    redis.exceptions.RedisClusterException(
        "Redis Cluster cannot be connected. Please provide at least one reachable node: x"),
    redis.exceptions.RedisClusterException("All slots are not covered after query all"),
    redis.exceptions.ClusterDownError("The cluster is down"),
    redis.exceptions.SlotNotCoveredError("slot 5 not covered"),
    redis.exceptions.TryAgainError("TRYAGAIN"),
])
def test_a_cluster_out_of_reach_is_an_outage(error):
    with pytest.raises(BrokerUnavailable), broker_errors():
        raise error


def test_keys_of_several_slots_in_one_command_are_a_bug_not_an_outage():
    with pytest.raises(redis.exceptions.RedisClusterException), broker_errors():
        raise redis.exceptions.RedisClusterException("DEL - all keys must map to the same key slot")


def test_a_principals_bucket_and_its_tenants_share_one_slot_per_tenant():
    p, t = rate_keys("dt", "acme/alice", "acme")
    other, _ = rate_keys("dt", "beta/alice", "beta")
    assert p.split("}")[0] == t.split("}")[0] == "dt:{rl:acme"
    assert other.split("}")[0] == "dt:{rl:beta"

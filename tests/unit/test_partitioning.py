"""The relay sends each record to the partition Kafka's default partitioner would pick."""

import random

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from shared.topics import partition_of


@given(st.binary(min_size=1, max_size=64), st.integers(min_value=1, max_value=64))
def test_the_remembered_partition_is_the_default_partitioners(key: bytes, count: int) -> None:
    partitions = list(range(count))
    assert partition_of(key, count) == DefaultPartitioner()(key, partitions, partitions)


def test_keys_spread_over_every_partition() -> None:
    keys = [f"user-{random.getrandbits(64):x}".encode() for _ in range(600)]
    assert {partition_of(key, 6) for key in keys} == set(range(6))

"""Sharded pub/sub without a server: channel names, slot groups, how messages are split."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from tiercache.bus_health import BusHealth
from tiercache.errors import L2Error
from tiercache.layout import entry_key
from tiercache.messages import OP_CLEAR, OP_KEYS, OP_PROBE, OP_TAGS, decode_message
from tiercache.shards import SLOT_GROUPS, ShardedPublisher, group_of, shard_channels


class Recorder:
    """A `Publishing` that records what it is asked to publish."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def publish(self, channel: str, message: bytes) -> int:
        self.sent.append((channel, message))
        return 1


def test_each_shard_channel_hashes_into_its_own_slot_group() -> None:
    """Channel g's hash slot lies in slot group g, so it lives in the shard of its keys."""
    channels = shard_channels("tiercache:inv:shop")
    assert len(channels) == SLOT_GROUPS == len(set(channels))
    for group, channel in enumerate(channels):
        assert channel.startswith("tiercache:inv:shop:{")
        assert group_of(channel) == group
        assert key_slot(channel.encode()) * SLOT_GROUPS // 16384 == group


def test_a_keys_message_is_split_by_slot_group_and_numbered_per_channel() -> None:
    """Keys go to the channel of their own slot group; each channel numbers from 1."""
    redis = Recorder()
    publisher = ShardedPublisher(redis, "tiercache:inv:shop", BusHealth(), entry_key("shop"))
    keys = [f"k{i}" for i in range(40)]

    publisher.publish(OP_KEYS, keys)
    publisher.publish(OP_KEYS, keys[:1])

    channels = publisher.channels
    heard: dict[str, list[str]] = {}
    seqs: dict[str, list[int]] = {}
    for channel, raw in redis.sent:
        message = decode_message(raw)
        assert message.origin == publisher.instance_id
        heard.setdefault(channel, []).extend(message.data)
        seqs.setdefault(channel, []).append(message.seq)
        for key in message.data:
            assert channels[group_of(f"shop:{key}")] == channel
    assert sorted(k for ks in heard.values() for k in ks) == sorted(keys + keys[:1])
    assert all(s == list(range(1, len(s) + 1)) for s in seqs.values())
    assert len(heard) > 1  # 40 keys do not all share one group


@pytest.mark.parametrize("op", [OP_CLEAR, OP_TAGS, OP_PROBE])
def test_clear_tags_and_probe_go_on_the_first_channel_only(op: int) -> None:
    """Every receiver listens on every channel: one message on the first one reaches all."""
    redis = Recorder()
    publisher = ShardedPublisher(redis, "tiercache:inv:shop", BusHealth(), entry_key("shop"))
    data = {OP_CLEAR: 3, OP_TAGS: {"t": 2}, OP_PROBE: b"nonce"}[op]

    publisher.publish(op, data)

    assert [channel for channel, _ in redis.sent] == [publisher.channels[0]]


def test_a_write_pipeline_cannot_carry_a_sharded_publish() -> None:
    """A cluster write publishes separately; a pipeline's PUBLISH would be classic."""
    publisher = ShardedPublisher(Recorder(), "c", BusHealth(), entry_key("shop"))
    with pytest.raises(L2Error, match="pipeline"):
        publisher.publish(OP_KEYS, ["k"], lambda channel, raw: None)

"""benchmarks.pyspy_report: how a py-spy raw profile is summed by kind of work."""

from pathlib import Path

from benchmarks.pyspy_report import kind_of, summarise

LOOP = "Runner.run (asyncio/runners.py:118)"
RELAY = "OutboxRelay.run (shared/outbox.py:313)"
PUBLISH = "outbox_publisher.<locals>.publish (shared/broker.py:76)"
MURMUR = "murmur2 (aiokafka/partitioner.py:60)"
QUERY = "Connection._do_execute (asyncpg/connection.py:1900)"


def test_a_sample_goes_to_the_innermost_kind_of_work() -> None:
    assert kind_of([LOOP, RELAY, PUBLISH, MURMUR]).startswith("Kafka partitioner")
    assert kind_of([LOOP, RELAY, QUERY]).startswith("asyncpg")
    assert kind_of([LOOP, RELAY, PUBLISH]).startswith("shared kit")
    assert kind_of([LOOP]).startswith("event loop")


def test_summary_shares_sum_by_kind_and_overlap_inclusively(tmp_path: Path) -> None:
    profile = tmp_path / "raw.txt"
    profile.write_text(f"{LOOP};{RELAY};{PUBLISH};{MURMUR} 3\n{LOOP};{RELAY};{QUERY} 1\n{LOOP} 4\n")
    text = summarise(profile)
    assert "8 busy samples" in text
    assert " 37.5%  Kafka partitioner" in text
    assert " 50.0%  event loop" in text
    assert " 50.0%  outbox relay" in text  # 4 of 8 under OutboxRelay.run
    assert " 37.5%      of which murmur2" in text

"""The age estimate of shared/lag.py's Backlog, tick by tick (no Kafka)."""

from shared.lag import MAX_SAMPLES, Backlog


def test_the_age_is_that_of_the_first_tick_that_saw_the_oldest_unprocessed_record() -> None:
    backlog = Backlog()
    assert backlog.observe(committed=0, end=0, now=0) == (0, 0.0)
    assert backlog.observe(committed=0, end=5, now=10) == (5, 0.0)  # first seen now
    assert backlog.observe(committed=0, end=8, now=20) == (8, 10.0)
    # Offsets 0-4 processed: offset 5 was first seen at 20.
    assert backlog.observe(committed=5, end=8, now=30) == (3, 10.0)
    assert backlog.observe(committed=8, end=8, now=40) == (0, 0.0)
    assert backlog.observe(committed=8, end=9, now=50) == (1, 0.0)


def test_a_partition_recreated_with_fewer_records_starts_over() -> None:
    backlog = Backlog()
    backlog.observe(committed=0, end=100, now=0)
    assert backlog.observe(committed=0, end=3, now=60) == (3, 0.0)


def test_a_long_backlog_keeps_bounded_samples_and_a_lower_bound() -> None:
    backlog = Backlog()
    for tick in range(MAX_SAMPLES * 3):
        lag, age = backlog.observe(committed=0, end=tick + 1, now=float(tick))
    assert (lag, age) == (MAX_SAMPLES * 3, MAX_SAMPLES * 3 - 1)  # the first sample is kept
    assert len(backlog._samples) <= MAX_SAMPLES
    # Further along, an age is never more than the truth (records first seen at their tick).
    true_first_seen = 2 * MAX_SAMPLES
    _, age = backlog.observe(committed=true_first_seen, end=MAX_SAMPLES * 3, now=1e4)
    assert 0 < age <= 1e4 - true_first_seen

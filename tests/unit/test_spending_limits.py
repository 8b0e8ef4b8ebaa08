"""The spending-limit rule gifting will apply to every debit, at its boundaries."""

from datetime import UTC, datetime, timedelta, timezone

import pytest

from services.wallet.domain import (
    MAX_LIMIT_COINS,
    SpendingLimits,
    Spent,
    check_limit_request,
    exceeded_limit,
    limit_fingerprint,
    period_start,
)
from services.wallet.errors import InvalidSpendingLimitError
from shared.contracts import Period, SpendingLimitRequested

NOW = datetime(2026, 11, 23, 8, tzinfo=UTC)


def test_no_limit_allows_anything() -> None:
    assert exceeded_limit(SpendingLimits(), Spent(10**9, 10**9, 10**9), 10**9) is None


@pytest.mark.parametrize(
    ("spent", "debit", "refused"),
    [(0, 100, None), (99, 1, None), (100, 0, None), (99, 2, "day"), (100, 1, "day")],
)
def test_reaching_a_limit_exactly_is_allowed_one_coin_more_is_not(
    spent: int, debit: int, refused: Period | None
) -> None:
    assert exceeded_limit(SpendingLimits(day=100), Spent(day=spent), debit) == refused


def test_a_zero_limit_refuses_any_spending() -> None:
    assert exceeded_limit(SpendingLimits(month=0), Spent(), 1) == "month"
    assert exceeded_limit(SpendingLimits(month=0), Spent(), 0) is None


@pytest.mark.parametrize(
    ("spent", "refused"),
    [
        (Spent(day=0, week=450, month=450), "week"),  # the day is fine, the week is not
        (Spent(day=0, week=0, month=950), "month"),
        (Spent(day=50, week=450, month=950), "day"),  # several: the shortest period first
        (Spent(day=40, week=440, month=940), None),
    ],
)
def test_every_period_counts_on_its_own(spent: Spent, refused: Period | None) -> None:
    limits = SpendingLimits(day=100, week=500, month=1000)
    assert exceeded_limit(limits, spent, 60) == refused


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.mark.parametrize(
    ("now", "day", "week", "month"),
    [
        # A Wednesday mid-month.
        ("2026-11-18T15:30:00+00:00", "2026-11-18", "2026-11-16", "2026-11-01"),
        # The first and the last instant of an ISO week (Monday 00:00 to Sunday 23:59:59).
        ("2026-11-16T00:00:00+00:00", "2026-11-16", "2026-11-16", "2026-11-01"),
        ("2026-11-22T23:59:59.999999+00:00", "2026-11-22", "2026-11-16", "2026-11-01"),
        # A week that began in the previous month, and in the previous year.
        ("2026-12-02T08:00:00+00:00", "2026-12-02", "2026-11-30", "2026-12-01"),
        ("2027-01-01T00:00:00+00:00", "2027-01-01", "2026-12-28", "2027-01-01"),
        # The last instant of a month, leap day included.
        ("2028-02-29T23:59:59+00:00", "2028-02-29", "2028-02-28", "2028-02-01"),
    ],
)
def test_periods_are_utc_calendar_periods_with_weeks_from_monday(
    now: str, day: str, week: str, month: str
) -> None:
    expected = {"day": day, "week": week, "month": month}
    for period, start in expected.items():
        assert period_start(period, at(now)) == at(f"{start}T00:00:00+00:00")  # type: ignore[arg-type]


def test_a_time_in_another_zone_counts_in_utc() -> None:
    berlin = timezone(timedelta(hours=1))
    # Monday 23 November 00:30 in Berlin is still Sunday in UTC: the week before.
    monday_in_berlin = datetime(2026, 11, 23, 0, 30, tzinfo=berlin)
    assert period_start("day", monday_in_berlin) == datetime(2026, 11, 22, tzinfo=UTC)
    assert period_start("week", monday_in_berlin) == datetime(2026, 11, 16, tzinfo=UTC)
    # 1 December 00:30 in Berlin is still November in UTC.
    december_in_berlin = datetime(2026, 12, 1, 0, 30, tzinfo=berlin)
    assert period_start("month", december_in_berlin) == datetime(2026, 11, 1, tzinfo=UTC)


def test_a_naive_time_is_refused() -> None:
    with pytest.raises(ValueError):
        period_start("day", datetime(2026, 11, 18, 12, 0))


def limit_request(max_coins: int | None, *, period: Period = "day") -> SpendingLimitRequested:
    return SpendingLimitRequested(
        request_id="limit-1",
        user_id="u1",
        period=period,
        max_coins=max_coins,
        occurred_at=datetime(2026, 11, 22, 12, tzinfo=UTC),
    )


@pytest.mark.parametrize("max_coins", [None, 0, MAX_LIMIT_COINS])
def test_a_limit_a_coin_count_can_hold_is_accepted(max_coins: int | None) -> None:
    check_limit_request(limit_request(max_coins))


@pytest.mark.parametrize("max_coins", [2**63, 10**30])
def test_a_limit_beyond_any_coin_count_is_an_invalid_request(max_coins: int) -> None:
    with pytest.raises(InvalidSpendingLimitError) as refused:
        check_limit_request(limit_request(max_coins))
    assert refused.value.reason == "invalid_request"


def test_the_fingerprint_tells_another_limit_from_the_same_one() -> None:
    same = limit_fingerprint(limit_request(100))
    assert limit_fingerprint(limit_request(100).model_copy(update={"occurred_at": NOW})) == same
    assert {
        limit_fingerprint(limit_request(101)),
        limit_fingerprint(limit_request(None)),
        limit_fingerprint(limit_request(100, period="week")),
    }.isdisjoint({same})

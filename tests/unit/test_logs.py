"""Logs are JSON lines carrying the service and the message's identity, or readable
lines on a terminal; the level comes from the environment."""

import json
import logging
from collections.abc import Iterator
from typing import ClassVar

import pytest

from shared.logs import configure_logging, record_fields
from shared.settings import ServiceSettings


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_json_line_names_the_service_and_the_message(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "wallet", "json")
    fields = record_fields(request_id="gift-1", topic="gifting.gift-debit-requested", offset=7)

    logging.getLogger("services.wallet.gifts").warning("refusing %s", "gift-1", extra=fields)

    (line,) = capsys.readouterr().err.splitlines()
    entry = json.loads(line)
    assert entry["service"] == "wallet"
    assert entry["level"] == "warning"
    assert entry["logger"] == "services.wallet.gifts"
    assert entry["event"] == "refusing gift-1"
    assert entry["request_id"] == "gift-1"
    assert (entry["topic"], entry["offset"]) == ("gifting.gift-debit-requested", 7)
    assert "partition" not in entry  # fields that do not apply are left out
    assert entry["timestamp"].endswith("Z")


def test_an_exception_stays_on_its_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "payment", "json")
    try:
        raise ValueError("declined")
    except ValueError:
        logging.getLogger("x").exception("charge failed")

    (line,) = capsys.readouterr().err.splitlines()
    entry = json.loads(line)
    assert entry["event"] == "charge failed"
    assert "ValueError: declined" in entry["exception"]


def test_the_level_filters(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("warning", "gifting", "json")
    logging.getLogger("x").info("not shown")
    logging.getLogger("x").warning("shown")
    assert [json.loads(line)["event"] for line in capsys.readouterr().err.splitlines()] == ["shown"]


def test_console_lines_are_for_people(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "payout", "console")
    logging.getLogger("x").warning(
        "payout %s rejected", "p-1", extra=record_fields(request_id="p-1")
    )
    line = capsys.readouterr().err.strip()
    assert "payout p-1 rejected" in line and "request_id=p-1" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_level_and_format_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    class Settings(ServiceSettings):
        service_name: ClassVar[str] = "wallet"

    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("LOG_FORMAT", "json")
    settings = Settings()
    assert (settings.log_level, settings.log_format) == ("DEBUG", "json")
    monkeypatch.setenv("LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="log_format"):
        Settings()


def test_faststreams_own_logger_writes_json_lines_too(capsys: pytest.CaptureFixture[str]) -> None:
    import faststream  # noqa: F401  (its import gives the "faststream" logger a handler)

    configure_logging("INFO", "wallet", "json")
    logging.getLogger("faststream").info("Consumer assigned to partitions")

    (line,) = capsys.readouterr().err.splitlines()
    assert json.loads(line)["logger"] == "faststream"

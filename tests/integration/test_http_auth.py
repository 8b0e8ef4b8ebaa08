"""Bearer tokens in front of the real services' HTTP reads (CONTRACT.md, Security):
wallet, payment and payout in this process against real Kafka and PostgreSQL.

401 without a valid token, 403 for another user's balance, history or payout list,
404 for another user's purchase or payout (as for an unknown request id: its existence
is not told), 200 for one's own data and for an operator. `/health/*` and the catalog
are open; `/metrics` needs the operator scope.
"""

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.payment.main import create_app as create_payment
from services.payment.settings import PaymentSettings
from services.payout.main import create_app as create_payout
from services.payout.settings import PayoutSettings
from services.wallet.main import create_app as create_wallet
from services.wallet.settings import WalletSettings
from shared import auth, topics
from shared.auth import AuthConfigError
from tests.support import eventually, in_process, publish, purchase_request, unique

pytestmark = pytest.mark.integration


@dataclass
class Services:
    wallet: httpx.AsyncClient
    payment: httpx.AsyncClient
    payout: httpx.AsyncClient
    keys: auth.KeyPair

    def token(self, subject: str, *, operator: bool = False) -> dict[str, str]:
        return bearer(auth.mint_token(self.keys.private, subject, operator=operator))

    @property
    def operator(self) -> dict[str, str]:
        return self.token(unique("ops"), operator=True)

    @property
    def clients(self) -> tuple[httpx.AsyncClient, ...]:
        return (self.wallet, self.payment, self.payout)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
async def services(
    service_settings: Callable[..., Any], jwt_keys: auth.KeyPair
) -> AsyncIterator[Services]:
    """The three services with user data, their clients sending no token of their own."""
    wallet_app = create_wallet(service_settings(WalletSettings))
    payment_app = create_payment(service_settings(PaymentSettings))
    payout_app = create_payout(service_settings(PayoutSettings, reconcile_interval_s=0.2))
    async with (
        in_process(wallet_app) as wallet,
        in_process(payment_app) as payment,
        in_process(payout_app) as payout,
    ):
        yield Services(wallet, payment, payout, jwt_keys)


@pytest.fixture(scope="module")
async def purchase(services: Services, infra: Any) -> dict[str, Any]:
    """A purchase of its own user, once the payment service has recorded it."""
    request = purchase_request(user_id=unique("ada"))
    await publish(infra, topics.PURCHASE_REQUESTED, [(request["user_id"], request)])
    path = f"/v1/purchases/{request['request_id']}"

    async def recorded() -> bool:
        return (await services.payment.get(path, headers=services.operator)).status_code == 200

    await eventually(recorded)
    return request


@pytest.fixture(scope="module")
async def payout(services: Services, infra: Any) -> dict[str, Any]:
    """A payout request of its own creator (unknown, so refused at once), once recorded."""
    request: dict[str, Any] = {
        "request_id": unique("payout"),
        "creator_id": unique("carol"),
        "diamonds": 2_000,
        "occurred_at": datetime.now(UTC).isoformat(),
    }
    await publish(infra, topics.PAYOUT_REQUESTED, [(request["creator_id"], request)])
    path = f"/v1/payouts/{request['request_id']}"

    async def recorded() -> bool:
        return (await services.payout.get(path, headers=services.operator)).status_code == 200

    await eventually(recorded)
    return request


def user_paths(user: str) -> list[tuple[str, str]]:
    return [
        ("wallet", f"/v1/users/{user}/balance"),
        ("wallet", f"/v1/users/{user}/transactions"),
        ("payout", f"/v1/creators/{user}/payouts"),
    ]


async def test_without_a_valid_token_every_user_read_is_401(
    services: Services, purchase: dict[str, Any], payout: dict[str, Any], tmp_path: Path
) -> None:
    ada = purchase["user_id"]
    stranger = auth.generate_key_pair(tmp_path / "private.pem", tmp_path / "public.pem")
    expired = auth.mint_token(services.keys.private, ada, ttl=timedelta(minutes=-5))
    paths = [
        *user_paths(ada),
        ("payment", f"/v1/purchases/{purchase['request_id']}"),
        ("payout", f"/v1/payouts/{payout['request_id']}"),
    ]
    bad_tokens = {
        "none": {},
        "not a JWT": bearer("not-a-token"),
        "other scheme": {"Authorization": f"Basic {auth.mint_token(services.keys.private, ada)}"},
        "expired": bearer(expired),
        "another key": bearer(auth.mint_token(stranger.private, ada, operator=True)),
    }
    for service, path in paths:
        client = getattr(services, service)
        for case, headers in bad_tokens.items():
            answer = await client.get(path, headers=headers)
            assert (answer.status_code, answer.json()["error"]) == (401, "unauthorized"), (
                path,
                case,
            )
            assert answer.headers["WWW-Authenticate"].startswith('Bearer realm="coinstream"')


async def test_a_user_reads_their_own_data_and_an_operator_anyones(
    services: Services, purchase: dict[str, Any], payout: dict[str, Any]
) -> None:
    ada, carol = purchase["user_id"], payout["creator_id"]

    for headers in (services.token(ada), services.operator):
        balance = await services.wallet.get(f"/v1/users/{ada}/balance", headers=headers)
        history = await services.wallet.get(f"/v1/users/{ada}/transactions", headers=headers)
        bought = await services.payment.get(
            f"/v1/purchases/{purchase['request_id']}", headers=headers
        )
        assert (balance.status_code, balance.json()["user_id"]) == (200, ada)
        assert history.status_code == 200 and "items" in history.json()
        assert (bought.status_code, bought.json()["user_id"]) == (200, ada)
    for headers in (services.token(carol), services.operator):
        paid = await services.payout.get(f"/v1/payouts/{payout['request_id']}", headers=headers)
        listed = await services.payout.get(f"/v1/creators/{carol}/payouts", headers=headers)
        assert (paid.status_code, paid.json()["creator_id"]) == (200, carol)
        assert [item["request_id"] for item in listed.json()["items"]] == [payout["request_id"]]


async def test_another_users_data_is_403_and_their_request_ids_404(
    services: Services, purchase: dict[str, Any], payout: dict[str, Any]
) -> None:
    ada, carol = purchase["user_id"], payout["creator_id"]
    mallory = services.token(unique("mallory"))

    for owner in (ada, carol):
        for service, path in user_paths(owner):
            answer = await getattr(services, service).get(path, headers=mallory)
            assert (answer.status_code, answer.json()["error"]) == (403, "forbidden"), path
    # The same answer as for a request id nobody sent: mallory learns nothing.
    for client, known, path in (
        (services.payment, purchase, "/v1/purchases"),
        (services.payout, payout, "/v1/payouts"),
    ):
        theirs = await client.get(f"{path}/{known['request_id']}", headers=mallory)
        unknown = await client.get(f"{path}/{unique('nope')}", headers=mallory)
        assert theirs.status_code == unknown.status_code == 404
        assert theirs.json()["error"] == unknown.json()["error"] == "not_found"
    # A creator's token does not read the purchase of a user either, nor the reverse.
    assert (
        await services.payment.get(
            f"/v1/purchases/{purchase['request_id']}", headers=services.token(carol)
        )
    ).status_code == 404
    assert (
        await services.payout.get(
            f"/v1/payouts/{payout['request_id']}", headers=services.token(ada)
        )
    ).status_code == 404


async def test_health_is_open_and_metrics_need_the_operator_scope(services: Services) -> None:
    user = services.token(unique("ada"))
    for client in services.clients:
        assert (await client.get("/health/live")).status_code == 200

        async def ready(client: httpx.AsyncClient = client) -> bool:
            return (await client.get("/health/ready")).status_code == 200

        await eventually(ready)
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/metrics", headers=user)).status_code == 403
        metrics = await client.get("/metrics", headers=services.operator)
        assert metrics.status_code == 200 and "# TYPE" in metrics.text


async def test_the_catalog_and_the_signed_webhook_need_no_token(services: Services) -> None:
    packages = await services.payment.get("/v1/packages")
    unsigned = await services.payment.post("/v1/webhooks/chargebacks", content=b"{}")

    assert packages.status_code == 200 and packages.json()["packages"]
    # Judged by its own signature (400 unsigned, 503 without a secret), never by a bearer.
    assert unsigned.status_code in (400, 503) and "WWW-Authenticate" not in unsigned.headers


def test_a_service_without_a_token_key_refuses_to_start(
    service_settings: Callable[..., Any],
) -> None:
    settings = service_settings(WalletSettings, auth=auth.AuthSettings())

    with pytest.raises(AuthConfigError, match="no key to verify HTTP bearer tokens"):
        create_wallet(settings)

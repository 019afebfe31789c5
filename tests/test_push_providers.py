"""The push providers (FCM, APNs, the ntfy-style gateway) against the provider simulator run
in-process: their authentication as the simulator sees it, the payload, one call per device, gone
devices, and the mapping of failures to retry / wait / give up."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.providers import OutboundMessage, build_provider
from actors.providers.apns import ApnsProvider, apns_id, close_client
from actors.providers.devices import DeviceGone, send_to_devices
from actors.providers.fcm import FcmProvider
from actors.providers.http import close_session
from ground.errors import (
    ConfigError,
    DevicesGone,
    PermanentChannelError,
    ProviderRateLimited,
    TransientChannelError,
)
from ground.settings import Secret
from ops.harness.daemon import free_port
from ops.simulator import SIMULATOR, build_simulator_app
from ops.simulator_push import expire_provider_tokens, revoke_access_tokens, state
from tests.support.push_keys import PROJECT, rsa_pem, service_account_file

KEY_ID = "ABC123DEFG"
TEAM_ID = "DEF123GHIJ"
TOPIC = "com.example.app"

ApnsKey = tuple[Path, ec.EllipticCurvePublicKey]  # the .p8 file and the public half


def push(key: str = "k1", **devices: tuple[str, ...]) -> OutboundMessage:
    return OutboundMessage(send_id=1, channel="push", idempotency_key=key, recipient="user-42",
                           subject="Your cart", body="is waiting for you", devices=devices)


def options(**values: str) -> dict[str, Secret]:
    return {k: Secret(v) for k, v in values.items()}


@pytest.fixture
async def clients() -> AsyncIterator[None]:
    """The loop's shared HTTP clients, closed after the test even when it failed half-way."""
    yield
    await close_session()
    await close_client()


@pytest.fixture
async def simulator(aiohttp_server: Any, clients: None) -> AsyncIterator[TestServer]:
    yield await aiohttp_server(build_simulator_app())


def recorded(server: TestServer) -> list[dict[str, Any]]:
    return [m for m in server.app[SIMULATOR].deliveries.messages if m["channel"] == "push"]


# -- keys -----------------------------------------------------------------------------------------




@pytest.fixture
def apns_key(tmp_path: Path) -> ApnsKey:
    """An APNs signing key (.p8, P-256) and its public half."""
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / f"AuthKey_{KEY_ID}.p8"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path, key.public_key()


def fcm(server: TestServer, tmp_path: Path) -> FcmProvider:
    key_file = service_account_file(tmp_path, str(server.make_url("/token")))
    provider = build_provider("fcm", options(credentials=str(key_file), url=str(server.make_url(""))), "push")
    assert isinstance(provider, FcmProvider)
    return provider


def apns(server: TestServer, key_file: Path) -> ApnsProvider:
    provider = build_provider("apns", options(key_file=str(key_file), key_id=KEY_ID, team_id=TEAM_ID, topic=TOPIC,
                                              url=str(server.make_url(""))), "push")
    assert isinstance(provider, ApnsProvider)
    return provider


# -- FCM ------------------------------------------------------------------------------------------


async def test_fcm_sends_each_device_once_with_the_access_token_the_simulator_issued(simulator: TestServer, tmp_path: Path) -> None:
    # Given an FCM provider whose key file points at the simulator's token endpoint
    provider = fcm(simulator, tmp_path)
    # When a send goes to a contact with three Android devices
    result = await provider.send(push("k1", fcm=("tok-a", "tok-b", "tok-c"), apns=("apple-1",)))
    # Then each device got one call (the apns token is not FCM's), under one access token that the
    # simulator issued, fetched once for the three concurrent calls
    messages = recorded(simulator)
    assert sorted(m["to"] for m in messages) == ["tok-a", "tok-b", "tok-c"]
    issued = list(state(simulator.app[SIMULATOR]).access_tokens)
    assert len(issued) == 1 and provider.token_refreshes == 1
    assert {m["authorization"] for m in messages} == {f"Bearer {issued[0]}"}
    # And each carries the FCM v1 message: the notification and the idempotency key as data
    for m in messages:
        assert (m["provider"], m["project"], m["title"], m["body"]) == ("fcm", PROJECT, "Your cart", "is waiting for you")
        assert m["data"] == {"idempotency_key": "k1"}
    assert str(result.provider_message_id).startswith(f"projects/{PROJECT}/messages/")
    assert result.invalid_devices == ()
    # And a second send reuses the cached token
    await provider.send(push("k2", fcm=("tok-a",)))
    assert provider.token_refreshes == 1 and recorded(simulator)[-1]["authorization"] == f"Bearer {issued[0]}"
    await provider.close()


async def test_fcm_gets_a_new_token_once_when_fcm_answers_401(simulator: TestServer, tmp_path: Path) -> None:
    # Given a provider holding an access token, which the simulator then forgets
    provider = fcm(simulator, tmp_path)
    await provider.send(push("k1", fcm=("tok-a",)))
    first = recorded(simulator)[-1]["authorization"]
    revoke_access_tokens(simulator.app[SIMULATOR])
    # When it sends to three devices, each first answered 401
    result = await provider.send(push("k2", fcm=("tok-a", "tok-b", "tok-c")))
    # Then one new token was fetched for the three, and each call was tried again with it
    assert result.provider_message_id and provider.token_refreshes == 2
    second = {m["authorization"] for m in recorded(simulator)[1:]}
    assert len(second) == 1 and first not in second and len(recorded(simulator)) == 4
    await provider.close()


async def test_fcm_reports_gone_tokens_and_sends_to_the_others(simulator: TestServer, tmp_path: Path) -> None:
    provider = fcm(simulator, tmp_path)
    # When one device is unregistered (404 UNREGISTERED) and one token is malformed (400 on message.token)
    result = await provider.send(push("k1", fcm=("unregistered-old", "tok-a", "invalid-x")))
    # Then the send succeeded for the live one, and both others are reported gone
    assert [m["to"] for m in recorded(simulator)] == ["tok-a"]
    assert result.provider_message_id and set(result.invalid_devices) == {"unregistered-old", "invalid-x"}
    await provider.close()


async def test_fcm_all_devices_gone_is_devices_gone_naming_no_token(simulator: TestServer, tmp_path: Path) -> None:
    provider = fcm(simulator, tmp_path)
    with pytest.raises(DevicesGone) as gone:
        await provider.send(push("k1", fcm=("unregistered-1", "unregistered-2")))
    assert gone.value.devices == ("unregistered-1", "unregistered-2")
    assert "UNREGISTERED" in str(gone.value) and "unregistered-1" not in str(gone.value)
    assert recorded(simulator) == []
    await provider.close()


async def test_fcm_outages_and_rate_limits(simulator: TestServer, tmp_path: Path) -> None:
    # Given a provider with its token, and FCM then answering 503 to every call
    provider = fcm(simulator, tmp_path)
    await provider.send(push("k0", fcm=("tok-a",)))
    sim = simulator.app[SIMULATOR]
    sim.error_rate = 1.0
    with pytest.raises(TransientChannelError, match="fcm answered 503") as failed:
        await provider.send(push("k1", fcm=("tok-a", "tok-b")))
    assert not isinstance(failed.value, ProviderRateLimited)
    # When it answers 429 instead, the channel is told to wait FCM's Retry-After
    sim.error_rate, sim.rate_429 = 0.0, 1.0
    with pytest.raises(ProviderRateLimited) as limited:
        await provider.send(push("k2", fcm=("tok-a", "tok-b")))
    assert limited.value.retry_after_s == 1
    assert len(recorded(simulator)) == 1  # only the first send was delivered
    await provider.close()


async def test_fcm_unreachable_is_transient(tmp_path: Path, clients: None) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    key_file = service_account_file(tmp_path, f"{nobody}/token")
    provider = build_provider("fcm", options(credentials=str(key_file), url=nobody), "push")
    with pytest.raises(TransientChannelError, match="fcm: token endpoint unreachable"):
        await provider.send(push("k1", fcm=("tok-a",)))
    await provider.close()


async def test_fcm_when_the_token_endpoint_refuses_the_service_account(simulator: TestServer, tmp_path: Path) -> None:
    # Given a key file whose client_email is no service account's (the token endpoint says invalid_grant)
    key_file = service_account_file(tmp_path, str(simulator.make_url("/token")), client_email="nobody")
    provider = build_provider("fcm", options(credentials=str(key_file), url=str(simulator.make_url(""))), "push")
    # Then the send fails for good, naming the OAuth error and nothing of the key
    with pytest.raises(PermanentChannelError, match=r"^fcm: the token endpoint refused the service account \(invalid_grant\)$"):
        await provider.send(push("k1", fcm=("tok-a",)))
    assert recorded(simulator) == []
    await provider.close()


async def test_fcm_without_a_device_token_is_permanent(simulator: TestServer, tmp_path: Path) -> None:
    provider = fcm(simulator, tmp_path)
    with pytest.raises(PermanentChannelError, match="^fcm: the contact has no fcm device token$") as refused:
        await provider.send(push("k1", apns=("apple-1",)))
    assert not isinstance(refused.value, DevicesGone)
    assert state(simulator.app[SIMULATOR]).access_tokens == {}  # not even a token was fetched
    await provider.close()


def test_fcm_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="RETENTIOND_PROVIDER_FCM_CREDENTIALS: required"):
        build_provider("fcm", options(), "push")
    with pytest.raises(ConfigError, match="RETENTIOND_PROVIDER_FCM_CREDENTIALS: cannot read"):
        build_provider("fcm", options(credentials=str(tmp_path / "missing.json")), "push")
    (tmp_path / "broken.json").write_text('{"type": "service_account", "private_key": "x"}')
    with pytest.raises(ConfigError, match="RETENTIOND_PROVIDER_FCM_CREDENTIALS: not a Google service-account"):
        build_provider("fcm", options(credentials=str(tmp_path / "broken.json")), "push")
    without_project = service_account_file(tmp_path, "https://oauth2.googleapis.com/token", project_id=None)
    with pytest.raises(ConfigError, match="RETENTIOND_PROVIDER_FCM_PROJECT_ID"):
        build_provider("fcm", options(credentials=str(without_project)), "push")
    chosen = build_provider("fcm", options(credentials=str(without_project), project_id="other"), "push")
    assert isinstance(chosen, FcmProvider)
    assert chosen.endpoint == "https://fcm.googleapis.com/v1/projects/other/messages:send"
    with pytest.raises(ConfigError, match="RETENTIOND_CHANNEL_EMAIL_PROVIDER: fcm sends push only"):
        build_provider("fcm", options(credentials=str(without_project), project_id="other"), "email")


# -- APNs -----------------------------------------------------------------------------------------


async def test_apns_signs_each_call_with_the_team_key(simulator: TestServer, apns_key: ApnsKey) -> None:
    key_file, public_key = apns_key
    provider = apns(simulator, key_file)
    # When a send goes to two iPhones
    result = await provider.send(push("k1", apns=("iphone-1", "iphone-2"), fcm=("tok-a",)))
    messages = recorded(simulator)
    assert sorted(m["to"] for m in messages) == ["iphone-1", "iphone-2"]
    for m in messages:
        # Then each call carries a provider token that verifies with the team's public key
        scheme, _, token = m["authorization"].partition(" ")
        assert scheme == "bearer"
        claims = jwt.decode(token, public_key, algorithms=["ES256"])
        assert claims["iss"] == TEAM_ID and isinstance(claims["iat"], int)
        assert jwt.get_unverified_header(token)["kid"] == KEY_ID
        # And the alert, the app's topic, and an apns-id made of the send's key and the device
        assert (m["provider"], m["title"], m["body"]) == ("apns", "Your cart", "is waiting for you")
        assert (m["topic"], m["push_type"], m["priority"]) == (TOPIC, "alert", "10")
        assert m["apns_id"] == apns_id("k1", m["to"])
    assert len({m["authorization"] for m in messages}) == 1 and provider.jwts_made == 1
    assert result.provider_message_id in {apns_id("k1", "iphone-1"), apns_id("k1", "iphone-2")}
    await provider.close()


async def test_a_retried_apns_send_carries_the_same_apns_id(simulator: TestServer, apns_key: ApnsKey) -> None:
    provider = apns(simulator, apns_key[0])
    sim = simulator.app[SIMULATOR]
    # Given a first try that APNs answered 503
    sim.error_rate = 1.0
    with pytest.raises(TransientChannelError, match="apns answered 503"):
        await provider.send(push("k1", apns=("iphone-1",)))
    # When the send is retried, twice (the second as if the first answer had been lost)
    sim.error_rate = 0.0
    first = await provider.send(push("k1", apns=("iphone-1",)))
    again = await provider.send(push("k1", apns=("iphone-1",)))
    # Then every try carried the same apns-id, so the simulator sees a duplicate, not two notifications
    assert first.provider_message_id == again.provider_message_id == apns_id("k1", "iphone-1")
    assert [m["apns_id"] for m in recorded(simulator)] == [first.provider_message_id] * 2
    assert sim.deliveries.duplicates == 1
    # And another send to the same device has another id
    assert (await provider.send(push("k2", apns=("iphone-1",)))).provider_message_id != first.provider_message_id
    await provider.close()


async def test_apns_makes_a_new_provider_token_when_apple_says_it_expired(simulator: TestServer, apns_key: ApnsKey) -> None:
    provider = apns(simulator, apns_key[0])
    await provider.send(push("k1", apns=("iphone-1",)))
    old = recorded(simulator)[-1]["authorization"]
    # Given APNs now answers 403 ExpiredProviderToken to the token in use
    expire_provider_tokens(simulator.app[SIMULATOR])
    # When a send goes to two devices
    result = await provider.send(push("k2", apns=("iphone-1", "iphone-2")))
    # Then one new token was made for both, and each call was tried again with it
    assert result.provider_message_id and provider.jwts_made == 2
    renewed = {m["authorization"] for m in recorded(simulator)[1:]}
    assert len(renewed) == 1 and old not in renewed and len(recorded(simulator)) == 3
    await provider.close()


async def test_apns_reports_gone_tokens_and_all_gone_is_devices_gone(simulator: TestServer, apns_key: ApnsKey) -> None:
    provider = apns(simulator, apns_key[0])
    result = await provider.send(push("k1", apns=("unregistered-1", "iphone-1", "bad-2")))
    assert [m["to"] for m in recorded(simulator)] == ["iphone-1"]
    assert set(result.invalid_devices) == {"unregistered-1", "bad-2"}
    with pytest.raises(DevicesGone) as gone:
        await provider.send(push("k2", apns=("unregistered-1", "bad-2")))
    assert set(gone.value.devices) == {"unregistered-1", "bad-2"}
    assert "BadDeviceToken" in str(gone.value) and "Unregistered" in str(gone.value)
    assert "bad-2" not in str(gone.value) and "Your cart" not in str(gone.value)
    await provider.close()


async def test_apns_outages_rate_limits_and_missing_devices(simulator: TestServer, apns_key: ApnsKey) -> None:
    provider = apns(simulator, apns_key[0])
    sim = simulator.app[SIMULATOR]
    sim.rate_429 = 1.0
    with pytest.raises(ProviderRateLimited) as limited:
        await provider.send(push("k1", apns=("iphone-1", "iphone-2")))
    assert limited.value.retry_after_s == 1
    with pytest.raises(PermanentChannelError, match="^apns: the contact has no apns device token$"):
        await provider.send(push("k1", fcm=("tok-a",)))
    await provider.close()
    nobody = build_provider("apns", options(key_file=str(apns_key[0]), key_id=KEY_ID, team_id=TEAM_ID, topic=TOPIC,
                                            url=f"http://127.0.0.1:{free_port()}"), "push")
    with pytest.raises(TransientChannelError, match="apns: ConnectError"):
        await nobody.send(push("k1", apns=("iphone-1",)))
    await nobody.close()


def test_apns_settings(apns_key: ApnsKey, tmp_path: Path) -> None:
    complete = {"key_file": str(apns_key[0]), "key_id": KEY_ID, "team_id": TEAM_ID, "topic": TOPIC}
    for missing in complete:
        with pytest.raises(ConfigError, match=f"RETENTIOND_PROVIDER_APNS_{missing.upper()}: required"):
            build_provider("apns", options(**{k: v for k, v in complete.items() if k != missing}), "push")
    rsa_file = tmp_path / "rsa.p8"
    rsa_file.write_text(rsa_pem())
    with pytest.raises(ConfigError, match="RETENTIOND_PROVIDER_APNS_KEY_FILE: expected Apple's P-256") as wrong:
        build_provider("apns", options(**{**complete, "key_file": str(rsa_file)}), "push")
    assert "PRIVATE KEY" not in str(wrong.value)
    with pytest.raises(ConfigError, match="RETENTIOND_PROVIDER_APNS_KEY_FILE: cannot read"):
        build_provider("apns", options(**{**complete, "key_file": str(tmp_path / "nope.p8")}), "push")
    provider = build_provider("apns", options(**complete), "push")
    assert isinstance(provider, ApnsProvider) and provider.url == "https://api.push.apple.com"


# -- the ntfy-style gateway -----------------------------------------------------------------------


@pytest.fixture
async def gateway(aiohttp_server: Any, clients: None) -> AsyncIterator[tuple[TestServer, list[dict[str, Any]]]]:
    posted: list[dict[str, Any]] = []

    async def receive(request: web.Request) -> web.Response:
        posted.append(await request.json())
        return web.json_response({"id": "n1"})
    app = web.Application()
    app.router.add_post("/push", receive)
    yield await aiohttp_server(app), posted


async def test_the_push_gateway_publishes_to_the_contacts_secret_topic(gateway: tuple[TestServer, list[dict[str, Any]]]) -> None:
    server, posted = gateway
    provider = build_provider("push", options(url=str(server.make_url("/push"))), "push")
    await provider.send(push("k1", ntfy=("t-9f8e7d6c5b4a",)))
    assert posted == [{"topic": "t-9f8e7d6c5b4a", "title": "Your cart", "message": "is waiting for you"}]
    # never to the external id, which others may know
    with pytest.raises(PermanentChannelError, match="no ntfy topic"):
        await provider.send(push("k2"))
    assert len(posted) == 1
    await provider.close()


def test_the_push_gateway_has_no_public_default() -> None:
    with pytest.raises(ConfigError, match="RETENTIOND_PROVIDER_PUSH_URL: required"):
        build_provider("push", options(token="t"), "push")


# -- the fan-out shared by FCM and APNs -----------------------------------------------------------

OUTCOMES = st.one_of(st.sampled_from(["ok", "gone", "transient", "permanent"]), st.integers(0, 120))  # int: a 429


def fake_device_call(outcomes: dict[str, Any], calls: list[str]) -> Callable[[str], Any]:
    async def send_one(device: str) -> str:
        calls.append(device)
        outcome = outcomes[device]
        if outcome == "ok":
            return f"id-{device}"
        if outcome == "gone":
            raise DeviceGone("UNREGISTERED")
        if outcome == "transient":
            raise TransientChannelError("x answered 503")
        if outcome == "permanent":
            raise PermanentChannelError("x answered 403")
        raise ProviderRateLimited("x answered 429", outcome)
    return send_one


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), OUTCOMES), max_size=8))
def test_a_push_sends_outcome_follows_its_devices_outcomes(draws: list[tuple[str, Any]]) -> None:
    # Given a contact's devices (perhaps listed twice) and what the push service says of each
    outcomes = dict(draws)  # a device listed twice has one outcome
    devices = tuple(device for device, _ in draws)
    distinct = list(dict.fromkeys(devices))
    calls: list[str] = []
    message = OutboundMessage(send_id=1, channel="push", idempotency_key="k", recipient=None, subject="s",
                              body="b", devices={"fcm": devices})
    # When the send goes out
    try:
        result: Any = asyncio.run(send_to_devices("fcm", "fcm", message, fake_device_call(outcomes, calls)))
    except Exception as exc:  # the outcome under test
        result = exc
    # Then each device was called once, and the outcome is the one the rules give
    assert sorted(calls) == sorted(distinct)
    gone = tuple(d for d in distinct if outcomes[d] == "gone")
    accepted = [d for d in distinct if outcomes[d] == "ok"]
    waits = [outcomes[d] for d in distinct if isinstance(outcomes[d], int)]
    if not distinct:
        assert type(result) is PermanentChannelError and "no fcm device token" in str(result)
    elif accepted:
        assert result.provider_message_id == f"id-{accepted[0]}" and result.invalid_devices == gone
    elif len(gone) == len(distinct):
        assert isinstance(result, DevicesGone) and result.devices == gone
    elif waits:
        assert isinstance(result, ProviderRateLimited) and result.retry_after_s == max(waits)
    elif any(outcomes[d] == "transient" for d in distinct):
        assert type(result) is TransientChannelError
    else:
        assert type(result) is PermanentChannelError  # not DevicesGone: some other refusal


async def test_the_devices_are_called_concurrently() -> None:
    # Given three devices whose calls each wait until all three have started
    started: list[str] = []
    all_started = asyncio.Event()

    async def send_one(device: str) -> str:
        started.append(device)
        if len(started) == 3:
            all_started.set()
        await all_started.wait()
        return f"id-{device}"
    # Then the send completes (one after the other, the first call would wait forever)
    result = await asyncio.wait_for(send_to_devices("apns", "apns", push(apns=("a", "b", "c")), send_one), 10)
    assert result.provider_message_id == "id-a" and started == ["a", "b", "c"]


# -- the simulator refuses what the real services refuse ------------------------------------------


async def test_the_simulated_push_services_refuse_bad_credentials_and_payloads(aiohttp_client: Any, apns_key: ApnsKey) -> None:
    client = await aiohttp_client(build_simulator_app())
    # Google's token endpoint: the grant type, then the assertion's claims
    refused = await client.post("/token", data={"grant_type": "client_credentials"})
    assert (refused.status, (await refused.json())["error"]) == (400, "unsupported_grant_type")
    now = int(time.time())
    other_scope = jwt.encode({"iss": "a@b", "aud": "http://x/token", "scope": "other", "iat": now, "exp": now + 600},
                             rsa_pem(), algorithm="RS256")
    refused = await client.post("/token", data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                                                "assertion": other_scope})
    assert (refused.status, (await refused.json())["error"]) == (400, "invalid_scope")
    # FCM: no access token it issued
    message = {"message": {"token": "tok-a", "notification": {"title": "t", "body": "b"}}}
    refused = await client.post(f"/v1/projects/{PROJECT}/messages:send", json=message,
                                headers={"Authorization": "Bearer made-up"})
    assert (refused.status, (await refused.json())["error"]["status"]) == (401, "UNAUTHENTICATED")
    # APNs: no provider token, a token not signed ES256, a missing topic
    refused = await client.post("/3/device/iphone-1", json={"aps": {"alert": "hi"}})
    assert (refused.status, await refused.json()) == (403, {"reason": "MissingProviderToken"})
    hs256 = jwt.encode({"iss": TEAM_ID, "iat": now}, "k" * 32, algorithm="HS256", headers={"kid": KEY_ID})
    refused = await client.post("/3/device/iphone-1", json={"aps": {"alert": "hi"}},
                                headers={"authorization": f"bearer {hs256}", "apns-topic": TOPIC})
    assert (refused.status, await refused.json()) == (403, {"reason": "InvalidProviderToken"})
    provider = apns(client.server, apns_key[0])
    refused = await client.post("/3/device/iphone-1", json={"aps": {"alert": "hi"}},
                                headers={"authorization": f"bearer {provider.provider_token()}",
                                         "apns-push-type": "alert"})
    assert (refused.status, await refused.json()) == (400, {"reason": "MissingTopic"})
    assert client.server.app[SIMULATOR].deliveries.received == 0

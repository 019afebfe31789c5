"""A push campaign step through FCM at the simulator, as the daemon sends it: to each of the
contact's devices, and a token FCM says is unregistered removed from the contact, on the record."""

from __future__ import annotations

from pathlib import Path

from db.models import Contact, Decision, Send
from ops.harness.simulator_process import SimulatorProcess
from tests.support.push_keys import service_account_file
from tests.support.sends import enrolled_send


def test_a_push_goes_to_each_device_and_an_unregistered_token_leaves_the_contact(  # type: ignore[no-untyped-def]
        stub_pipeline, tmp_path: Path) -> None:
    simulator = SimulatorProcess(tmp_path).start()
    try:
        # Given a contact with two FCM tokens, one of which the app was uninstalled from
        credentials = service_account_file(tmp_path, f"{simulator.url}/token")
        p = stub_pipeline({}, DAILY_CAP="0", QUIET_HOURS="off", CHANNEL_PUSH_PROVIDER="fcm",
                          PROVIDER_FCM_CREDENTIALS=str(credentials), PROVIDER_FCM_URL=simulator.url)
        send, _ = enrolled_send("push", external_id="u-1",
                                attributes={"fcm_tokens": ["phone-token-1", "unregistered-tablet"], "plan": "pro"})
        # When the push goes out
        p.relay_and_wait()
        delivered = simulator.messages(channel="push")
    finally:
        simulator.stop()
    # Then the phone got it, with the access token the simulator issued, and the send is sent
    assert [m["to"] for m in delivered] == ["phone-token-1"]
    assert Send.get_by_id(send.id).status == "sent"
    # and the gone token left the contact (its other attributes untouched), said in the decision log
    assert Contact.get_by_id(send.contact_id).attributes == {"fcm_tokens": ["phone-token-1"], "plan": "pro"}
    removed = Decision.get((Decision.send == send.id) & (Decision.outcome == "device_removed"))
    assert "1 device" in (removed.reason or "") and "unregistered-tablet" not in (removed.reason or "")


def test_a_push_whose_every_device_is_gone_fails_and_empties_the_list(stub_pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    simulator = SimulatorProcess(tmp_path).start()
    try:
        credentials = service_account_file(tmp_path, f"{simulator.url}/token")
        p = stub_pipeline({}, DAILY_CAP="0", QUIET_HOURS="off", CHANNEL_PUSH_PROVIDER="fcm",
                          PROVIDER_FCM_CREDENTIALS=str(credentials), PROVIDER_FCM_URL=simulator.url)
        send, _ = enrolled_send("push", external_id="u-2", attributes={"fcm_tokens": ["unregistered-a"]})
        p.relay_and_wait()
    finally:
        simulator.stop()
    row = Send.get_by_id(send.id)
    assert row.status == "failed" and row.reason == "every device is gone"
    assert Contact.get_by_id(send.contact_id).attributes == {"fcm_tokens": []}


def test_device_tokens_are_read_stripped_deduplicated_and_bounded() -> None:
    from engine.devices import MAX_DEVICES, from_attributes

    found = from_attributes({"fcm_tokens": ["tokA", " tokA", "tokA\n", "", 7, "tokB"], "apns_tokens": "one",
                             "ntfy_topic": ["secret-topic"], "other": ["x"]})
    assert found == {"fcm": ("tokA", "tokB"), "apns": ("one",), "ntfy": ("secret-topic",)}
    assert len(from_attributes({"fcm_tokens": [f"t{i}" for i in range(100)]})["fcm"]) == MAX_DEVICES
    assert from_attributes(["not", "a", "mapping"]) == {}

"""The channel table (ground/channels.py) is the one list of channels every layer reads."""

from __future__ import annotations

import pytest

from engine.campaign_file import CampaignFileError, parse_campaign_text
from ground.channels import CHANNELS, channel_of_actor
from ground.settings import load_settings


@pytest.mark.parametrize("value", [["sms"], {"sms": 1}, None, 3, "SMS", "sms "])
def test_anything_but_a_channel_name_is_not_a_channel_even_unhashable(value: object) -> None:
    # Given a value from a payload or a YAML file, when it is looked up, then the answer is no, never a TypeError
    assert value not in CHANNELS


@pytest.mark.parametrize("bad", ["[sms]", "{sms: 1}"])
def test_a_step_whose_channel_is_a_list_or_a_mapping_is_a_file_error_naming_the_field(bad: str) -> None:
    text = f"slug: s\nname: S\ntrigger: manual\nsteps:\n  - channel: {bad}\n    delay: 0s\n    body: hi\n"
    with pytest.raises(CampaignFileError) as caught:
        parse_campaign_text(text, "s.yaml")
    assert "steps[0].channel" in str(caught.value)


def test_settings_actors_and_checks_read_the_same_table() -> None:
    settings = load_settings(environ={})
    assert set(settings.rates) == set(settings.concurrency) == set(settings.channel_providers) == set(CHANNELS)
    for channel in CHANNELS.values():
        assert channel_of_actor(channel.actor_name) == channel.name
        assert channel.queue_name == f"retentiond.{channel.name}"
    assert channel_of_actor("process_events") is None

"""The webhook channel: signed HTTP posts to the team's own endpoint, about the contact."""

from actors.channel import Channel

CHANNEL = Channel(name="webhook", address_field="external_id")

"""The call channel: voice calls to the contact's E.164 phone."""

from actors.channel import Channel

CHANNEL = Channel(name="call", address_field="phone")

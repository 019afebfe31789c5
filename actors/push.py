"""The push channel: push notifications to the contact's devices, by external id."""

from actors.channel import Channel

CHANNEL = Channel(name="push", address_field="external_id")

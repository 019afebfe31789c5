"""The sms channel: text messages to the contact's E.164 phone."""

from actors.channel import Channel

CHANNEL = Channel(name="sms", address_field="phone")

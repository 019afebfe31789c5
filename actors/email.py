"""The email channel: email to the contact's normalised address."""

from actors.channel import Channel

CHANNEL = Channel(name="email", address_field="email")

"""The project's exception tree: one root, shallow branches."""

from __future__ import annotations


class RetentiondError(Exception):
    """Root of every error raised on purpose by retentiond."""


class ConfigError(RetentiondError):
    """A setting is missing or malformed. The message names the setting and never its secret value."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


class ChannelError(RetentiondError):
    """A provider call for a send did not succeed."""


class TransientChannelError(ChannelError):
    """Worth retrying: a timeout, a connection reset, a 5xx."""


class PermanentChannelError(ChannelError):
    """Never worth retrying: an invalid address, a 4xx other than 429, a template error."""


class UnbuildableMessage(PermanentChannelError):
    """The provider cannot even build this message (a line break in a header, a value its format
    cannot carry): nothing was sent, and another try would build the same thing. Names the field,
    never its content."""


class DevicesGone(PermanentChannelError):
    """Every device address of a push send is gone (unregistered, a bad token): nothing to retry;
    ``devices`` are removed from the contact."""

    def __init__(self, message: str, devices: tuple[str, ...]) -> None:
        super().__init__(message)
        self.devices = devices


class InvalidSignature(RetentiondError):
    """A webhook's signature, token or timestamp did not verify."""


class ProviderRateLimited(TransientChannelError):
    """The provider answered 429: wait ``retry_after_s`` before sending on this channel again."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

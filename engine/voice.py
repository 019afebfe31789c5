"""A call's TwiML, made when the call is planned: what it says (the step's rendered body), an
audio file it plays first, and a one-key opt-out (``<Gather>``) whose answer Twilio posts to our
Twilio webhook source, where it unsubscribes the callee from calls (engine/events.py).

Built with the twilio package's own TwiML classes, which escape every text and attribute.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlencode

from twilio.twiml.voice_response import Gather, VoiceResponse

from engine.templates import TemplateError
from ground.settings import Settings
from ground.vocabulary import WebhookScheme

MAX_TWIML_CHARS = 4000  # Twilio refuses a longer Twiml parameter (error 32018)
OPTOUT_PARAMETER = "optout"  # the digit that means "stop calling me", in the Gather's action URL
GATHER_TIMEOUT_S = 5


def optout_action(settings: Settings, digit: str) -> str:
    """Where Twilio posts the key pressed: the (first, by name) Twilio webhook source; the digit
    rides in the URL, which Twilio's signature covers."""
    sources = sorted(name for name, source in settings.sources.items() if source.scheme == WebhookScheme.TWILIO)
    if not sources:
        raise TemplateError("voice", "an opt-out digit needs a webhook source with the twilio scheme "
                                     "(RETENTIOND_SOURCE_<NAME>_SCHEME=twilio)")
    return f"{settings.public_url.rstrip('/')}/webhooks/{sources[0]}?{urlencode({OPTOUT_PARAMETER: digit})}"


def twiml(text: str, options: Mapping[str, str], settings: Settings) -> str:
    """The TwiML document of one call."""
    response = VoiceResponse()
    if options.get("play"):
        response.play(options["play"])
    if text.strip():
        response.say(text)
    digit = options.get("optout_digit")
    if digit:
        gather = Gather(num_digits=1, action=optout_action(settings, digit), method="POST", timeout=GATHER_TIMEOUT_S)
        gather.say(options.get("optout_prompt") or f"To stop these calls, press {digit}.")
        response.append(gather)
    document = str(response)
    if len(document) > MAX_TWIML_CHARS:
        raise TemplateError("body", f"the call's TwiML is longer than Twilio takes ({len(document)} > "
                                    f"{MAX_TWIML_CHARS} characters): shorten what it says")
    return document

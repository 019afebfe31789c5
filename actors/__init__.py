"""The sending side: one Dramatiq actor per channel, the middleware they share, and the providers."""

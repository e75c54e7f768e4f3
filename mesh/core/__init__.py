"""The protocol core, pure (sans-IO): codec, envelopes, identities, handshake, sessions, flow."""

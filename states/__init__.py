"""The conversation: a transitions AsyncMachine over ports. No I/O happens here."""

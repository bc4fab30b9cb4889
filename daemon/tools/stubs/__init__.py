"""Loopback stand-ins that speak the FunASR, OpenAI-compatible and PaddleSpeech protocols."""

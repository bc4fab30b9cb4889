"""Network clients for the remote services: FunASR (asr), vLLM/OpenAI (llm), PaddleSpeech (tts)."""

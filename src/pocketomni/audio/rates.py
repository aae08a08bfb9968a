"""The two sample rates of the model, in one place."""

INPUT_RATE = 16000  # what the audio encoder hears (Whisper-style log-mel features)
OUTPUT_RATE = 24000  # what token2wav speaks

"""The model engine: thinker, talker, speech, media encoders, TMRoPE positions, model folders."""

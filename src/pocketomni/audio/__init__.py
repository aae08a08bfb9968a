"""Audio: log-mel features, the audio tower, devices, capture/playback, resampling, VAD, WAV files."""

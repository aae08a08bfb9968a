# Sourced by scripts/test.sh: starts the background services the tests need (none yet).
# Later: Xvfb (Kivy app tests) and PulseAudio with null sinks (audio I/O tests).
:

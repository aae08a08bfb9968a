"""The `pocketomni` command line: chat, demo, doctor, convert, synth, bench."""

# Sourced by scripts/test.sh (or by hand: `source scripts/services.sh`): starts the background
# services the tests need and exports their environment. Idempotent: a second run reuses what is up.
#
#   PulseAudio (user mode, also as root; no D-Bus, no cookie) on its own socket, with
#     pocketomni_speaker          null sink = the speaker; pocketomni_speaker.monitor records what played
#     pocketomni_mic_in           null sink that tests play a clip into (paplay)
#     pocketomni_mic              its monitor remapped as a mono source: the microphone
#   defaults: sink pocketomni_speaker, source pocketomni_mic.
#   ALSA PCMs of the same names (plus pocketomni_speaker_monitor) through the ALSA pulse plugin, so
#   PortAudio/sounddevice lists them by name; "default" and "pulse" go to the defaults above.
#   Xvfb on a free display (picked by Xvfb itself), for the Kivy app tests.
#
# Exports PULSE_SERVER, ALSA_CONFIG_PATH, DISPLAY (and XDG_RUNTIME_DIR when unset).
# Never aborts the caller: a service that cannot start is reported on stderr and the tests that
# need it fail with that reason. Never reads stdin, every wait is bounded.

_pocketomni_services() {
  local dir=/tmp/pocketomni-services
  local sock="$dir/pulse/native"
  mkdir -p "$dir/pulse" "$dir/xdg" && chmod 700 "$dir/xdg"
  export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$dir/xdg}"

  # ---------------------------------------------------------------- PulseAudio
  export PULSE_SERVER="unix:$sock"
  local pactl="timeout 10 pactl"
  if ! $pactl info >/dev/null 2>&1; then
    if ! command -v pulseaudio >/dev/null; then
      echo "services.sh: pulseaudio is not installed (run: bash scripts/system_deps.sh)" >&2
    else
      # -n: no default.pa (only what is loaded here); no D-Bus/X11 lookups; anonymous auth on our socket.
      env -u DISPLAY DBUS_SESSION_BUS_ADDRESS=disabled: \
        PULSE_RUNTIME_PATH="$dir/pulse" PULSE_STATE_PATH="$dir/pulse" \
        timeout 20 pulseaudio -n --daemonize=yes --exit-idle-time=-1 --disallow-exit=no \
        --use-pid-file=yes --log-target="file:$dir/pulse.log" --log-level=warning \
        --resample-method=speex-float-5 \
        -L "module-native-protocol-unix socket=$sock auth-anonymous=1" </dev/null >/dev/null 2>&1 || true
      local i
      for i in $(seq 50); do
        $pactl info >/dev/null 2>&1 && break
        sleep 0.2
      done
    fi
  fi
  if $pactl info >/dev/null 2>&1; then
    local sinks sources
    sinks="$($pactl list short sinks 2>/dev/null || true)"
    if ! grep -qw pocketomni_speaker <<<"$sinks"; then
      $pactl load-module module-null-sink sink_name=pocketomni_speaker rate=48000 channels=2 norewinds=1 \
        sink_properties=device.description=PocketOmni_Speaker >/dev/null
    fi
    if ! grep -qw pocketomni_mic_in <<<"$sinks"; then
      $pactl load-module module-null-sink sink_name=pocketomni_mic_in rate=48000 channels=1 norewinds=1 \
        sink_properties=device.description=PocketOmni_Microphone_Input >/dev/null
    fi
    sources="$($pactl list short sources 2>/dev/null || true)"
    if ! grep -qw pocketomni_mic <<<"$sources"; then
      $pactl load-module module-remap-source master=pocketomni_mic_in.monitor source_name=pocketomni_mic \
        channels=1 source_properties=device.description=PocketOmni_Microphone >/dev/null
    fi
    $pactl set-default-sink pocketomni_speaker >/dev/null 2>&1 || true
    $pactl set-default-source pocketomni_mic >/dev/null 2>&1 || true
    $pactl list short sources 2>/dev/null | grep -qw pocketomni_mic \
      || echo "services.sh: PulseAudio is up but the virtual devices did not load (see $dir/pulse.log)" >&2
  else
    echo "services.sh: PulseAudio did not start (see $dir/pulse.log); audio tests will fail" >&2
  fi

  # ALSA names for PortAudio: the system config plus our PCMs (ALSA reads a ':'-separated list).
  cat >"$dir/asound.conf" <<'EOF'
pcm.pocketomni_speaker {
  type pulse
  device pocketomni_speaker
  hint { show on description "PocketOmni virtual speaker (PulseAudio null sink)" }
}
pcm.pocketomni_speaker_monitor {
  type pulse
  device pocketomni_speaker.monitor
  hint { show on description "Monitor of the PocketOmni virtual speaker" }
}
pcm.pocketomni_mic {
  type pulse
  device pocketomni_mic
  hint { show on description "PocketOmni virtual microphone" }
}
EOF
  export ALSA_CONFIG_PATH="/usr/share/alsa/alsa.conf:$dir/asound.conf"

  # ---------------------------------------------------------------- Xvfb
  local disp=""
  [ -f "$dir/display" ] && disp="$(cat "$dir/display")"
  if [ -n "$disp" ] && timeout 5 xdpyinfo -display "$disp" >/dev/null 2>&1; then
    export DISPLAY="$disp"
  elif command -v Xvfb >/dev/null; then
    rm -f "$dir/displayfd"
    # -displayfd: Xvfb picks a free display and writes its number once it accepts connections.
    setsid Xvfb -displayfd 3 -screen 0 1280x800x24 -nolisten tcp -noreset \
      3>"$dir/displayfd" </dev/null >"$dir/xvfb.log" 2>&1 &
    local j
    for j in $(seq 50); do
      [ -s "$dir/displayfd" ] && break
      sleep 0.2
    done
    if [ -s "$dir/displayfd" ]; then
      export DISPLAY=":$(tr -dc 0-9 <"$dir/displayfd")"
      echo "$DISPLAY" >"$dir/display"
    else
      echo "services.sh: Xvfb did not start (see $dir/xvfb.log)" >&2
    fi
  else
    echo "services.sh: Xvfb is not installed (run: bash scripts/system_deps.sh)" >&2
  fi
  return 0
}
_pocketomni_services
unset -f _pocketomni_services

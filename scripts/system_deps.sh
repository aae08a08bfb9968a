#!/usr/bin/env bash
# Debian packages the tests use. Installs only what is missing; needs root (or sudo) to install.
#   libportaudio2        PortAudio, which the sounddevice wheel loads
#   pulseaudio(-utils)   sound server with null sinks (virtual speaker and microphone); pactl, paplay, parec
#   libasound2-plugins   ALSA's "pulse" plugin: PortAudio (ALSA host API) reaches PulseAudio through it
#   espeak-ng, sox       speech clips for the voice tests; measuring/converting audio by hand
#   xvfb, x11-utils      a virtual X display for the Kivy app tests (xdpyinfo tells when it is up)
#   libgl1-mesa-dri      software OpenGL (llvmpipe) for Kivy under Xvfb
#   fonts-dejavu-core, fonts-noto-cjk, fonts-symbola
#                        the demo app's font chain (Latin etc., CJK, emoji) and its every-script test
#   chromium(-driver)    headless browser + WebDriver for the `pocketomni serve` voice page test
set -euo pipefail
packages=(
  libportaudio2
  pulseaudio
  pulseaudio-utils
  libasound2-plugins
  espeak-ng
  sox
  xvfb
  x11-utils
  libgl1-mesa-dri
  fonts-dejavu-core
  fonts-noto-cjk
  fonts-symbola
  chromium
  chromium-driver
)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/dev/null

# Sourced by scripts/bootstrap.sh: arwrap::distributed (data-parallel arwrap-train on c10d/Gloo)
# needs gloo's headers, which the torch wheel does not ship (ProcessGroupGloo.hpp includes them).
# Debian/Ubuntu's libgloo-dev has them. As root we install it; otherwise we say what to install,
# and the build goes on without distributed support (CMake prints the same advice).
# ARWRAP_NO_APT=1 skips the install.
if [[ -n "${ARWRAP_GLOO_INCLUDE_DIR:-}" && -f "${ARWRAP_GLOO_INCLUDE_DIR}/gloo/algorithm.h" ]]; then
  :
elif [[ -f /usr/include/gloo/algorithm.h || -f /usr/local/include/gloo/algorithm.h ]]; then
  :
elif [[ "$(id -u)" == "0" && -z "${ARWRAP_NO_APT:-}" ]] && command -v apt-get >/dev/null 2>&1; then
  say "installing libgloo-dev (gloo's headers, for data parallelism on c10d/Gloo): apt-get install libgloo-dev"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libgloo-dev; } >/dev/null 2>&1; then
    say "could not install libgloo-dev: building without distributed support (one process only)"
  fi
else
  say "gloo headers not found: building without distributed support. For data parallelism (torchrun),"
  say "install them (as root): apt-get update && apt-get install -y libgloo-dev, then rerun this script"
fi

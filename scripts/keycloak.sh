#!/usr/bin/env bash
# Keycloak, the stand-in for the corporate identity provider (docs/security.md), for scripts/run
# and scripts/test. Source it after scripts/deps.sh and scripts/tools.sh; it defines functions and
# defaults only. Run as a program (`scripts/keycloak.sh`), it starts Keycloak under .run/ the way
# scripts/run does, prints where it is, and keeps it running until Ctrl-C.
#
# `start_keycloak DIR` starts Keycloak in development mode with the realms in deploy/keycloak/
# (`hallmark`, and `other` for tests that need a token of another realm) imported afresh, and
# waits until both realms answer. Its home is DIR/keycloak: its own bin/kc.sh and data/ (the
# realm files to import, the development database; the log is DIR/logs/keycloak.log) with the
# rest of the cached distribution linked in, so the cache holds no realm and every start imports
# the realm files as they are now (changes made in the admin console are gone at the next start).
# When a Keycloak with the hallmark realm already answers on the port, it is reused instead.
# `launch_keycloak DIR` and `await_keycloak` are the two halves of start_keycloak, for callers
# that have something to do while Keycloak starts.
#
# Settings (environment):
#   HALLMARK_KEYCLOAK_HOST             where it listens (default 127.0.0.1)
#   HALLMARK_KEYCLOAK_PORT             HTTP: the realms, the admin console (default 8180)
#   HALLMARK_KEYCLOAK_MANAGEMENT_PORT  health and metrics (default 9001)
#   HALLMARK_KEYCLOAK_ADMIN, HALLMARK_KEYCLOAK_ADMIN_PASSWORD
#                                      the bootstrap administrator of the master realm, for the
#                                      admin console (development default keycloak/keycloak)
#   HALLMARK_KEYCLOAK_JAVA_HOME        the JDK it runs on (default: Temurin 25)
#   HALLMARK_KEYCLOAK_HEAP             its heap options (default -Xms64m -Xmx512m)
#   HALLMARK_KEYCLOAK_START_TIMEOUT    seconds to wait for it to be ready (default 180)
#   HALLMARK_STACK_PROXY_SECRET        the secret of the client stack-proxy, the operators' stack's
#                                      authenticating proxies (scripts/stack.sh): the realm file
#                                      takes it from the environment at import; a development
#                                      default, for local use only
#   HALLMARK_ALERTMANAGER_SECRET       the secret of the client alertmanager, the service identity
#                                      Alertmanager posts alerts to order-watch with (client
#                                      credentials; scripts/stack.sh gives Alertmanager the same):
#                                      taken from the environment at import like the one above; a
#                                      development default, for local use only
#   HALLMARK_ORDER_WATCH_SERVICE_SECRET the secret of the client order-watch-service, order-watch's
#                                      own identity for reading Shop's, CRM's and MES's status
#                                      listings (client credentials, role status-reader); a
#                                      development default, for local use only
#   HALLMARK_PARTNER_ACME_SECRET, HALLMARK_PARTNER_GLOBEX_SECRET
#                                      the secrets of the demo partners' clients partner-acme and
#                                      partner-globex (client credentials, role partner, claim
#                                      partner_id); development defaults, for local use only

: "${HALLMARK_KEYCLOAK_HOST:=127.0.0.1}"
: "${HALLMARK_KEYCLOAK_PORT:=8180}" "${HALLMARK_KEYCLOAK_MANAGEMENT_PORT:=9001}"
: "${HALLMARK_KEYCLOAK_ADMIN:=keycloak}" "${HALLMARK_KEYCLOAK_ADMIN_PASSWORD:=keycloak}"
: "${HALLMARK_KEYCLOAK_JAVA_HOME:=/usr/lib/jvm/temurin-25-jdk-amd64}"
: "${HALLMARK_KEYCLOAK_HEAP:=-Xms64m -Xmx512m}"
: "${HALLMARK_KEYCLOAK_START_TIMEOUT:=180}"
# The same defaults as scripts/stack.sh's.
: "${HALLMARK_STACK_PROXY_SECRET:=hallmark-stack-proxy-local-only}"
: "${HALLMARK_ALERTMANAGER_SECRET:=hallmark-alertmanager-local-only}"
: "${HALLMARK_ORDER_WATCH_SERVICE_SECRET:=hallmark-order-watch-local-only}"
: "${HALLMARK_PARTNER_ACME_SECRET:=hallmark-partner-acme-local-only}"
: "${HALLMARK_PARTNER_GLOBEX_SECRET:=hallmark-partner-globex-local-only}"
export HALLMARK_ORDER_WATCH_SERVICE_SECRET HALLMARK_PARTNER_ACME_SECRET HALLMARK_PARTNER_GLOBEX_SECRET
export HALLMARK_KEYCLOAK_HOST HALLMARK_KEYCLOAK_PORT HALLMARK_KEYCLOAK_MANAGEMENT_PORT
# The process started by launch_keycloak (empty when an already running Keycloak is reused), when
# it started and where it logs.
HALLMARK_KEYCLOAK_PID= HALLMARK_KEYCLOAK_STARTED_AT= HALLMARK_KEYCLOAK_LOG=

# Prints the base URL of Keycloak.
keycloak_url() {
  printf 'http://%s:%s\n' "$HALLMARK_KEYCLOAK_HOST" "$HALLMARK_KEYCLOAK_PORT"
}

# Prints the issuer URL of realm $1 (default hallmark).
keycloak_issuer() {
  printf '%s/realms/%s\n' "$(keycloak_url)" "${1:-hallmark}"
}

# Succeeds when realm $1 (default hallmark) publishes its OpenID configuration naming itself as
# issuer.
keycloak_ready() {
  local issuer
  issuer=$(keycloak_issuer "${1:-hallmark}")
  curl -fsS --max-time 3 "$issuer/.well-known/openid-configuration" 2>/dev/null \
    | grep -qF "\"issuer\":\"$issuer\""
}

# Where launch_keycloak records the realm files (their digest) and the process of the Keycloak
# it started on the port, so that a later launch reuses it only while the realm files are the
# same and restarts it when they changed (a test of a new client or role must not meet an old
# realm).
HALLMARK_KEYCLOAK_RECORD="${XDG_STATE_HOME:-$HOME/.local/state}/hallmark/keycloak-$HALLMARK_KEYCLOAK_PORT.realms"

# Prints the digest of the realm files in deploy/keycloak/.
keycloak_realms_digest() {
  cat deploy/keycloak/realm-*.json | sha256sum | cut -d' ' -f1
}

# Starts Keycloak in the background with its home under directory $1 (its log in
# $1/logs/keycloak.log) unless one with the hallmark and other realms already answers, imported
# from the realm files as they are now (one started by a launch with other realm files is
# stopped and started again; one started otherwise is reused with a warning); await_keycloak
# waits for it, so that something else (a build) can run meanwhile. Sets HALLMARK_KEYCLOAK_PID
# to the process it started (stop it with stop_keycloak).
launch_keycloak() {
  local state=$1
  HALLMARK_KEYCLOAK_LOG=
  local digest recorded old
  digest=$(keycloak_realms_digest)
  if keycloak_ready hallmark && keycloak_ready other; then
    recorded=$(sed -n 1p "$HALLMARK_KEYCLOAK_RECORD" 2>/dev/null || true)
    old=$(sed -n 2p "$HALLMARK_KEYCLOAK_RECORD" 2>/dev/null || true)
    if [ -z "$recorded" ]; then
      say "Keycloak is already running at $(keycloak_url) with the hallmark realm, not started by these scripts: using it as it is"
      return
    fi
    if [ "$recorded" = "$digest" ]; then
      say "Keycloak is already running at $(keycloak_url) with the realm files as they are: using it"
      return
    fi
    if [ -n "$old" ] && kill -0 "$old" 2>/dev/null; then
      say "Keycloak (pid $old) runs with older realm files: restarting it"
      kill -TERM "$old" 2>/dev/null || true
      local waited=0
      while port_open "$HALLMARK_KEYCLOAK_PORT" && [ "$waited" -lt 60 ]; do sleep 1; waited=$((waited + 1)); done
    fi
  fi
  port_open "$HALLMARK_KEYCLOAK_PORT" \
    && die "port $HALLMARK_KEYCLOAK_PORT is taken by something that is not a Keycloak with the hallmark and other realms; stop it or set HALLMARK_KEYCLOAK_PORT"
  port_open "$HALLMARK_KEYCLOAK_MANAGEMENT_PORT" \
    && die "port $HALLMARK_KEYCLOAK_MANAGEMENT_PORT (Keycloak's management) is taken; stop what holds it or set HALLMARK_KEYCLOAK_MANAGEMENT_PORT"
  command -v curl >/dev/null 2>&1 || apt_install curl
  [ -x "$HALLMARK_KEYCLOAK_JAVA_HOME/bin/java" ] \
    || die "Keycloak runs on Java 25 and $HALLMARK_KEYCLOAK_JAVA_HOME/bin/java is missing; install the Temurin 25 JDK or set HALLMARK_KEYCLOAK_JAVA_HOME"
  ensure_keycloak

  # A home of its own: kc.sh copied (it takes its home from where it lies), the distribution's
  # lib, conf, providers and themes linked, a fresh data/ with the realm files to import.
  local home="$state/keycloak" entry running
  running=$(cat "$home/pid" 2>/dev/null || true)
  if [ -n "$running" ] && kill -0 "$running" 2>/dev/null; then
    die "a Keycloak (pid $running) is starting or running from $home; wait for it or stop it"
  fi
  HALLMARK_KEYCLOAK_LOG="$state/logs/keycloak.log"
  rm -rf "$home"
  mkdir -p "$home/bin" "$home/data/import" "$state/logs"
  cp "$HALLMARK_KEYCLOAK_HOME/bin/kc.sh" "$home/bin/"
  for entry in lib conf providers themes; do
    ln -s "$HALLMARK_KEYCLOAK_HOME/$entry" "$home/$entry"
  done
  cp deploy/keycloak/realm-*.json "$home/data/import/"

  say "starting Keycloak on $(keycloak_url) (log: $HALLMARK_KEYCLOAK_LOG)"
  HALLMARK_KEYCLOAK_STARTED_AT=$(date +%s)
  env JAVA_HOME="$HALLMARK_KEYCLOAK_JAVA_HOME" JAVA_OPTS_KC_HEAP="$HALLMARK_KEYCLOAK_HEAP" \
    KC_BOOTSTRAP_ADMIN_USERNAME="$HALLMARK_KEYCLOAK_ADMIN" \
    KC_BOOTSTRAP_ADMIN_PASSWORD="$HALLMARK_KEYCLOAK_ADMIN_PASSWORD" \
    HALLMARK_STACK_PROXY_SECRET="$HALLMARK_STACK_PROXY_SECRET" \
    HALLMARK_ALERTMANAGER_SECRET="$HALLMARK_ALERTMANAGER_SECRET" \
    HALLMARK_ORDER_WATCH_SERVICE_SECRET="$HALLMARK_ORDER_WATCH_SERVICE_SECRET" \
    HALLMARK_PARTNER_ACME_SECRET="$HALLMARK_PARTNER_ACME_SECRET" \
    HALLMARK_PARTNER_GLOBEX_SECRET="$HALLMARK_PARTNER_GLOBEX_SECRET" \
    "$home/bin/kc.sh" start-dev --import-realm \
    --http-host="$HALLMARK_KEYCLOAK_HOST" --http-port="$HALLMARK_KEYCLOAK_PORT" \
    --http-management-port="$HALLMARK_KEYCLOAK_MANAGEMENT_PORT" \
    --hostname="$(keycloak_url)" --health-enabled=true \
    </dev/null >"$HALLMARK_KEYCLOAK_LOG" 2>&1 &
  HALLMARK_KEYCLOAK_PID=$!
  printf '%s\n' "$HALLMARK_KEYCLOAK_PID" >"$home/pid"
  mkdir -p "$(dirname "$HALLMARK_KEYCLOAK_RECORD")"
  printf '%s\n%s\n' "$digest" "$HALLMARK_KEYCLOAK_PID" >"$HALLMARK_KEYCLOAK_RECORD"
}

# Waits until the Keycloak that launch_keycloak started has imported both realms and serves
# them; fails with its log's tail (and stops it) when it exits or is not ready within
# HALLMARK_KEYCLOAK_START_TIMEOUT seconds. Returns at once for a reused Keycloak.
await_keycloak() {
  [ -n "$HALLMARK_KEYCLOAK_PID" ] || return 0
  while ! { keycloak_ready hallmark && keycloak_ready other; }; do
    if ! kill -0 "$HALLMARK_KEYCLOAK_PID" 2>/dev/null; then
      HALLMARK_KEYCLOAK_PID=
      tail -n 30 "$HALLMARK_KEYCLOAK_LOG" >&2
      die "Keycloak exited during start-up (log: $HALLMARK_KEYCLOAK_LOG)"
    fi
    if [ $(( $(date +%s) - HALLMARK_KEYCLOAK_STARTED_AT )) -ge "$HALLMARK_KEYCLOAK_START_TIMEOUT" ]; then
      tail -n 30 "$HALLMARK_KEYCLOAK_LOG" >&2
      stop_keycloak
      die "Keycloak was not ready within ${HALLMARK_KEYCLOAK_START_TIMEOUT}s (log: $HALLMARK_KEYCLOAK_LOG)"
    fi
    sleep 1
  done
  say "Keycloak is up in $(( $(date +%s) - HALLMARK_KEYCLOAK_STARTED_AT )) s: $(keycloak_issuer hallmark) (pid $HALLMARK_KEYCLOAK_PID)"
}

# launch_keycloak $1, then await_keycloak.
start_keycloak() {
  launch_keycloak "$1"
  await_keycloak
}

# Stops the Keycloak that launch_keycloak started, if any, and waits for it to exit.
stop_keycloak() {
  [ -n "$HALLMARK_KEYCLOAK_PID" ] || return 0
  kill -TERM "$HALLMARK_KEYCLOAK_PID" 2>/dev/null || true
  wait "$HALLMARK_KEYCLOAK_PID" 2>/dev/null || true
  HALLMARK_KEYCLOAK_PID=
}

# Prints where Keycloak is and the demo users of the hallmark realm.
print_keycloak() {
  say "Keycloak (SSO stand-in): $(keycloak_url)/admin/ (master realm: $HALLMARK_KEYCLOAK_ADMIN); issuer $(keycloak_issuer hallmark)"
  say "  demo users (local only; password = name): support (read), developer (read + configuration), workshop (production, shipping, delivery), admin (everything)"
  say "  service identities (client credentials): alertmanager (alert-sender) posts alerts to order-watch; order-watch-service reads the services' status listings (status-reader), tightens partners' rates during incidents (limit-controller) and asks for a republish to repair a disagreement (status-republisher)"
  say "  demo partners (client credentials, role partner): partner-acme, partner-globex (secrets HALLMARK_PARTNER_ACME_SECRET, HALLMARK_PARTNER_GLOBEX_SECRET)"
  say "  a token: curl -d grant_type=password -d client_id=hallmark-cli -d username=support -d password=support $(keycloak_issuer hallmark)/protocol/openid-connect/token"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  cd "$(dirname "$0")/.."
  source scripts/deps.sh
  source scripts/tools.sh
  trap stop_keycloak EXIT
  trap 'exit 130' INT TERM
  start_keycloak "$PWD/.run"
  print_keycloak
  [ -n "$HALLMARK_KEYCLOAK_PID" ] || exit 0
  say "Keycloak is running; press Ctrl-C to stop it"
  wait "$HALLMARK_KEYCLOAK_PID"
fi

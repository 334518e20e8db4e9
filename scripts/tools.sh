# Shared by scripts/run and scripts/test: the operators' stack's programs, which no registry ships
# as a binary for this machine, built from their Go modules once and cached. Source it; it defines
# functions only.
#
# Each tool's Go module lives in deploy/tools/<tool>/ (go.mod and go.sum pin every version). A
# build goes to $HALLMARK_TOOLS_DIR/<tool>-<hash of its go.sum>/ (default
# ~/.cache/hallmark/tools), so changing a pin builds anew and an unchanged one is never built
# twice. While a tool builds, a line shows how many of its packages are compiled.
#
# After `ensure_tools` these variables name the binaries:
#   HALLMARK_JAEGER        Jaeger v2: the OpenTelemetry Collector and the trace store + query
#   HALLMARK_PROMETHEUS    Prometheus server
#   HALLMARK_PROMTOOL      promtool (rule checks and rule unit tests)
#   HALLMARK_ALERTMANAGER  Alertmanager
#   HALLMARK_AMTOOL        amtool (configuration checks)
#   HALLMARK_OAUTH2_PROXY  oauth2-proxy: the authenticating proxy in front of the Jaeger query,
#                          Prometheus and Alertmanager (scripts/stack.sh)
#
# Keycloak, the stand-in for the corporate identity provider (docs/security.md), is no Go program:
# `ensure_keycloak` fetches its server distribution (the version in deploy/keycloak/VERSION, the
# one place it is pinned) with Maven, once, showing how much has arrived, and unpacks it into
# $HALLMARK_TOOLS_DIR/keycloak-<version>/. It runs on the Temurin 25 JDK (scripts/keycloak.sh).
# After it:
#   HALLMARK_KEYCLOAK_HOME the unpacked distribution (bin/kc.sh)

HALLMARK_TOOLS_DIR="${HALLMARK_TOOLS_DIR:-$HOME/.cache/hallmark/tools}"

# Builds Go package $3 of the module in deploy/tools/$1 into $HALLMARK_TOOLS_DIR as program $2
# (with build tags $4), unless that build exists; prints the binary's path.
build_tool() {
  local tool=$1 program=$2 package=$3 tags=${4:-}
  local module="deploy/tools/$tool"
  [ -f "$module/go.sum" ] || die "$module/go.sum is missing"
  command -v go >/dev/null 2>&1 || die "Go is needed to build $program; install it (golang-go, 1.26 or newer)"
  local hash dir binary
  hash=$(sha256sum "$module/go.sum" | cut -c1-12)
  dir="$HALLMARK_TOOLS_DIR/$tool-$hash"
  binary="$dir/$program"
  if [ ! -x "$binary" ]; then
    mkdir -p "$dir"
    local total
    total=$(cd "$module" && go list -deps -tags "$tags" "$package" 2>/dev/null | wc -l)
    say "building $program from its Go module (once; cached in $dir)"
    local log="$dir/build.log" count=0 line tty=
    [ -t 2 ] && tty=1
    # `go build -v` names each package as it is compiled: count them for the progress line (one
    # line rewritten on a terminal, a line per hundred packages in a log).
    set +e
    (cd "$module" && go build -v -trimpath -tags "$tags" -o "$binary.partial" "$package") 2>&1 \
      | tee "$log" | while IFS= read -r line; do
          count=$((count + 1))
          if [ -n "$tty" ]; then
            printf '\r    %s: %d of about %d packages compiled' "$program" "$count" "$total" >&2
          elif [ $((count % 100)) = 0 ]; then
            printf '    %s: %d of about %d packages compiled\n' "$program" "$count" "$total" >&2
          fi
        done
    local status=${PIPESTATUS[0]}
    set -e
    [ -n "$tty" ] && printf '\n' >&2
    [ "$status" = 0 ] || { tail -n 30 "$log" >&2; die "building $program failed (log: $log)"; }
    mv "$binary.partial" "$binary"
  fi
  printf '%s\n' "$binary"
}

ensure_tools() {
  HALLMARK_JAEGER=$(build_tool jaeger jaeger github.com/jaegertracing/jaeger/cmd/jaeger)
  HALLMARK_PROMETHEUS=$(build_tool prometheus prometheus github.com/prometheus/prometheus/cmd/prometheus remove_all_sd)
  HALLMARK_PROMTOOL=$(build_tool prometheus promtool github.com/prometheus/prometheus/cmd/promtool remove_all_sd)
  HALLMARK_ALERTMANAGER=$(build_tool alertmanager alertmanager github.com/prometheus/alertmanager/cmd/alertmanager)
  HALLMARK_AMTOOL=$(build_tool alertmanager amtool github.com/prometheus/alertmanager/cmd/amtool)
  HALLMARK_OAUTH2_PROXY=$(build_tool oauth2-proxy oauth2-proxy github.com/oauth2-proxy/oauth2-proxy/v7)
  export HALLMARK_JAEGER HALLMARK_PROMETHEUS HALLMARK_PROMTOOL HALLMARK_ALERTMANAGER HALLMARK_AMTOOL \
    HALLMARK_OAUTH2_PROXY
}

# Fetches the Keycloak server distribution of the version in deploy/keycloak/VERSION into
# $HALLMARK_TOOLS_DIR/keycloak-<version>/ unless it is there, and exports HALLMARK_KEYCLOAK_HOME.
# Maven fetches it (strict checksums) into a scratch local repository that is deleted once the
# archive is unpacked, so the archive is not kept twice; while it runs a line shows how many
# megabytes have arrived.
ensure_keycloak() {
  local version
  version=$(tr -d '[:space:]' <deploy/keycloak/VERSION 2>/dev/null || true)
  [ -n "$version" ] || die "deploy/keycloak/VERSION is missing or empty"
  local dir="$HALLMARK_TOOLS_DIR/keycloak-$version"
  if [ ! -x "$dir/bin/kc.sh" ]; then
    command -v mvn >/dev/null 2>&1 || die "Maven is needed to fetch Keycloak; install it (maven)"
    mkdir -p "$HALLMARK_TOOLS_DIR"
    local work log
    work=$(mktemp -d "$dir.partial.XXXXXX")
    log="$work/fetch.log"
    say "fetching Keycloak $version (once; about 200 MB, cached in $dir)"
    local started tty=
    started=$(date +%s)
    [ -t 2 ] && tty=1
    mvn -q -B -C -Dmaven.repo.local="$work/repository" \
      org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy \
      -Dartifact="org.keycloak:keycloak-quarkus-dist:$version:tar.gz" \
      -DoutputDirectory="$work" >"$log" 2>&1 &
    local mvn_pid=$! ticks=0 size
    while kill -0 "$mvn_pid" 2>/dev/null; do
      sleep 1
      ticks=$((ticks + 1))
      size=$(du -sm "$work/repository" 2>/dev/null | cut -f1)
      if [ -n "$tty" ]; then
        printf '\r    Keycloak: %s MB fetched' "${size:-0}" >&2
      elif [ $((ticks % 15)) = 0 ]; then
        printf '    Keycloak: %s MB fetched\n' "${size:-0}" >&2
      fi
    done
    [ -n "$tty" ] && printf '\n' >&2
    local archive="$work/keycloak-quarkus-dist-$version.tar.gz"
    if ! wait "$mvn_pid" || [ ! -s "$archive" ]; then
      tail -n 30 "$log" >&2
      die "fetching Keycloak $version with Maven failed (log: $log); check the network or Maven's settings (mirror, proxy), or pick a published version in deploy/keycloak/VERSION"
    fi
    mkdir "$work/dist"
    tar -xzf "$archive" -C "$work/dist" --strip-components=1 \
      || die "unpacking $archive failed"
    [ -x "$work/dist/bin/kc.sh" ] || die "$archive holds no bin/kc.sh"
    # Another run may have fetched it meanwhile: keep theirs.
    mv -T "$work/dist" "$dir" 2>/dev/null || [ -x "$dir/bin/kc.sh" ] || die "cannot move Keycloak into $dir"
    rm -rf "$work"
    say "Keycloak $version fetched in $(( $(date +%s) - started )) s"
  fi
  HALLMARK_KEYCLOAK_HOME=$dir
  export HALLMARK_KEYCLOAK_HOME
}

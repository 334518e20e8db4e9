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
  export HALLMARK_JAEGER HALLMARK_PROMETHEUS HALLMARK_PROMTOOL HALLMARK_ALERTMANAGER HALLMARK_AMTOOL
}

# The operators' stack around Hallmark's services: the OpenTelemetry Collector, the trace store
# (Jaeger), Prometheus and Alertmanager, configured from deploy/. Source it; it defines functions
# and defaults only. scripts/run starts the stack with it; the stack tests render the same
# configuration with it (e2e/src/stack.rs).
#
# Where everything listens (all on loopback unless HALLMARK_STACK_HOST says otherwise):
#   collector    OTLP 4317 (gRPC) and 4318 (HTTP), its metrics 8888, spanmetrics 8889
#   Jaeger       OTLP from the collector 4417, its metrics 8887
#   order-watch  8080 (API, UI, /api/alerts), OTLP 14317/14318 (from the collector)
#   services     Shop 8081, CRM 8082, MES 8083; RabbitMQ's Prometheus endpoint 15692
# What people use sits behind the SSO: each component listens on loopback only, whatever
# HALLMARK_STACK_HOST says, and an authenticating proxy (oauth2-proxy, deploy/oauth2-proxy/) in
# front of it is the only way in from elsewhere; the proxies listen on HALLMARK_PROXY_HOST.
#   Jaeger query API and UI  127.0.0.1:16686 (gRPC 16685)  proxy 16687: support, developer, admin
#   Prometheus               127.0.0.1:9090                proxy 9091:  support, developer, admin
#   Alertmanager             127.0.0.1:9093                proxy 9094:  developer, admin
#
# The proxies' settings (environment):
#   HALLMARK_PROXY_HOST            their interface (default 127.0.0.1; the only one to open up)
#   HALLMARK_JAEGER_PROXY_PORT, HALLMARK_PROMETHEUS_PROXY_PORT, HALLMARK_ALERTMANAGER_PROXY_PORT
#   HALLMARK_JAEGER_ROLES, HALLMARK_PROMETHEUS_ROLES, HALLMARK_ALERTMANAGER_ROLES
#                                  the roles each lets through, comma-separated (any one suffices)
#   HALLMARK_STACK_OIDC_ISSUER     the identity provider (default: Keycloak's realm hallmark,
#                                  scripts/keycloak.sh)
#   HALLMARK_STACK_PROXY_CLIENT_ID its confidential client (default stack-proxy), and
#   HALLMARK_STACK_PROXY_SECRET    the client's secret (a development default, for local use only;
#                                  scripts/keycloak.sh registers the same one)
#   HALLMARK_STACK_ROLES_CLAIM     where tokens list roles, a dotted path (realm_access.roles)
#   HALLMARK_STACK_OIDC_AUDIENCE   an audience accepted besides the client id (default: none)
#   HALLMARK_PROXY_COOKIE_SECRET   the session cookies' key (default: 32 random bytes per run)
#   HALLMARK_PROXY_TLS_CERT, HALLMARK_PROXY_TLS_KEY  PEM files: the proxies serve HTTPS
#
# Encryption in transit between the machines' components (docs/security.md):
#   HALLMARK_STACK_TLS_CERT, HALLMARK_STACK_TLS_KEY  PEM files: the collector's OTLP receivers
#                                  serve TLS (deploy/collector/tls.yaml is merged over its
#                                  configuration); both or neither
#   HALLMARK_STACK_TLS_CLIENT_CA   PEM file: the receivers then require client certificates
#                                  signed by this CA (default: none asked for)
#   HALLMARK_ORDER_WATCH_OTLP      where the collector sends order-watch its spans (default
#                                  http://…:ORDER_WATCH_OTLP_HTTP_PORT; https:// when
#                                  ORDER_WATCH_TLS_CERT is set, as order-watch then serves TLS)
#   HALLMARK_ORDER_WATCH_CA        PEM file: the CA the collector checks order-watch's certificate
#                                  against (default: the system's roots)
#   HALLMARK_COLLECTOR_CLIENT_CERT, HALLMARK_COLLECTOR_CLIENT_KEY  PEM files: the certificate the
#                                  collector presents to order-watch (for ORDER_WATCH_OTLP_CLIENT_CA)
# Alertmanager posts alerts to order-watch as a service identity of the same provider, with a
# token of the client credentials grant that it fetches and renews itself:
#   HALLMARK_ALERTMANAGER_CLIENT_ID  its confidential client (default alertmanager, whose service
#                                  account holds the role alert-sender), and
#   HALLMARK_ALERTMANAGER_SECRET   the client's secret (a development default, for local use only;
#                                  scripts/keycloak.sh registers the same one)
#   HALLMARK_ALERTMANAGER_TOKEN_URL  the provider's token endpoint (default: Keycloak's,
#                                  $HALLMARK_STACK_OIDC_ISSUER/protocol/openid-connect/token; another
#                                  provider names its own in its discovery document)

: "${HALLMARK_STACK_HOST:=127.0.0.1}"
: "${HALLMARK_COLLECTOR_GRPC_PORT:=4317}" "${HALLMARK_COLLECTOR_HTTP_PORT:=4318}"
: "${HALLMARK_COLLECTOR_METRICS_PORT:=8888}" "${HALLMARK_SPANMETRICS_PORT:=8889}"
: "${HALLMARK_COLLECTOR_HEALTH_PORT:=13133}"
: "${HALLMARK_JAEGER_GRPC_PORT:=4417}" "${HALLMARK_JAEGER_HTTP_PORT:=4418}"
: "${HALLMARK_JAEGER_QUERY_PORT:=16686}" "${HALLMARK_JAEGER_QUERY_GRPC_PORT:=16685}"
: "${HALLMARK_JAEGER_METRICS_PORT:=8887}" "${HALLMARK_JAEGER_HEALTH_PORT:=13134}"
: "${HALLMARK_PROMETHEUS_PORT:=9090}" "${HALLMARK_ALERTMANAGER_PORT:=9093}"
: "${HALLMARK_RABBITMQ_METRICS:=127.0.0.1:15692}"
: "${HALLMARK_PROXY_HOST:=127.0.0.1}"
: "${HALLMARK_JAEGER_PROXY_PORT:=16687}" "${HALLMARK_PROMETHEUS_PROXY_PORT:=9091}"
: "${HALLMARK_ALERTMANAGER_PROXY_PORT:=9094}"
: "${HALLMARK_JAEGER_ROLES:=support,developer,admin}" "${HALLMARK_PROMETHEUS_ROLES:=support,developer,admin}"
: "${HALLMARK_ALERTMANAGER_ROLES:=developer,admin}"
: "${HALLMARK_STACK_OIDC_ISSUER:=http://${HALLMARK_KEYCLOAK_HOST:-127.0.0.1}:${HALLMARK_KEYCLOAK_PORT:-8180}/realms/hallmark}"
: "${HALLMARK_STACK_PROXY_CLIENT_ID:=stack-proxy}" "${HALLMARK_STACK_ROLES_CLAIM:=realm_access.roles}"
# Local use only, like the demo users: the same defaults as scripts/keycloak.sh's. Not exported:
# render_stack_config writes them into files only this user reads.
: "${HALLMARK_STACK_PROXY_SECRET:=hallmark-stack-proxy-local-only}"
: "${HALLMARK_ALERTMANAGER_SECRET:=hallmark-alertmanager-local-only}"
: "${HALLMARK_ALERTMANAGER_CLIENT_ID:=alertmanager}"
: "${HALLMARK_ALERTMANAGER_TOKEN_URL:=$HALLMARK_STACK_OIDC_ISSUER/protocol/openid-connect/token}"
: "${HALLMARK_SCRAPE_INTERVAL:=15s}" "${HALLMARK_EVALUATION_INTERVAL:=15s}"
: "${HALLMARK_ALERT_GROUP_WAIT:=30s}" "${HALLMARK_ALERT_GROUP_INTERVAL:=5m}"
: "${HALLMARK_ALERT_REPEAT_INTERVAL:=4h}"
: "${ORDER_WATCH_PORT:=8080}" "${ORDER_WATCH_OTLP_GRPC_PORT:=14317}" "${ORDER_WATCH_OTLP_HTTP_PORT:=14318}"
: "${SHOP_PORT:=8081}" "${CRM_PORT:=8082}" "${MES_PORT:=8083}"
export HALLMARK_STACK_HOST HALLMARK_COLLECTOR_GRPC_PORT HALLMARK_COLLECTOR_HTTP_PORT \
  HALLMARK_COLLECTOR_METRICS_PORT HALLMARK_SPANMETRICS_PORT HALLMARK_COLLECTOR_HEALTH_PORT \
  HALLMARK_JAEGER_GRPC_PORT HALLMARK_JAEGER_HTTP_PORT HALLMARK_JAEGER_QUERY_PORT \
  HALLMARK_JAEGER_QUERY_GRPC_PORT HALLMARK_JAEGER_METRICS_PORT HALLMARK_JAEGER_HEALTH_PORT \
  HALLMARK_PROMETHEUS_PORT HALLMARK_ALERTMANAGER_PORT HALLMARK_RABBITMQ_METRICS HALLMARK_SCRAPE_INTERVAL \
  HALLMARK_EVALUATION_INTERVAL HALLMARK_ALERT_GROUP_WAIT HALLMARK_ALERT_GROUP_INTERVAL \
  HALLMARK_ALERT_REPEAT_INTERVAL ORDER_WATCH_PORT ORDER_WATCH_OTLP_GRPC_PORT \
  ORDER_WATCH_OTLP_HTTP_PORT SHOP_PORT CRM_PORT MES_PORT HALLMARK_PROXY_HOST \
  HALLMARK_JAEGER_PROXY_PORT HALLMARK_PROMETHEUS_PROXY_PORT HALLMARK_ALERTMANAGER_PROXY_PORT \
  HALLMARK_JAEGER_ROLES HALLMARK_PROMETHEUS_ROLES HALLMARK_ALERTMANAGER_ROLES \
  HALLMARK_STACK_OIDC_ISSUER HALLMARK_STACK_PROXY_CLIENT_ID HALLMARK_STACK_ROLES_CLAIM \
  HALLMARK_ALERTMANAGER_CLIENT_ID HALLMARK_ALERTMANAGER_TOKEN_URL
# The components behind the proxies listen here and nowhere else; Prometheus reaches itself and
# Alertmanager here too.
HALLMARK_LOOPBACK=127.0.0.1
# The collector's and Jaeger's configurations read these themselves (`${env:…}`).
export HALLMARK_COLLECTOR_HOST="$HALLMARK_STACK_HOST" HALLMARK_JAEGER_HOST="$HALLMARK_STACK_HOST"
export HALLMARK_JAEGER_OTLP="$HALLMARK_STACK_HOST:$HALLMARK_JAEGER_GRPC_PORT"
if [ -n "${ORDER_WATCH_TLS_CERT:-}" ]; then
  : "${HALLMARK_ORDER_WATCH_OTLP:=https://$HALLMARK_STACK_HOST:$ORDER_WATCH_OTLP_HTTP_PORT}"
else
  : "${HALLMARK_ORDER_WATCH_OTLP:=http://$HALLMARK_STACK_HOST:$ORDER_WATCH_OTLP_HTTP_PORT}"
fi
export HALLMARK_ORDER_WATCH_OTLP
if [ -n "${HALLMARK_STACK_TLS_CERT:-}" ] || [ -n "${HALLMARK_STACK_TLS_KEY:-}" ]; then
  [ -n "${HALLMARK_STACK_TLS_CERT:-}" ] && [ -n "${HALLMARK_STACK_TLS_KEY:-}" ] \
    || die "HALLMARK_STACK_TLS_CERT and HALLMARK_STACK_TLS_KEY go together: the collector's receivers need both the certificate and its key"
  export HALLMARK_STACK_TLS_CERT HALLMARK_STACK_TLS_KEY
elif [ -n "${HALLMARK_STACK_TLS_CLIENT_CA:-}" ]; then
  die "HALLMARK_STACK_TLS_CLIENT_CA: client certificates need TLS: give HALLMARK_STACK_TLS_CERT and HALLMARK_STACK_TLS_KEY too"
fi
# The collector reads these itself; blank means none.
export HALLMARK_STACK_TLS_CLIENT_CA="${HALLMARK_STACK_TLS_CLIENT_CA:-}" \
  HALLMARK_ORDER_WATCH_CA="${HALLMARK_ORDER_WATCH_CA:-}" \
  HALLMARK_COLLECTOR_CLIENT_CERT="${HALLMARK_COLLECTOR_CLIENT_CERT:-}" \
  HALLMARK_COLLECTOR_CLIENT_KEY="${HALLMARK_COLLECTOR_CLIENT_KEY:-}"
# Prometheus scrapes order-watch, and Alertmanager posts alerts to it, over https when it serves
# TLS, checking its certificate against HALLMARK_ORDER_WATCH_CA when given (else the system's
# roots); likewise the services' /metrics when they serve TLS (HALLMARK_TLS_CERT), against
# HALLMARK_SERVICES_CA.
HALLMARK_ORDER_WATCH_TLS=${ORDER_WATCH_TLS_CERT:+yes}
HALLMARK_SERVICES_TLS=${HALLMARK_TLS_CERT:+yes}
export HALLMARK_ORDER_WATCH_TLS HALLMARK_SERVICES_TLS HALLMARK_SERVICES_CA="${HALLMARK_SERVICES_CA:-}"
watch_scheme=http
[ -n "$HALLMARK_ORDER_WATCH_TLS" ] && watch_scheme=https
: "${HALLMARK_ORDER_WATCH_ALERTS_URL:=$watch_scheme://$HALLMARK_STACK_HOST:$ORDER_WATCH_PORT/api/alerts}"
export HALLMARK_ORDER_WATCH_ALERTS_URL

# Renders template $1 into $2: each ${HALLMARK_…} is replaced from the environment (an unset one
# is an error), and the lines between `# if VAR` and `# end` are kept only when VAR is set (the
# marker lines themselves never are).
render_template() {
  local source=$1 target=$2 name kept names
  kept=$(awk '
    /^# if [A-Z0-9_]+$/ { skipping = (ENVIRON[$3] == ""); next }
    /^# end$/ { skipping = 0; next }
    !skipping
  ' "$source")
  names=$(grep -o '\${HALLMARK_[A-Z0-9_]*}' <<<"$kept" | sort -u || true)
  for name in $(tr -d '${}' <<<"$names"); do
    [ -n "${!name:-}" ] || die "$source needs $name"
  done
  envsubst "$(tr '\n' ' ' <<<"$names")" <<<"$kept" >"$target"
}

# Writes Prometheus's target file $2 (in targets/ of directory $1) for address $3.
write_target() {
  printf '[{"targets": ["%s"]}]\n' "$3" >"$1/targets/$2.json"
}

# Renders Prometheus's, Alertmanager's and the proxies' configuration into directory $1
# (prometheus/, alertmanager/ and proxy/ beneath it), for the ports in the environment.
render_stack_config() {
  local out=$1 host=$HALLMARK_STACK_HOST
  command -v envsubst >/dev/null 2>&1 || apt_install gettext-base
  mkdir -p "$out/prometheus/targets" "$out/prometheus/rules" "$out/alertmanager"
  render_template deploy/prometheus/prometheus.yml "$out/prometheus/prometheus.yml"
  cp deploy/prometheus/rules/*.yml "$out/prometheus/rules/"
  write_target "$out/prometheus" shop-api "$host:$SHOP_PORT"
  write_target "$out/prometheus" crm-api "$host:$CRM_PORT"
  write_target "$out/prometheus" mes-api "$host:$MES_PORT"
  write_target "$out/prometheus" order-watch "$host:$ORDER_WATCH_PORT"
  write_target "$out/prometheus" otel-collector "$host:$HALLMARK_COLLECTOR_METRICS_PORT"
  write_target "$out/prometheus" spanmetrics "$host:$HALLMARK_SPANMETRICS_PORT"
  write_target "$out/prometheus" jaeger "$host:$HALLMARK_JAEGER_METRICS_PORT"
  write_target "$out/prometheus" rabbitmq "$HALLMARK_RABBITMQ_METRICS"
  write_target "$out/prometheus" alertmanager "$HALLMARK_LOOPBACK:$HALLMARK_ALERTMANAGER_PORT"
  write_target "$out/prometheus" prometheus "$HALLMARK_LOOPBACK:$HALLMARK_PROMETHEUS_PORT"
  # Alertmanager's client secret, in a file only this user reads (named by its absolute path:
  # Alertmanager resolves a relative one from its configuration's directory).
  chmod 700 "$out/alertmanager"
  (umask 077 && printf '%s' "$HALLMARK_ALERTMANAGER_SECRET" >"$out/alertmanager/client-secret")
  HALLMARK_ALERTMANAGER_SECRET_FILE="$(cd "$out/alertmanager" && pwd)/client-secret" \
    render_template deploy/alertmanager/alertmanager.yml "$out/alertmanager/alertmanager.yml"
  render_proxies "$out"
}

# Renders the authenticating proxies' configuration into directory $1/proxy/: a configuration
# each, the client secret and their cookie secrets in files that only this user reads (never on a
# command line, which every user of the machine can see).
render_proxies() {
  local out=$1
  mkdir -p "$out/proxy"
  chmod 700 "$out/proxy"
  (umask 077 && printf '%s' "$HALLMARK_STACK_PROXY_SECRET" >"$out/proxy/client-secret")
  render_proxy "$out/proxy" jaeger "$HALLMARK_JAEGER_PROXY_PORT" \
    "http://$HALLMARK_LOOPBACK:$HALLMARK_JAEGER_QUERY_PORT/" "$HALLMARK_JAEGER_ROLES"
  render_proxy "$out/proxy" prometheus "$HALLMARK_PROMETHEUS_PROXY_PORT" \
    "http://$HALLMARK_LOOPBACK:$HALLMARK_PROMETHEUS_PORT/" "$HALLMARK_PROMETHEUS_ROLES"
  render_proxy "$out/proxy" alertmanager "$HALLMARK_ALERTMANAGER_PROXY_PORT" \
    "http://$HALLMARK_LOOPBACK:$HALLMARK_ALERTMANAGER_PORT/" "$HALLMARK_ALERTMANAGER_ROLES"
}

# Renders deploy/oauth2-proxy/oauth2-proxy.cfg into directory $1 as $2.cfg: the proxy named $2
# on port $3 (of HALLMARK_PROXY_HOST) in front of URL $4, letting through the roles in $5
# (comma-separated), with a cookie secret of its own in $1/$2.cookie-secret.
render_proxy() {
  local dir=$1 name=$2 port=$3 upstream=$4 list=$5 secret groups= role roles
  secret=${HALLMARK_PROXY_COOKIE_SECRET:-$(head -c 32 /dev/urandom | base64 -w0 | tr '+/' '-_' | tr -d '=')}
  (umask 077 && printf '%s' "$secret" >"$dir/$name.cookie-secret")
  IFS=, read -ra roles <<<"$list"
  for role in "${roles[@]}"; do
    role=${role// /}
    if [ -n "$role" ]; then groups+="${groups:+, }\"$role\""; fi
  done
  [ -n "$groups" ] || die "the $name proxy lets no role through: give it roles (HALLMARK_${name^^}_ROLES)"
  local plain=1
  if [ -n "${HALLMARK_PROXY_TLS_CERT:-}${HALLMARK_PROXY_TLS_KEY:-}" ]; then plain=; fi
  HALLMARK_PROXY_DIR=$dir HALLMARK_PROXY_NAME=$name HALLMARK_PROXY_PORT=$port \
    HALLMARK_PROXY_UPSTREAM=$upstream HALLMARK_PROXY_ALLOWED_GROUPS=$groups \
    HALLMARK_PROXY_PLAIN_HTTP=$plain HALLMARK_PROXY_TLS_CERT=${HALLMARK_PROXY_TLS_CERT:-} \
    HALLMARK_PROXY_TLS_KEY=${HALLMARK_PROXY_TLS_KEY:-} \
    render_template deploy/oauth2-proxy/oauth2-proxy.cfg "$dir/$name.cfg"
}

# The collector's --config options: its configuration, and the TLS of its receivers over it when
# the stack has a certificate.
collector_configs() {
  printf -- '--config %s' "$PWD/deploy/collector/config.yaml"
  [ -z "${HALLMARK_STACK_TLS_CERT:-}" ] || printf -- ' --config %s' "$PWD/deploy/collector/tls.yaml"
}

# The commands that run each component of the stack, for directory $1 (rendered configuration
# and data), one per line: name, then the command line. scripts/run starts them; the stack tests
# start them the same way.
stack_commands() {
  local dir=$1
  printf 'jaeger\tenv HALLMARK_JAEGER_DATA=%s %s --config %s\n' \
    "$dir/jaeger" "$HALLMARK_JAEGER" "$PWD/deploy/jaeger/config.yaml"
  printf 'otel-collector\t%s %s\n' "$HALLMARK_JAEGER" "$(collector_configs)"
  # No --web.enable-lifecycle: through its proxy, anyone who may read would also be able to stop
  # it (POST /-/quit). It reloads its configuration on SIGHUP.
  printf 'prometheus\t%s --config.file=%s --web.listen-address=%s --storage.tsdb.path=%s\n' \
    "$HALLMARK_PROMETHEUS" "$dir/prometheus/prometheus.yml" "$HALLMARK_LOOPBACK:$HALLMARK_PROMETHEUS_PORT" "$dir/prometheus/data"
  printf 'alertmanager\t%s --config.file=%s --web.listen-address=%s --storage.path=%s --cluster.listen-address=\n' \
    "$HALLMARK_ALERTMANAGER" "$dir/alertmanager/alertmanager.yml" "$HALLMARK_LOOPBACK:$HALLMARK_ALERTMANAGER_PORT" "$dir/alertmanager/data"
  local proxy
  for proxy in jaeger prometheus alertmanager; do
    printf '%s-proxy\t%s --config=%s\n' "$proxy" "$HALLMARK_OAUTH2_PROXY" "$dir/proxy/$proxy.cfg"
  done
}

# Checks the rendered configuration in $1 with the tools' own checkers, and runs the rule unit
# tests (deploy/prometheus/tests/).
check_stack_config() {
  local dir=$1
  "$HALLMARK_PROMTOOL" check config "$dir/prometheus/prometheus.yml" >/dev/null \
    || die "the rendered Prometheus configuration is not valid"
  "$HALLMARK_AMTOOL" check-config "$dir/alertmanager/alertmanager.yml" >/dev/null \
    || die "the rendered Alertmanager configuration is not valid"
  # shellcheck disable=SC2046 # the options are words without spaces
  "$HALLMARK_JAEGER" validate $(collector_configs) >/dev/null 2>&1 \
    || die "the collector's configuration ($(collector_configs)) is not valid"
  # And the TLS overlay in any case, so that a change to it is checked without a certificate.
  HALLMARK_STACK_TLS_CERT=/dev/null HALLMARK_STACK_TLS_KEY=/dev/null "$HALLMARK_JAEGER" validate \
    --config "$PWD/deploy/collector/config.yaml" --config "$PWD/deploy/collector/tls.yaml" >/dev/null 2>&1 \
    || die "deploy/collector/tls.yaml over config.yaml is not a valid collector configuration"
  HALLMARK_JAEGER_DATA="$dir/jaeger" "$HALLMARK_JAEGER" validate --config "$PWD/deploy/jaeger/config.yaml" >/dev/null 2>&1 \
    || die "deploy/jaeger/config.yaml is not a valid Jaeger configuration"
  local proxy
  for proxy in jaeger prometheus alertmanager; do
    "$HALLMARK_OAUTH2_PROXY" --config="$dir/proxy/$proxy.cfg" --config-test >/dev/null 2>&1 \
      || die "the rendered configuration of the $proxy proxy is not valid: $("$HALLMARK_OAUTH2_PROXY" --config="$dir/proxy/$proxy.cfg" --config-test 2>&1 | tail -n 3)"
  done
  # Where alerts go: the dead man's switch nowhere, everything else to order-watch, pages also
  # to the on-call webhook when there is one.
  local config="$dir/alertmanager/alertmanager.yml" on_call=
  [ -n "${HALLMARK_ON_CALL_WEBHOOK_URL:-}" ] && on_call="on-call,"
  route_is "$config" blackhole alertname=Watchdog severity=none
  route_is "$config" "${on_call}order-watch" alertname=OrdersStuck severity=page service=mes-api
  route_is "$config" order-watch alertname=MessagesDeadLettered severity=ticket service=mes-api
}

# Fails unless Alertmanager configuration $1 sends an alert with labels $3… to receivers $2.
route_is() {
  local config=$1 expected=$2
  shift 2
  local got
  got=$("$HALLMARK_AMTOOL" config routes test --config.file="$config" "$@")
  [ "$got" = "$expected" ] || die "an alert $* goes to '$got' instead of '$expected' ($config)"
}

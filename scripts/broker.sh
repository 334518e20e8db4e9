# The development broker's accounts: sourced by scripts/deps.sh (which defines say, die and
# is_root); defines functions only.
#
# Every service connects to RabbitMQ as its own user and the `hallmark dlq` command as the
# operator's (docs/security.md, "The broker"). ensure_broker_accounts creates them on this
# machine's RabbitMQ with their development passwords and gives each exactly the permissions
# `hallmark broker accounts` prints (derived from the code: who owns which message, who consumes
# which queue). It needs root (rabbitmqctl) and the built `hallmark` command, so scripts/run and
# scripts/test call it after building. It is idempotent and only changes what differs: when
# nothing does, it costs three rabbitmqctl calls (about 3 s).
#
# The development accounts and passwords (local only; `guest` and these passwords are refused
# wherever HALLMARK_ENV is not development or test):
#   hallmark-shop / hallmark-shop-local-only    hallmark-crm / hallmark-crm-local-only
#   hallmark-mes  / hallmark-mes-local-only     hallmark-ops / hallmark-ops-local-only
# (the same as messaging::Party::development_account).
#
# The vhost permissions cover any one-word namespace (the tests make their own); the topic
# permissions, which RabbitMQ gives per exchange name, are given for the exchanges without a
# namespace and for those of the namespace acl-test (testkit::broker::ACL_NAMESPACE), on which
# the tests check what the broker refuses.

HALLMARK_ACL_TEST_NAMESPACE=acl-test

# rabbitmqctl, quiet and kept away from the caller's stdin (it reads it, which would swallow the
# lines of a `while read` loop).
rabbitmqctl_quiet() { rabbitmqctl -q "$@" </dev/null >/dev/null; }

# ensure_broker_accounts [HALLMARK]: HALLMARK is the built `hallmark` command (default
# target/debug/hallmark).
ensure_broker_accounts() {
  local hallmark=${1:-target/debug/hallmark}
  [ -x "$hallmark" ] || die "ensure_broker_accounts needs the hallmark command; build it first (cargo build -p hallmark-cli)"
  if ! is_root || ! command -v rabbitmqctl >/dev/null 2>&1; then
    say "not creating RabbitMQ's development accounts (needs root and rabbitmqctl); services and tests need them: run 'source scripts/deps.sh && ensure_broker_accounts' as root"
    return 0
  fi
  local desired users permissions topics kind user a b c line
  # Only the accounts map and the namespace matter here, never a connection's URL.
  desired=$(env -u HALLMARK_AMQP_URL HALLMARK_ENV=development "$hallmark" broker accounts \
    --any-namespace --topic-namespace "$HALLMARK_ACL_TEST_NAMESPACE") \
    || die "hallmark broker accounts failed"
  users=$(rabbitmqctl -q --no-table-headers list_users </dev/null | cut -f1)
  permissions=$(rabbitmqctl -q --no-table-headers list_permissions -p / </dev/null)
  topics=$(rabbitmqctl -q --no-table-headers list_topic_permissions -p / </dev/null)
  while IFS=$'\t' read -r kind user a b c; do
    line="$user"$'\t'"$a"$'\t'"$b"$'\t'"$c"
    case $kind in
      permissions)
        if ! grep -qxF -- "$user" <<<"$users"; then
          say "creating the RabbitMQ account $user (development password $user-local-only)"
          rabbitmqctl_quiet add_user "$user" "$user-local-only"
        fi
        if ! grep -qxF -- "$line" <<<"$permissions"; then
          say "setting the permissions of $user"
          rabbitmqctl_quiet set_permissions -p / "$user" "$a" "$b" "$c"
        fi
        ;;
      topic)
        if ! grep -qxF -- "$line" <<<"$topics"; then
          say "setting the topic permissions of $user on $a"
          rabbitmqctl_quiet set_topic_permissions -p / "$user" "$a" "$b" "$c"
        fi
        ;;
    esac
  done <<<"$desired"
  # Topic permissions an earlier version gave on exchanges that are no longer ours to restrict.
  while IFS=$'\t' read -r user a b c; do
    [ -n "$user" ] || continue
    grep -q -- "^permissions"$'\t'"$user"$'\t' <<<"$desired" || continue
    if ! grep -q -- "^topic"$'\t'"$user"$'\t'"$a"$'\t' <<<"$desired"; then
      say "clearing the topic permissions of $user on $a"
      rabbitmqctl_quiet clear_topic_permissions -p / "$user" "$a"
    fi
  done <<<"$topics"
}

# TLS for the development broker: a listener on 5671 (amqps://) with a certificate of the
# machine's local certificate authority (scripts/deps.sh, ensure_local_ca: the one PostgreSQL's
# certificate comes from too), for the tests that connect with TLS (messaging's tests/tls.rs) and
# for trying HALLMARK_AMQP_CA_FILE by hand. ensure_broker_tls keeps in $HALLMARK_BROKER_TLS_DIR:
#   ca.pem            the local CA's certificate (its key never leaves $HALLMARK_TLS_DIR)
#   server.pem/.key   the broker's certificate, for localhost, 127.0.0.1 and ::1
#   client.pem/.key   a client certificate of the same CA (HALLMARK_AMQP_CLIENT_CERT/KEY)
#   other-ca.pem      an unrelated CA that signed nothing: trusting it instead must fail
# and the listener in RabbitMQ's configuration (a marked block in /etc/rabbitmq/rabbitmq.conf).
# When the files change (first run, a renewed certificate, another CA) it installs them and
# restarts the broker's application so that the listener takes them; otherwise it does nothing.
# The broker asks clients for a certificate (verify_peer) but lets them connect without one, so
# a client with a certificate of another CA is refused while password logins work as on 5672.
HALLMARK_BROKER_TLS_DIR=${HALLMARK_BROKER_TLS_DIR:-/etc/rabbitmq/hallmark-tls}
HALLMARK_BROKER_TLS_PORT=5671

ensure_broker_tls() {
  local dir=$HALLMARK_BROKER_TLS_DIR port=$HALLMARK_BROKER_TLS_PORT conf=/etc/rabbitmq/rabbitmq.conf
  if ! is_root || ! command -v rabbitmqctl >/dev/null 2>&1; then
    say "not enabling RabbitMQ's TLS listener (needs root and rabbitmqctl): the TLS tests need it; run 'source scripts/deps.sh && ensure_broker_tls' as root"
    return 0
  fi
  issue_local_cert rabbitmq
  issue_local_cert amqp-client
  local changed= tls=$HALLMARK_TLS_DIR
  if ! cmp -s "$tls/ca.pem" "$dir/ca.pem" || ! cmp -s "$tls/rabbitmq.pem" "$dir/server.pem" \
    || ! cmp -s "$tls/amqp-client.pem" "$dir/client.pem" || [ ! -f "$dir/other-ca.pem" ]; then
    say "installing RabbitMQ's TLS certificates (of the local CA) in $dir"
    install -d -m 755 "$dir"
    install -m 644 "$tls/ca.pem" "$dir/ca.pem"
    install -m 644 "$tls/rabbitmq.pem" "$dir/server.pem"
    install -m 640 -g rabbitmq "$tls/rabbitmq.key" "$dir/server.key"
    install -m 644 "$tls/amqp-client.pem" "$dir/client.pem"
    install -m 644 "$tls/amqp-client.key" "$dir/client.key"
    if [ ! -f "$dir/other-ca.pem" ]; then
      new_authority "$dir/other-ca" "/CN=Not the Hallmark CA"
      rm -f "$dir/other-ca.key"
      chmod 644 "$dir/other-ca.pem"
    fi
    rm -f "$dir/ca.key" "$dir/ca.srl"
    changed=1
  fi
  if ! grep -q '^# hallmark: TLS listener' "$conf" 2>/dev/null; then
    say "adding the TLS listener on $port to $conf"
    cat >>"$conf" <<CONF
# hallmark: TLS listener for development (scripts/broker.sh, ensure_broker_tls)
listeners.ssl.default = $port
ssl_options.cacertfile = $dir/ca.pem
ssl_options.certfile = $dir/server.pem
ssl_options.keyfile = $dir/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
# hallmark: end
CONF
    changed=1
  fi
  if [ -n "$changed" ] || ! port_open "$port"; then
    say "restarting RabbitMQ's application so that its TLS listener on $port takes the certificates"
    # Erlang keeps PEM files it read in a cache keyed by path: forget them, or the listener
    # would come back with the old certificate.
    rabbitmqctl -q eval 'ssl:clear_pem_cache().' >/dev/null 2>&1 || true
    rabbitmqctl -q stop_app >/dev/null && rabbitmqctl -q start_app >/dev/null \
      || die "RabbitMQ did not restart its application; see its log"
    wait_for_port 5672 RabbitMQ 60
    wait_for_port "$port" "RabbitMQ's TLS listener" 30
  fi
}

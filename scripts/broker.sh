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

# Shared by scripts/run and scripts/test: make sure PostgreSQL and RabbitMQ are installed,
# running and reachable the way Hallmark expects. Source it; it defines functions only.
#
# What it guarantees after `ensure_dependencies`:
# - PostgreSQL on 127.0.0.1:5432 with a login role `hallmark` (password `hallmark`, CREATEDB);
# - RabbitMQ on 127.0.0.1:5672 accepting guest/guest from this machine (the tests' administrator
#   account), with its Prometheus endpoint on 15692, and a TLS listener on 5671 with certificates
#   of a local CA in /etc/rabbitmq/hallmark-tls (scripts/broker.sh, ensure_broker_tls);
# - a certificate authority of this machine's own (ensure_local_ca) and, when run as root,
#   PostgreSQL serving TLS with a certificate it signed, so a client that checks the server
#   (`sslmode=verify-full&sslrootcert=$HALLMARK_TLS_DIR/ca.pem`) can (docs/security.md).
# The services' own broker accounts need the built `hallmark` command: scripts/broker.sh
# (sourced here) defines ensure_broker_accounts, which scripts/run and scripts/test call after
# building.
# When something is missing it installs it from Debian packages if run as root, and otherwise
# says exactly what to install.

HALLMARK_DB_ADMIN_URL="${HALLMARK_DB_ADMIN_URL:-postgres://hallmark:hallmark@127.0.0.1:5432/postgres}"

say() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
die() { printf '\033[31merror:\033[0m %s\n' "$*" >&2; exit 1; }

# Succeeds when TCP port $1 of host $2 (default 127.0.0.1) accepts a connection.
port_open() { (exec 3<>"/dev/tcp/${2:-127.0.0.1}/$1") 2>/dev/null; }

wait_for_port() {
  local port=$1 what=$2 seconds=${3:-60}
  for _ in $(seq "$seconds"); do
    port_open "$port" && return 0
    sleep 1
  done
  die "$what did not open port $port within ${seconds}s"
}

is_root() { [ "$(id -u)" = 0 ]; }

apt_install() {
  is_root || die "missing packages: $*. Install them with: sudo apt-get install -y $*"
  say "installing $* from Debian packages"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
  if ! command -v pg_ctlcluster >/dev/null 2>&1 && ! port_open 5432; then
    apt_install postgresql postgresql-client
  fi
  command -v psql >/dev/null 2>&1 || apt_install postgresql-client
  if ! port_open 5432; then
    local version
    version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
    [ -n "$version" ] || die "PostgreSQL is installed but has no cluster; create one with: pg_createcluster --start 15 main"
    say "starting PostgreSQL $version"
    if is_root; then
      pg_ctlcluster --skip-systemctl-redirect "$version" main start
    else
      die "PostgreSQL is not running; start it with: sudo pg_ctlcluster $version main start"
    fi
    wait_for_port 5432 PostgreSQL
  fi
  # The hallmark role: services and tests connect with it over TCP, whatever the server's
  # local authentication (trust here, scram on a stock Debian install).
  if ! psql "$HALLMARK_DB_ADMIN_URL" -Atqc 'select 1' >/dev/null 2>&1; then
    say "creating the PostgreSQL role hallmark"
    local create="DO \$\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'hallmark') THEN CREATE ROLE hallmark LOGIN CREATEDB PASSWORD 'hallmark'; END IF; END \$\$;"
    if is_root && id postgres >/dev/null 2>&1; then
      runuser -u postgres -- psql -qc "$create" >/dev/null
    else
      psql "postgres://postgres@127.0.0.1:5432/postgres" -qc "$create" >/dev/null \
        || die "cannot create the role hallmark; run as a PostgreSQL superuser: CREATE ROLE hallmark LOGIN CREATEDB PASSWORD 'hallmark'"
    fi
    psql "$HALLMARK_DB_ADMIN_URL" -Atqc 'select 1' >/dev/null \
      || die "the role hallmark cannot log in over TCP; allow password (scram-sha-256) authentication for 127.0.0.1 in pg_hba.conf"
  fi
}

# Creates database $1 (owned by hallmark) unless it exists.
ensure_database() {
  local name=$1
  if [ "$(psql "$HALLMARK_DB_ADMIN_URL" -Atqc "select 1 from pg_database where datname = '$name'")" != 1 ]; then
    say "creating database $name"
    psql "$HALLMARK_DB_ADMIN_URL" -qc "create database \"$name\"" >/dev/null
  fi
}

ensure_rabbitmq() {
  if ! port_open 5672; then
    command -v rabbitmq-server >/dev/null 2>&1 || apt_install rabbitmq-server
    if ! port_open 5672; then
      is_root || die "RabbitMQ is not running; start it with: sudo rabbitmq-server -detached"
      say "starting RabbitMQ"
      rabbitmq-server -detached >/dev/null 2>&1 || true
      wait_for_port 5672 RabbitMQ 120
    fi
  fi
  # The port opens before the broker accepts connections; wait until it is really up.
  if command -v rabbitmqctl >/dev/null 2>&1 && is_root; then
    timeout 120 rabbitmqctl await_startup >/dev/null 2>&1 || true
  fi
  # Its Prometheus endpoint (15692): queue depths, dead-letter queues included, for the stack.
  if ! port_open 15692 && command -v rabbitmq-plugins >/dev/null 2>&1 && is_root; then
    say "enabling RabbitMQ's Prometheus endpoint"
    rabbitmq-plugins enable rabbitmq_prometheus >/dev/null
    wait_for_port 15692 "RabbitMQ's Prometheus endpoint" 30
  fi
}

# For the browser test (e2e/browser): Debian's Chromium at /usr/bin/chromium (playwright-core
# drives it; it never downloads a browser of its own), Node.js with npm, and the test's pinned
# packages installed from e2e/browser/package-lock.json.
ensure_browser_test() {
  [ -x /usr/bin/chromium ] || apt_install chromium
  command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 \
    || die "the browser test needs Node.js 20 or later with npm (Debian 12's own nodejs is 18: too old)"
  [ "$(node -p 'process.versions.node.split(".")[0]')" -ge 20 ] \
    || die "the browser test needs Node.js 20 or later; this is $(node --version)"
  say "installing the browser test's packages (npm ci in e2e/browser)"
  (cd e2e/browser && npm ci --no-audit --no-fund --loglevel=error >/dev/null) \
    || die "npm ci failed in e2e/browser"
}

# Where the local certificate authority and the certificates it issued live. State, not cache:
# deleting it makes the next run issue new ones (and reconfigure the servers that use them).
HALLMARK_TLS_DIR="${HALLMARK_TLS_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/hallmark/tls}"
export HALLMARK_TLS_DIR

# A certificate authority for encryption in transit between Hallmark's processes on this
# machine: $HALLMARK_TLS_DIR/ca.pem (trust this) and ca.key (never leaves the directory). For
# development and tests only; a deployment uses its own PKI.
ensure_local_ca() {
  [ -s "$HALLMARK_TLS_DIR/ca.pem" ] && [ -s "$HALLMARK_TLS_DIR/ca.key" ] && return 0
  say "creating a local certificate authority in $HALLMARK_TLS_DIR"
  mkdir -p "$HALLMARK_TLS_DIR" && chmod 700 "$HALLMARK_TLS_DIR"
  new_authority "$HALLMARK_TLS_DIR/ca" "/CN=Hallmark local development CA"
}

# new_authority PATH SUBJECT: a self-signed certificate authority PATH.pem with its key PATH.key.
new_authority() {
  command -v openssl >/dev/null 2>&1 || apt_install openssl
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "$2" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
    -keyout "$1.key" -out "$1.pem" 2>/dev/null \
    || die "openssl could not create the certificate authority $1.pem"
}

# issue_local_cert NAME: $HALLMARK_TLS_DIR/NAME.pem and NAME.key, a certificate for 127.0.0.1,
# ::1 and localhost (server and client use) signed by the local CA; kept while it is valid for
# another 30 days, issued afresh otherwise.
issue_local_cert() {
  local name=$1 dir=$HALLMARK_TLS_DIR
  ensure_local_ca
  if [ -s "$dir/$name.pem" ] && [ -s "$dir/$name.key" ] \
    && openssl x509 -checkend $((30 * 86400)) -noout -in "$dir/$name.pem" >/dev/null 2>&1; then
    return 0
  fi
  say "issuing a local certificate for $name"
  local extensions
  extensions=$(mktemp)
  printf '%s\n' 'subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost' \
    'basicConstraints=critical,CA:FALSE' 'keyUsage=critical,digitalSignature' \
    'extendedKeyUsage=serverAuth,clientAuth' >"$extensions"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$name" \
    -keyout "$dir/$name.key" -out "$dir/$name.csr" 2>/dev/null \
    && openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
      -set_serial "0x$(openssl rand -hex 16)" -days 825 -extfile "$extensions" \
      -out "$dir/$name.pem" 2>/dev/null \
    || { rm -f "$extensions"; die "openssl could not issue the certificate for $name"; }
  rm -f "$extensions" "$dir/$name.csr"
  chmod 600 "$dir/$name.key"
}

# PostgreSQL serves TLS with a certificate of the local CA instead of Debian's self-signed one,
# so clients can verify it. Plain connections stay allowed for the local tools (pg_hba.conf
# decides; docs/security.md shows how to require TLS). Needs root (the server's own files).
ensure_postgres_tls() {
  if ! is_root || ! id postgres >/dev/null 2>&1; then
    say "not root: PostgreSQL keeps its own TLS certificate (clients cannot verify it against the local CA)"
    return 0
  fi
  issue_local_cert postgres
  local dir=/var/lib/postgresql/hallmark-tls reload=
  if ! cmp -s "$HALLMARK_TLS_DIR/postgres.pem" "$dir/server.pem" 2>/dev/null; then
    install -d -o postgres -g postgres -m 700 "$dir"
    install -o postgres -g postgres -m 644 "$HALLMARK_TLS_DIR/postgres.pem" "$dir/server.pem"
    install -o postgres -g postgres -m 600 "$HALLMARK_TLS_DIR/postgres.key" "$dir/server.key"
    reload=1
  fi
  local pg=(runuser -u postgres -- psql -Atq)
  if [ "$("${pg[@]}" -c 'show ssl_cert_file')" != "$dir/server.pem" ] \
    || [ "$("${pg[@]}" -c 'show ssl')" != on ]; then
    say "PostgreSQL: serving TLS with the local CA's certificate"
    "${pg[@]}" -c 'alter system set ssl = on' \
      -c "alter system set ssl_cert_file = '$dir/server.pem'" \
      -c "alter system set ssl_key_file = '$dir/server.key'" >/dev/null
    reload=1
  fi
  if [ -n "$reload" ]; then
    "${pg[@]}" -c 'select pg_reload_conf()' >/dev/null
  fi
}

ensure_dependencies() {
  ensure_postgres
  ensure_postgres_tls
  ensure_rabbitmq
  ensure_broker_tls
}

source "${BASH_SOURCE[0]%/*}/broker.sh"

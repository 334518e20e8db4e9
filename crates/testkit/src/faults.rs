//! Faults in the real infrastructure, for the reliability tests.
//!
//! * [`cut_broker_connections`] closes the broker connections of one test's namespace only, so
//!   it is safe next to other tests.
//! * [`stop_broker`] / [`start_broker`] and [`restart_postgres`] take the shared servers down:
//!   tests that use them must not run next to any other test (see `e2e/tests/outages.rs`, a test
//!   binary of its own whose tests hold [`exclusive`]; `cargo test` runs test binaries one after
//!   another).
//!
//! They drive the servers through `rabbitmqctl` and `pg_ctlcluster` (Debian's packages, as
//! `scripts/deps.sh` installs them) and need to run as root, like `scripts/test` on CI does.

use std::time::Duration;

use tokio::process::Command;
use tokio::sync::{Mutex, MutexGuard};

static EXCLUSIVE: Mutex<()> = Mutex::const_new(());

/// Held by every test of a binary that stops shared servers, so they take turns.
pub async fn exclusive() -> MutexGuard<'static, ()> {
    EXCLUSIVE.lock().await
}

async fn run(program: &str, args: &[&str]) -> String {
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new(program).args(args).output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{program} {args:?} did not finish within 2 minutes"))
    .unwrap_or_else(|e| {
        panic!("cannot run {program} (run the tests as root via scripts/test): {e}")
    });
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Closes every broker connection whose name carries `namespace` (services name their
/// connections `<service> [<namespace>]`), as a network cut or a broker-side kill would.
/// Returns how many it closed.
pub async fn cut_broker_connections(namespace: &str) -> usize {
    connections(
        namespace,
        "[catch rabbit_networking:close_connection(P, \"fault injected by a test\") || P <- Ps], ",
    )
    .await
}

/// How many broker connections carry `namespace` in their name.
pub async fn broker_connections(namespace: &str) -> usize {
    connections(namespace, "").await
}

/// Runs `action` (Erlang, on the list `Ps` of the namespace's connections) and counts them.
///
/// A connection still in its handshake has no client properties yet (`none`), and one may
/// close between listing and asking; neither is ours to count, and neither may fail the eval.
async fn connections(namespace: &str, action: &str) -> usize {
    // The namespace is `t` and hex digits, nothing that could break out of the string.
    assert!(
        namespace.chars().all(|c| c.is_ascii_alphanumeric()),
        "unexpected namespace {namespace:?}"
    );
    let program = format!(
        "Ns = \"[{namespace}]\", \
         Ps = [P || P <- rabbit_networking:connections(), \
               case catch rabbit_networking:connection_info(P, [client_properties]) of \
                   [{{client_properties, C}}] when is_list(C) -> \
                       case lists:keyfind(<<\"connection_name\">>, 1, C) of \
                           {{_, longstr, N}} -> string:find(binary_to_list(N), Ns) =/= nomatch; \
                           _ -> false \
                       end; \
                   _ -> false \
               end], \
         {action}length(Ps)."
    );
    let count = run("rabbitmqctl", &["eval", &program]).await;
    count
        .parse()
        .unwrap_or_else(|_| panic!("rabbitmqctl eval answered {count:?}"))
}

/// Stops the RabbitMQ application (the node stays up to be started again); every connection
/// drops and new ones are refused.
pub async fn stop_broker() {
    run("rabbitmqctl", &["stop_app"]).await;
}

/// Starts the RabbitMQ application again and waits until it accepts connections.
pub async fn start_broker() {
    run("rabbitmqctl", &["start_app"]).await;
    run("rabbitmqctl", &["await_startup"]).await;
}

/// Restarts the PostgreSQL cluster listening on port 5432: every connection drops, and for a
/// moment new ones are refused.
pub async fn restart_postgres() {
    let clusters = run("pg_lsclusters", &["--no-header"]).await;
    let (version, name) = clusters
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.get(2) == Some(&"5432"))
        .map(|fields| (fields[0].to_owned(), fields[1].to_owned()))
        .unwrap_or_else(|| panic!("no PostgreSQL cluster on port 5432 in:\n{clusters}"));
    run(
        "pg_ctlcluster",
        &["--skip-systemctl-redirect", &version, &name, "restart"],
    )
    .await;
}

//! The operators' stack, real and tested: services → OpenTelemetry Collector → Jaeger and
//! order-watch; Prometheus with the SLO rules → Alertmanager → order-watch incidents. Every
//! component is the real program, configured from deploy/ as `scripts/run` does (e2e::stack).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use e2e::PATIENCE;
use e2e::stack::{Component, Stack};
use serde_json::Value;
use testkit::oidc::Issuer;
use uuid::Uuid;

/// Longer than the rules' `for` (at most 2 minutes), scrapes and notification included.
const ALERT_PATIENCE: Duration = Duration::from_secs(200);

/// order-watch's thresholds here: a customer has an hour (nothing due during a test).
const WATCH_CONFIG: &str = "[stuck_after]\ncustomer_confirmation = \"1h\"\n";

fn services_of_trace(trace: &Value) -> BTreeSet<String> {
    trace["processes"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, p)| p["serviceName"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn an_orders_traces_are_found_in_jaeger_by_its_id_and_hold_no_personal_data() {
    let stack = Stack::start(&[], WATCH_CONFIG, &[]).await;
    let system = &stack.system;
    let order = system.place_order("torus.STL", "gold_585").await;
    let id = order.id;
    system.until_shop_status(id, "priced").await;
    system.confirm(id).await;

    // Every service's spans, the engine's included, and the confirmation's trace linked to the
    // order's earlier one, found by the order's id alone.
    let traces = testkit::wait::until("the order's traces in Jaeger", PATIENCE, || async {
        let traces = stack.jaeger_traces_of_order("shop-api", id).await;
        let services: BTreeSet<String> = traces.iter().flat_map(services_of_trace).collect();
        let linked = traces
            .iter()
            .flat_map(|t| t["spans"].as_array().cloned().unwrap_or_default())
            .any(|span| {
                span["references"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|r| r["traceID"] != span["traceID"])
            });
        let complete = ["shop-api", "crm-api", "mes-api", "mes-calc"]
            .iter()
            .all(|s| services.contains(*s));
        (complete && linked && traces.len() >= 2).then_some(traces)
    })
    .await;
    assert!(
        traces
            .iter()
            .any(|t| t["traceID"] == order.trace_id.as_str()),
        "the trace the shop answered with is among them"
    );

    // A service that forgot to mask: the collector deletes the keys that must never be stored.
    let marker = format!("marker-{}", Uuid::now_v7().simple());
    let leak = format!("leak-{}@example.com", Uuid::now_v7().simple());
    let trace_id = Uuid::now_v7().simple().to_string();
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap();
    let span = serde_json::json!({"resourceSpans": [{
    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "careless-api"}}]},
    "scopeSpans": [{"spans": [{
        "traceId": trace_id, "spanId": "0102030405060708", "name": "careless", "kind": 2,
        "startTimeUnixNano": now.to_string(), "endTimeUnixNano": (now + 1_000_000).to_string(),
        "attributes": [
            {"key": "customer.email", "value": {"stringValue": leak}},
            {"key": "customer.phone", "value": {"stringValue": "+49 170 7654321"}},
            {"key": "contact.email", "value": {"stringValue": leak}},
            {"key": "note", "value": {"stringValue": marker}}
        ]}]}]}]});
    let response = stack
        .client
        .post(format!("{}/v1/traces", stack.collector_url()))
        .json(&span)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let careless = testkit::wait::until("the careless span in Jaeger", PATIENCE, || async {
        let traces = stack
            .jaeger_traces("service=careless-api&lookback=1h")
            .await;
        traces.into_iter().next()
    })
    .await;
    let text = careless.to_string();
    assert!(text.contains(&marker), "the span arrived: {text}");
    for personal in [leak.as_str(), "7654321", "customer.email", "customer.phone"] {
        assert!(
            !text.contains(personal),
            "{personal} reached Jaeger: {text}"
        );
    }
    // And the order's own customer, masked in the services, is nowhere in its traces.
    let text = serde_json::to_string(&traces).unwrap();
    for personal in ["Jane Doe", "jane.doe@example.com", "170 1234567"] {
        assert!(!text.contains(personal), "{personal} reached Jaeger");
    }
    // Nor in Jaeger's files: the marker shows that the store's files hold values in clear.
    let data = stack.jaeger_data();
    testkit::wait::until("the store's files hold the marker", PATIENCE, || async {
        files_contain(&data, &marker).then_some(())
    })
    .await;
    assert!(
        !files_contain(&data, &leak),
        "the e-mail address is in Jaeger's files"
    );

    // Every target is up, and the spanmetrics and each service's metrics are in Prometheus.
    testkit::wait::until("every target up", PATIENCE, || async {
        let down = stack.series("up == 0").await;
        let up = stack.series("up == 1").await;
        (down.is_empty() && up.len() == 10).then_some(())
    })
    .await;
    for query in [
        "traces_span_metrics_calls_total{service_name=\"mes-calc\"}",
        "traces_span_metrics_duration_seconds_bucket{service_name=\"shop-api\"}",
        "hallmark_price_calculation_duration_seconds_count{job=\"mes-api\"}",
        "hallmark_event_delivery_duration_seconds_count{job=\"shop-api\"}",
        "hallmark_queue_wait_seconds_count{job=\"crm-api\"}",
        "order_watch_orders_open{job=\"order-watch\"}",
        "otelcol_exporter_sent_spans_total{job=\"otel-collector\"}",
    ] {
        testkit::wait::until(query, PATIENCE, || async {
            (!stack.series(query).await.is_empty()).then_some(())
        })
        .await;
    }

    // Every panel of every dashboard asks valid PromQL and shows data after this traffic.
    for (dashboard, expr) in dashboard_queries() {
        let query = expr.replace("$service", ".*");
        let (status, body) = stack.query(&query).await;
        assert_eq!(
            status, 200,
            "{dashboard}: {expr} is not valid PromQL: {body}"
        );
        testkit::wait::until(&format!("{dashboard}: {expr}"), PATIENCE, || async {
            (!stack.series(&query).await.is_empty()).then_some(())
        })
        .await;
    }
}

/// `(dashboard file, PromQL)` of every panel target of deploy/grafana/dashboards.
fn dashboard_queries() -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/dashboards");
    let mut queries = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("the dashboards folder") {
        let path = entry.expect("an entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
        let panels = dashboard["panels"].as_array().expect("panels");
        assert!(!panels.is_empty(), "{name} has no panels");
        for panel in panels {
            let targets = panel["targets"].as_array().expect("targets");
            assert!(
                !targets.is_empty(),
                "{name}: {} has no query",
                panel["title"]
            );
            for target in targets {
                queries.push((
                    name.clone(),
                    target["expr"].as_str().expect("expr").to_owned(),
                ));
            }
        }
    }
    assert!(queries.len() >= 15, "{queries:?}");
    queries
}

/// Whether any file under `dir` holds `text` (grep reads badger's large, mostly empty files fast).
fn files_contain(dir: &std::path::Path, text: &str) -> bool {
    std::process::Command::new("grep")
        .args(["-r", "-a", "-q", "-F", "--", text])
        .arg(dir)
        .status()
        .expect("grep runs")
        .success()
}

/// A calculation engine that hangs while file `stall` exists, then does its work: the stall is
/// real (MES waits for the engine as it would for a hung one) and can be lifted.
fn engine_that_stalls_while(stall: &std::path::Path) -> tempfile::TempPath {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    let mut file = tempfile::NamedTempFile::new().expect("a script file");
    writeln!(
        file,
        "#!/bin/sh\nwhile [ -e '{}' ]; do sleep 0.2; done\nexec '{}' \"$@\"",
        stall.display(),
        testkit::process::binary("mes-calc").display()
    )
    .expect("the script is written");
    let path = file.into_temp_path();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .expect("the script is executable");
    path
}

/// order-watch's incidents opened from Alertmanager alerts named `alertname`.
async fn alert_incidents(stack: &Stack, alertname: &str) -> Vec<Value> {
    let (status, incidents) = stack.watch.get("/api/incidents").await;
    assert_eq!(status, 200, "{incidents}");
    incidents
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["kind"] == "alert" && i["labels"]["alertname"] == alertname)
        .cloned()
        .collect()
}

/// Waits until every order-watch incident of alert `alertname` is resolved.
async fn until_resolved(stack: &Stack, alertname: &str) {
    testkit::wait::until(&format!("{alertname} resolved"), ALERT_PATIENCE, || async {
        let incidents = alert_incidents(stack, alertname).await;
        incidents
            .iter()
            .all(|i| !i["resolved_at"].is_null())
            .then_some(())
    })
    .await;
}

/// Alertmanager posts its alerts to order-watch with a token of its service identity (the client
/// `alertmanager` of the tests' identity provider, role `alert-sender`), which it must be able to
/// get even when order-watch does not ask for it: the alert tests need the identity provider.
fn alert_sender_issuer() -> Issuer {
    Issuer::required()
}

#[tokio::test]
async fn a_stalled_pricing_pages_through_prometheus_and_alertmanager_and_recovery_resolves_it() {
    let stall = tempfile::NamedTempFile::new().expect("the stall switch");
    let engine = engine_that_stalls_while(stall.path());
    let engine_path = engine.display().to_string();
    // order-watch behind the identity provider, as scripts/run starts it: it takes the alerts
    // only from Alertmanager's service identity, and support reads the incidents.
    let issuer = alert_sender_issuer();
    let mut stack = Stack::start(
        &[("MES_CALC_BIN", &engine_path), ("MES_CALC_TIMEOUT", "10m")],
        WATCH_CONFIG,
        &[
            ("ORDER_WATCH_STUCK_AFTER", "3s"),
            ("ORDER_WATCH_OIDC_ISSUER", issuer.url()),
        ],
    )
    .await;
    stack.watch.read_as(issuer, "support");
    let system = &stack.system;
    let order = system.place_order("20mm-xyz-cube.stl", "silver_925").await;
    system.until_status_in("mes", order.id, "pricing").await;
    let stalled = Instant::now();

    let incident = testkit::wait::until("the OrdersStuck incident", ALERT_PATIENCE, || async {
        alert_incidents(&stack, "OrdersStuck")
            .await
            .into_iter()
            .next()
    })
    .await;
    let to_incident = stalled.elapsed();
    eprintln!("stall to order-watch incident through Prometheus and Alertmanager: {to_incident:?}");
    assert_eq!(incident["labels"]["stage"], "pricing", "{incident}");
    assert_eq!(incident["labels"]["service"], "mes-api", "{incident}");
    assert_eq!(incident["labels"]["severity"], "page", "{incident}");
    assert!(incident["resolved_at"].is_null());

    // MES's engine comes back: the order is priced, the alert resolves, and so does the incident.
    std::fs::remove_file(stall.path()).expect("the stall is lifted");
    system.until_shop_status(order.id, "priced").await;
    until_resolved(&stack, "OrdersStuck").await;
}

#[tokio::test]
async fn a_stopped_mes_pages_once_and_not_for_everything_waiting_on_it() {
    // order-watch open here (development and tests without an issuer): it takes Alertmanager's
    // alerts, token or not.
    alert_sender_issuer();
    let stack = Stack::start(
        &[],
        WATCH_CONFIG,
        &[
            ("ORDER_WATCH_STUCK_AFTER", "3s"),
            ("ORDER_WATCH_CONFIRM_TIMEOUT", "1s"),
        ],
    )
    .await;
    let system = &stack.system;
    system.mes.pause();
    let orders = [
        system.place_order("torus.STL", "gold_585").await.id,
        system.place_order("torus.STL", "gold_585").await.id,
    ];
    // MES is one page: ServiceDown, in order-watch's incidents; the orders waiting on it are
    // flagged in order-watch, and their alert fires in Prometheus but is silenced by ServiceDown.
    let incident = testkit::wait::until("the ServiceDown incident", ALERT_PATIENCE, || async {
        alert_incidents(&stack, "ServiceDown")
            .await
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(incident["labels"]["service"], "mes-api", "{incident}");
    testkit::wait::until(
        "the stuck orders' alert silenced",
        ALERT_PATIENCE,
        || async {
            let alerts = stack.alertmanager_alerts().await;
            let silenced = alerts.iter().any(|a| {
                a["labels"]["alertname"] == "OrdersStuckUnconfirmed"
                    && a["labels"]["service"] == "mes-api"
                    && a["status"]["state"] == "suppressed"
                    && a["status"]["inhibitedBy"]
                        .as_array()
                        .is_some_and(|by| !by.is_empty())
            });
            silenced.then_some(())
        },
    )
    .await;
    for id in orders {
        assert!(stack.watch.stuck_order(id).await.is_some(), "{id} flagged");
    }
    let pages: BTreeMap<String, usize> = {
        let (_, incidents) = stack.watch.get("/api/incidents?open=true").await;
        let mut pages = BTreeMap::new();
        for incident in incidents.as_array().into_iter().flatten() {
            if incident["kind"] == "alert" && incident["labels"]["alertname"] != "Watchdog" {
                let name = incident["labels"]["alertname"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                *pages.entry(name).or_default() += 1;
            }
        }
        pages
    };
    assert_eq!(
        pages,
        BTreeMap::from([("ServiceDown".to_owned(), 1)]),
        "one page for a stopped MES"
    );

    // MES back: the orders are priced and everything resolves.
    system.mes.resume();
    for id in orders {
        system.until_shop_status(id, "priced").await;
    }
    until_resolved(&stack, "ServiceDown").await;
}

#[tokio::test]
async fn restarting_the_collector_and_jaeger_under_traffic_loses_no_span_the_exporters_delivered() {
    let mut stack = Stack::start(&[], WATCH_CONFIG, &[]).await;
    let placing = {
        let shop = stack.system.shop.url();
        let client = stack.system.client.clone();
        tokio::spawn(async move {
            let mut placed = Vec::new();
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(12) {
                if let Ok(order) =
                    e2e::place_order_at(&client, &shop, "20mm-xyz-cube.stl", "gold_750", &[], None)
                        .await
                {
                    placed.push((order.id, order.token));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            placed
        })
    };
    // Down for a second: the exporters' batches of that second are refused and retried (three
    // retries within about 1.5 s); Jaeger's are queued by the collector.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stack
        .restart(Component::Collector, Duration::from_secs(1))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stack
        .restart(Component::Jaeger, Duration::from_secs(1))
        .await;
    let placed = placing.await.expect("orders placed");
    assert!(placed.len() >= 20, "{} orders placed", placed.len());
    let refused = stack.system.otlp.refused();
    assert!(
        refused > 0,
        "the collector's restart refused no export: nothing was retried"
    );
    for (id, token) in &placed {
        stack.system.remember_token(*id, token);
        stack.system.until_shop_status(*id, "priced").await;
    }

    // Every span of those orders that the collector took (the exporters' view, counted by the
    // capture in front of it) is in Jaeger.
    let orders: BTreeSet<String> = placed.iter().map(|(id, _)| id.to_string()).collect();
    let delivered = || -> BTreeSet<(String, String)> {
        stack
            .system
            .otlp
            .spans()
            .into_iter()
            .filter(|s| s.attr("order.id").is_some_and(|id| orders.contains(&id)))
            .map(|s| (s.trace_id, s.span_id))
            .collect()
    };
    let stored = testkit::wait::until("every delivered span in Jaeger", PATIENCE, || async {
        let expected = delivered();
        let mut stored = BTreeSet::new();
        for (id, _) in &placed {
            for service in ["shop-api", "crm-api", "mes-api"] {
                for trace in stack.jaeger_traces_of_order(service, *id).await {
                    for span in trace["spans"].as_array().into_iter().flatten() {
                        stored.insert((
                            span["traceID"].as_str().unwrap_or("").to_owned(),
                            span["spanID"].as_str().unwrap_or("").to_owned(),
                        ));
                    }
                }
            }
        }
        expected
            .is_subset(&stored)
            .then_some((expected.len(), stored.len()))
    })
    .await;
    eprintln!(
        "{} orders, {} spans delivered by the exporters ({refused} exports refused during the \
         restarts and sent again), all of them in Jaeger",
        placed.len(),
        stored.0
    );
}

/// The tests' public client: its tokens are for order-watch and for the stack's proxies.
const CLI: &str = "hallmark-cli";

/// What each proxy is asked in the tests: a read of its component's API.
const PROXIED: [(Component, &str); 3] = [
    (Component::JaegerProxy, "/api/services"),
    (Component::PrometheusProxy, "/api/v1/query?query=up"),
    (Component::AlertmanagerProxy, "/api/v2/status"),
];

/// The status and body of GET `path` through `proxy`, with `token` as bearer token if given,
/// following no redirect.
async fn through(
    stack: &Stack,
    proxy: Component,
    path: &str,
    token: Option<&str>,
) -> (u16, String, Option<String>) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client");
    let mut request = client.get(format!("{}{path}", stack.proxy_url(proxy)));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the proxy answers");
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .map(str::to_owned);
    (status, response.text().await.unwrap_or_default(), location)
}

/// What a component's own answer holds and the proxy's refusals do not.
fn looks_like_the_component(body: &str) -> bool {
    [
        "\"data\"",
        "\"status\":\"success\"",
        "\"cluster\"",
        "\"config\"",
    ]
    .iter()
    .any(|marker| body.contains(marker))
}

#[tokio::test]
async fn jaeger_prometheus_and_alertmanager_are_reached_only_through_the_sso_and_by_their_roles() {
    let issuer = testkit::oidc::Issuer::required();
    let mut stack = Stack::start(&[], WATCH_CONFIG, &[]).await;
    stack.start_proxies().await;
    let token = |user: &'static str| {
        let issuer = issuer.clone();
        async move {
            issuer
                .password_token(CLI, user, user)
                .await
                .unwrap_or_else(|e| panic!("a token for {user}: {e:#}"))
        }
    };
    let (support, developer, admin) = (
        token("support").await,
        token("developer").await,
        token("admin").await,
    );
    let audience = &testkit::oidc::unverified_claims(&support).expect("a JWT")["aud"];
    assert!(
        audience
            .as_array()
            .is_some_and(|a| a.iter().any(|a| a == "stack-proxy")),
        "hallmark-cli's tokens are not for the proxies (aud {audience}): the identity provider \
         runs an older deploy/keycloak/realm-hallmark.json; restart it (scripts/keycloak.sh)"
    );

    // Nobody signed in: the APIs answer 401, the pages send the browser to the provider's login
    // (the code flow with PKCE, for the proxies' client), and neither shows the component.
    for (proxy, path) in PROXIED {
        let (status, body, _) = through(&stack, proxy, path, None).await;
        assert_eq!(
            status,
            401,
            "{} {path} without a token: {body}",
            proxy.name()
        );
        assert!(!looks_like_the_component(&body), "{}: {body}", proxy.name());
        let (status, body, location) = through(&stack, proxy, "/", None).await;
        assert_eq!(status, 302, "{} / without a session: {body}", proxy.name());
        let login = location.unwrap_or_default();
        let expected = format!("{}/protocol/openid-connect/auth?", issuer.url());
        assert!(login.starts_with(&expected), "{}: to {login}", proxy.name());
        for part in ["client_id=stack-proxy", "code_challenge_method=S256"] {
            assert!(login.contains(part), "{}: {part} in {login}", proxy.name());
        }
    }

    // support reads traces and metrics, and not Alertmanager, where silences are configuration
    // (and whose status shows its routing configuration).
    let (status, body, _) = through(
        &stack,
        Component::JaegerProxy,
        "/api/services",
        Some(&support),
    )
    .await;
    assert_eq!(status, 200, "Jaeger for support: {body}");
    let services: Value = serde_json::from_str(&body).expect("Jaeger's JSON");
    assert!(services["data"].is_array(), "{services}");
    let (status, body, _) = through(
        &stack,
        Component::PrometheusProxy,
        "/api/v1/query?query=up",
        Some(&support),
    )
    .await;
    assert_eq!(status, 200, "Prometheus for support: {body}");
    let up: Value = serde_json::from_str(&body).expect("Prometheus's JSON");
    assert_eq!(up["status"], "success", "{up}");
    let (status, body, _) = through(
        &stack,
        Component::AlertmanagerProxy,
        "/api/v2/status",
        Some(&support),
    )
    .await;
    assert_eq!(status, 403, "Alertmanager for support: {body}");
    assert!(!looks_like_the_component(&body), "{body}");

    // developer and admin reach all three.
    for (user, token) in [("developer", &developer), ("admin", &admin)] {
        for (proxy, path) in PROXIED {
            let (status, body, _) = through(&stack, proxy, path, Some(token)).await;
            assert_eq!(status, 200, "{} {path} for {user}: {body}", proxy.name());
            assert!(looks_like_the_component(&body), "{}: {body}", proxy.name());
        }
    }
    let (_, body, _) = through(
        &stack,
        Component::AlertmanagerProxy,
        "/api/v2/status",
        Some(&developer),
    )
    .await;
    let status: Value = serde_json::from_str(&body).expect("Alertmanager's JSON");
    assert!(status["config"]["original"].is_string(), "{status}");

    // Forged and foreign tokens count as none: 401, and never the component.
    let mut forged = issuer
        .forgeries(&support, &["developer", "support"])
        .await
        .expect("forged tokens");
    let other = testkit::oidc::Issuer::other_required()
        .password_token(CLI, "developer", "developer")
        .await
        .expect("a token of the other realm");
    forged.push(("another realm's developer", other));
    for (what, forged) in &forged {
        for (proxy, path) in PROXIED {
            let (status, body, _) = through(&stack, proxy, path, Some(forged)).await;
            assert_eq!(status, 401, "{what} at {}: {body}", proxy.name());
            assert!(!looks_like_the_component(&body), "{what}: {body}");
        }
    }

    // Only the proxies are meant for people: the components behind them listen on loopback and
    // nowhere else (the proxies listen on HALLMARK_PROXY_HOST, 127.0.0.1 here as by default).
    for (proxy, _) in PROXIED {
        let component = match proxy {
            Component::JaegerProxy => Component::Jaeger,
            Component::PrometheusProxy => Component::Prometheus,
            _ => Component::Alertmanager,
        };
        let port = stack.port(component);
        let listening: Vec<_> = stack
            .listening_addresses(component)
            .into_iter()
            .filter(|a| a.port() == port)
            .collect();
        assert!(
            !listening.is_empty() && listening.iter().all(|a| a.ip().is_loopback()),
            "{} listens on {listening:?}",
            component.name()
        );
        let proxy_port = stack.port(proxy);
        assert!(
            stack
                .listening_addresses(proxy)
                .iter()
                .any(|a| a.port() == proxy_port),
            "{} listens on its port",
            proxy.name()
        );
    }
}

/// Renders the stack's configuration into `dir` as scripts/run would with `env` (the tools'
/// paths made up: nothing runs) and returns the components' command lines.
fn render_for(dir: &std::path::Path, env: &[(&str, &str)]) -> String {
    let rendered = dir.display().to_string();
    let tools = [
        ("HALLMARK_OAUTH2_PROXY", "oauth2-proxy"),
        ("HALLMARK_PROMETHEUS", "prometheus"),
        ("HALLMARK_ALERTMANAGER", "alertmanager"),
        ("HALLMARK_JAEGER", "jaeger"),
    ];
    let env: Vec<(String, String)> = tools
        .iter()
        .chain(env)
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    e2e::stack::run_stack_script(
        &format!("render_stack_config {rendered} && stack_commands {rendered}"),
        &env,
    )
}

#[test]
fn opened_up_to_the_network_only_the_proxies_listen_beyond_loopback() {
    // What scripts/run would start with both hosts opened to every interface.
    let dir = tempfile::tempdir().expect("a directory");
    let commands = render_for(
        dir.path(),
        &[
            ("HALLMARK_STACK_HOST", "0.0.0.0"),
            ("HALLMARK_PROXY_HOST", "0.0.0.0"),
        ],
    );
    for component in ["prometheus", "alertmanager"] {
        let line = commands
            .lines()
            .find(|l| l.starts_with(&format!("{component}\t")))
            .unwrap_or_else(|| panic!("{component} in {commands}"));
        assert!(
            line.contains("--web.listen-address=127.0.0.1:"),
            "{component}: {line}"
        );
    }
    let jaeger = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/jaeger/config.yaml"
    ))
    .expect("Jaeger's configuration");
    let query = &jaeger[jaeger.find("jaeger_query:").expect("jaeger_query")..];
    let query = &query[..query.find("\nreceivers:").unwrap_or(query.len())];
    let endpoints: Vec<&str> = query
        .lines()
        .filter_map(|l| l.trim().strip_prefix("endpoint: "))
        .collect();
    assert_eq!(endpoints.len(), 2, "{query}");
    for endpoint in endpoints {
        assert!(
            endpoint.starts_with("127.0.0.1:"),
            "Jaeger's query API on {endpoint}"
        );
    }
    for proxy in ["jaeger", "prometheus", "alertmanager"] {
        let config = std::fs::read_to_string(dir.path().join(format!("proxy/{proxy}.cfg")))
            .expect("the proxy's configuration");
        assert!(
            config.contains("\nhttp_address = \"0.0.0.0:"),
            "{proxy}'s proxy: {config}"
        );
        assert!(
            config.contains("\nupstreams = [\"http://127.0.0.1:"),
            "{proxy}'s proxy goes to loopback: {config}"
        );
        assert!(
            !config.contains("hallmark-stack-proxy-local-only"),
            "no secret in the configuration"
        );
    }
}

#[test]
fn with_a_certificate_the_proxies_serve_https_only_and_their_cookies_are_secure() {
    let dir = tempfile::tempdir().expect("a directory");
    render_for(
        dir.path(),
        &[
            ("HALLMARK_PROXY_HOST", "0.0.0.0"),
            ("HALLMARK_PROXY_TLS_CERT", "/etc/hallmark/proxy.crt"),
            ("HALLMARK_PROXY_TLS_KEY", "/etc/hallmark/proxy.key"),
        ],
    );
    for proxy in ["jaeger", "prometheus", "alertmanager"] {
        let config = std::fs::read_to_string(dir.path().join(format!("proxy/{proxy}.cfg")))
            .expect("the proxy's configuration");
        let settings: Vec<&str> = config
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .collect();
        assert!(
            settings
                .iter()
                .any(|l| l.starts_with("https_address = \"0.0.0.0:")),
            "{proxy}: {config}"
        );
        for expected in [
            "tls_cert_file = \"/etc/hallmark/proxy.crt\"",
            "tls_key_file = \"/etc/hallmark/proxy.key\"",
            "cookie_secure = true",
        ] {
            assert!(
                settings.contains(&expected),
                "{proxy}: {expected} in {config}"
            );
        }
        assert!(
            !settings.iter().any(|l| l.starts_with("http_address")),
            "{proxy} serves no plain HTTP: {config}"
        );
    }
}

/// order-watch serving TLS with `certificates`' trusted server certificate, its OTLP receivers
/// asking for a client certificate of the same CA; in this process, on ports of its own.
async fn order_watch_over_tls(
    certificates: &testkit::tls::Certificates,
) -> (
    order_watch::startup::Ports,
    testkit::database::TestDatabase,
    tokio_util::sync::CancellationToken,
) {
    use platform::tls::{CertifiedKeyFiles, PemFile};
    let database = testkit::database::TestDatabase::create("watch_tls").await;
    let trusted = &certificates.trusted;
    let settings = order_watch::Settings {
        tls: Some(CertifiedKeyFiles {
            cert: PemFile::new("ORDER_WATCH_TLS_CERT", &trusted.server.cert),
            key: PemFile::new("ORDER_WATCH_TLS_KEY", &trusted.server.key),
        }),
        otlp_client_ca: Some(PemFile::new("ORDER_WATCH_OTLP_CLIENT_CA", &trusted.ca)),
        ..order_watch::Settings::local(platform::db::DatabaseConfig::new(database.url()))
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    let app = order_watch::Application::build(
        settings,
        order_watch::clock::Clock::System,
        cancel.clone(),
    )
    .await
    .expect("order-watch builds");
    let ports = app.ports();
    tokio::spawn(app.run_until_stopped());
    (ports, database, cancel)
}

/// Runs the real `mes-calc` for `order` with `env` on top (its OTLP export's variables): one
/// span of the order, exported when it exits.
async fn mes_calc_exporting(order: Uuid, env: &[(&str, String)]) {
    use tokio::io::AsyncWriteExt as _;
    let mut child = tokio::process::Command::new(testkit::process::binary("mes-calc"))
        .args(["--material", "silver_925"])
        .env("HALLMARK_ENV", "test")
        .env("OTEL_METRICS_EXPORTER", "none")
        .env(
            "TRACEPARENT",
            format!("00-{}-00f067aa0ba902b7-01", order.simple()),
        )
        .env("BAGGAGE", format!("order.id={order}"))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mes-calc starts");
    let mut stdin = child.stdin.take().expect("its input");
    stdin
        .write_all(&testkit::fixtures::stl("20mm-xyz-cube.stl"))
        .await
        .unwrap();
    drop(stdin);
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("mes-calc ends")
        .unwrap();
    assert!(
        output.status.success(),
        "mes-calc failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn the_collector_takes_spans_only_over_tls_from_clients_of_its_ca_and_hands_them_on_to_order_watch_over_tls()
 {
    let certificates = testkit::tls::Certificates::generate();
    let trusted = &certificates.trusted;
    let (watch, _database, watch_cancel) = order_watch_over_tls(&certificates).await;
    let path = |p: &std::path::Path| p.display().to_string();
    let (cert, key, ca) = (
        path(&trusted.server.cert),
        path(&trusted.server.key),
        path(&trusted.ca),
    );
    let (client_cert, client_key) = (path(&trusted.client.cert), path(&trusted.client.key));
    let otlp_port = watch.otlp_http.to_string();
    let collector = e2e::stack::Collector::start(&[
        ("HALLMARK_STACK_TLS_CERT", &cert),
        ("HALLMARK_STACK_TLS_KEY", &key),
        // order-watch serves TLS: stack.sh sends it spans over https, trusting its CA and
        // presenting the collector's client certificate.
        ("ORDER_WATCH_TLS_CERT", &cert),
        ("ORDER_WATCH_OTLP_HTTP_PORT", &otlp_port),
        ("HALLMARK_ORDER_WATCH_CA", &ca),
        ("HALLMARK_COLLECTOR_CLIENT_CERT", &client_cert),
        ("HALLMARK_COLLECTOR_CLIENT_KEY", &client_key),
    ])
    .await;
    let traces = format!("127.0.0.1:{}/v1/traces", collector.http_port);

    // A span sent in plain text is refused: the receiver answers only that it speaks TLS.
    let plain_order = Uuid::now_v7();
    let start = chrono::Utc::now().timestamp_nanos_opt().unwrap();
    let plain = reqwest::Client::new()
        .post(format!("http://{traces}"))
        .json(&serde_json::json!({
            "resourceSpans": [{
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "crm-api"}}]},
                "scopeSpans": [{"spans": [{
                    "traceId": plain_order.simple().to_string(),
                    "spanId": "eee19b7ec3c1b174",
                    "name": "order registered",
                    "kind": 1,
                    "startTimeUnixNano": start.to_string(),
                    "endTimeUnixNano": (start + 1_000_000).to_string(),
                    "attributes": [{"key": "order.id", "value": {"stringValue": plain_order.to_string()}}]
                }]}]
            }]
        }))
        .send()
        .await;
    if let Ok(answer) = plain {
        let status = answer.status().as_u16();
        let text = answer.text().await.unwrap_or_default();
        assert!(
            status == 400 && text.contains("HTTPS"),
            "the collector answered plain text with {status}: {text}"
        );
    }
    // A client that trusts another CA refuses the collector's certificate.
    let foreign = testkit::tls::Certificates::client_trusting(&certificates.other.ca)
        .post(format!("https://{traces}"))
        .send()
        .await
        .expect_err("a client of another CA reached the collector");
    let mut why = format!("{foreign:?}");
    let mut source = std::error::Error::source(&foreign);
    while let Some(cause) = source {
        why.push_str(&format!(" / {cause}"));
        source = cause.source();
    }
    assert!(why.contains("UnknownIssuer"), "{why}");

    // The real mes-calc exports with the standard variables: trusting another CA its spans
    // never leave it; trusting the collector's, they reach order-watch through the collector.
    let endpoint = format!("https://127.0.0.1:{}", collector.http_port);
    let lost = Uuid::now_v7();
    mes_calc_exporting(
        lost,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()),
            (
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
                path(&certificates.other.ca),
            ),
        ],
    )
    .await;
    let order = Uuid::now_v7();
    mes_calc_exporting(
        order,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.clone()),
        ],
    )
    .await;
    let client = testkit::tls::Certificates::client_trusting(&trusted.ca);
    let journey = |id: Uuid| {
        let request = client
            .get(format!(
                "https://127.0.0.1:{}/api/orders/{id}/journey",
                watch.api
            ))
            .send();
        async move {
            let response = request.await.expect("order-watch answers over https");
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let stored = testkit::wait::until("the order's span in order-watch", PATIENCE, || async {
        let (status, body) = journey(order).await;
        (status == 200).then_some(body)
    })
    .await;
    assert_eq!(stored["spans"][0]["service"], "mes-calc", "{stored}");
    assert_eq!(
        journey(lost).await.0,
        404,
        "spans of an exporter that trusts another CA arrived"
    );
    assert_eq!(
        journey(plain_order).await.0,
        404,
        "spans sent in plain text arrived"
    );
    watch_cancel.cancel();
}

#[test]
fn the_collectors_receivers_serve_tls_only_when_the_stack_has_a_certificate() {
    let collector = |env: &[(&str, &str)]| {
        let dir = tempfile::tempdir().expect("a directory");
        render_for(dir.path(), env)
            .lines()
            .find_map(|line| line.strip_prefix("otel-collector\t").map(str::to_owned))
            .expect("a collector")
    };
    let plain = collector(&[]);
    assert!(plain.ends_with("deploy/collector/config.yaml"), "{plain}");
    let tls = collector(&[
        ("HALLMARK_STACK_TLS_CERT", "/etc/hallmark/collector.pem"),
        ("HALLMARK_STACK_TLS_KEY", "/etc/hallmark/collector-key.pem"),
    ]);
    assert!(
        tls.contains("deploy/collector/config.yaml --config ")
            && tls.ends_with("deploy/collector/tls.yaml"),
        "{tls}"
    );
    // order-watch serving TLS is sent its spans over https.
    let endpoint = |env: &[(&str, &str)]| {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        e2e::stack::run_stack_script("echo \"$HALLMARK_ORDER_WATCH_OTLP\"", &env)
            .trim()
            .to_owned()
    };
    assert_eq!(endpoint(&[]), "http://127.0.0.1:14318");
    assert_eq!(
        endpoint(&[("ORDER_WATCH_TLS_CERT", "/etc/hallmark/watch.pem")]),
        "https://127.0.0.1:14318"
    );
}

#[test]
fn alertmanager_posts_to_order_watch_with_a_token_of_its_service_identity_whose_secret_is_in_a_private_file()
 {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("a directory");
    render_for(
        dir.path(),
        &[(
            "HALLMARK_STACK_OIDC_ISSUER",
            "https://sso.example.com/realms/hallmark",
        )],
    );
    let config = std::fs::read_to_string(dir.path().join("alertmanager/alertmanager.yml"))
        .expect("Alertmanager's configuration");
    let receiver = &config[config.find("- name: order-watch").expect("the receiver")..];
    let receiver = &receiver[..receiver.find("- name: blackhole").expect("the next one")];
    let secret_file = dir.path().join("alertmanager/client-secret");
    for line in [
        "client_id: alertmanager".to_owned(),
        format!("client_secret_file: {}", secret_file.display()),
        "token_url: https://sso.example.com/realms/hallmark/protocol/openid-connect/token"
            .to_owned(),
    ] {
        assert!(receiver.contains(&line), "{line} in {receiver}");
    }
    assert!(
        !config.contains("hallmark-alertmanager-local-only"),
        "no secret in the configuration"
    );
    assert_eq!(
        std::fs::read_to_string(&secret_file).expect("the secret"),
        "hallmark-alertmanager-local-only"
    );
    let mode = std::fs::metadata(&secret_file)
        .expect("the secret's file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "only its user reads it");
}

//! The whole deployed system for one test: Shop, CRM and MES ([`System`]) sending their spans to
//! the OpenTelemetry Collector (through the test's capture, which counts what the collector took),
//! which feeds Jaeger and order-watch ([`Watch`]) and exposes its
//! spanmetrics; Prometheus scraping all of them and evaluating the rules of deploy/prometheus;
//! Alertmanager routing their alerts to order-watch. Every component is the real program, built
//! by scripts/tools.sh, configured from deploy/ by scripts/stack.sh exactly as `scripts/run` does,
//! on ports of this test's own. [`Stack::start_proxies`] adds the authenticating proxies in front
//! of Jaeger's query API, Prometheus and Alertmanager, against the identity provider of
//! `HALLMARK_TEST_OIDC_ISSUER`; without them the tests reach the components on loopback, as
//! anything on the machine may.
//!
//! The tools' paths come from the environment scripts/test exports (`HALLMARK_JAEGER`,
//! `HALLMARK_PROMETHEUS`, `HALLMARK_ALERTMANAGER`, `HALLMARK_OAUTH2_PROXY`, …).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use testkit::process::{ServiceProcess, free_port};

use crate::System;
use crate::watch::Watch;

/// A component of the stack, as scripts/stack.sh's `stack_commands` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Component {
    Jaeger,
    Collector,
    Prometheus,
    Alertmanager,
    /// The authenticating proxy in front of Jaeger's query API.
    JaegerProxy,
    /// The authenticating proxy in front of Prometheus.
    PrometheusProxy,
    /// The authenticating proxy in front of Alertmanager.
    AlertmanagerProxy,
}

impl Component {
    /// What [`Stack::start`] starts.
    const ALL: [Component; 4] = [
        Component::Jaeger,
        Component::Collector,
        Component::Prometheus,
        Component::Alertmanager,
    ];

    /// What [`Stack::start_proxies`] starts.
    pub const PROXIES: [Component; 3] = [
        Component::JaegerProxy,
        Component::PrometheusProxy,
        Component::AlertmanagerProxy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Jaeger => "jaeger",
            Self::Collector => "otel-collector",
            Self::Prometheus => "prometheus",
            Self::Alertmanager => "alertmanager",
            Self::JaegerProxy => "jaeger-proxy",
            Self::PrometheusProxy => "prometheus-proxy",
            Self::AlertmanagerProxy => "alertmanager-proxy",
        }
    }

    /// The variable of this proxy's port, and what it is in front of.
    fn proxy(self) -> Option<(&'static str, Component)> {
        match self {
            Self::JaegerProxy => Some(("HALLMARK_JAEGER_PROXY_PORT", Self::Jaeger)),
            Self::PrometheusProxy => Some(("HALLMARK_PROMETHEUS_PROXY_PORT", Self::Prometheus)),
            Self::AlertmanagerProxy => {
                Some(("HALLMARK_ALERTMANAGER_PROXY_PORT", Self::Alertmanager))
            }
            _ => None,
        }
    }
}

/// The ports of this test's stack, as the variables scripts/stack.sh reads.
struct Ports(BTreeMap<&'static str, u16>);

impl Ports {
    fn choose() -> Self {
        let names = [
            "HALLMARK_COLLECTOR_GRPC_PORT",
            "HALLMARK_COLLECTOR_HTTP_PORT",
            "HALLMARK_COLLECTOR_METRICS_PORT",
            "HALLMARK_SPANMETRICS_PORT",
            "HALLMARK_COLLECTOR_HEALTH_PORT",
            "HALLMARK_JAEGER_GRPC_PORT",
            "HALLMARK_JAEGER_HTTP_PORT",
            "HALLMARK_JAEGER_QUERY_PORT",
            "HALLMARK_JAEGER_QUERY_GRPC_PORT",
            "HALLMARK_JAEGER_METRICS_PORT",
            "HALLMARK_JAEGER_HEALTH_PORT",
            "HALLMARK_PROMETHEUS_PORT",
            "HALLMARK_ALERTMANAGER_PORT",
            "HALLMARK_JAEGER_PROXY_PORT",
            "HALLMARK_PROMETHEUS_PROXY_PORT",
            "HALLMARK_ALERTMANAGER_PROXY_PORT",
        ];
        Self(names.into_iter().map(|n| (n, free_port())).collect())
    }

    fn get(&self, name: &str) -> u16 {
        self.0[name]
    }
}

/// How fast the test stack scrapes, evaluates and notifies (production: 15 s, 15 s, 30 s).
const TEST_TIMINGS: [(&str, &str); 5] = [
    ("HALLMARK_SCRAPE_INTERVAL", "1s"),
    ("HALLMARK_EVALUATION_INTERVAL", "1s"),
    ("HALLMARK_ALERT_GROUP_WAIT", "1s"),
    ("HALLMARK_ALERT_GROUP_INTERVAL", "1s"),
    ("HALLMARK_ALERT_REPEAT_INTERVAL", "1h"),
];

pub struct Stack {
    pub system: System,
    pub watch: Watch,
    pub client: reqwest::Client,
    ports: Ports,
    /// Rendered configuration and the components' data, for this test only.
    dir: tempfile::TempDir,
    /// The environment every component runs with (ports, timings).
    env: Vec<(String, String)>,
    /// Each component's command line, as scripts/stack.sh gives it.
    commands: BTreeMap<Component, Vec<String>>,
    processes: BTreeMap<Component, ServiceProcess>,
}

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e lives in the repository")
        .to_path_buf()
}

/// Runs `script` (bash) in the repository with scripts/deps.sh and scripts/stack.sh sourced, and
/// returns what it printed.
fn stack_script(script: &str, env: &[(String, String)]) -> String {
    for tool in [
        "HALLMARK_JAEGER",
        "HALLMARK_PROMETHEUS",
        "HALLMARK_PROMTOOL",
        "HALLMARK_ALERTMANAGER",
        "HALLMARK_AMTOOL",
        "HALLMARK_OAUTH2_PROXY",
    ] {
        assert!(
            std::env::var_os(tool).is_some(),
            "{tool} is not set: run the stack tests through scripts/test, which builds the tools"
        );
    }
    run_stack_script(script, env)
}

/// Runs `script` as [`stack_script`] does, whatever the tools' variables say (a script that only
/// renders configuration names the tools without running them).
pub fn run_stack_script(script: &str, env: &[(String, String)]) -> String {
    let output = std::process::Command::new("bash")
        .args([
            "-c",
            &format!(
                "set -euo pipefail; source scripts/deps.sh; source scripts/stack.sh; {script}"
            ),
        ])
        .current_dir(repository())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("bash runs");
    assert!(
        output.status.success(),
        "scripts/stack.sh: {script}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("text")
}

impl Stack {
    /// Starts everything: the services with `system_env` on top of what they need, order-watch
    /// with `watch_env` and its TOML configuration `watch_config`, then the stack around them.
    pub async fn start(
        system_env: &[(&str, &str)],
        watch_config: &str,
        watch_env: &[(&str, &str)],
    ) -> Self {
        Self::start_paging(system_env, watch_config, watch_env, None).await
    }

    /// [`Stack::start`], with Alertmanager also sending pages to `on_call` (a webhook URL) as
    /// `HALLMARK_ON_CALL_WEBHOOK_URL` makes it.
    pub async fn start_paging(
        system_env: &[(&str, &str)],
        watch_config: &str,
        watch_env: &[(&str, &str)],
        on_call: Option<&str>,
    ) -> Self {
        // The services export to the test's capture, which passes everything on to the
        // collector and acknowledges a span only once the collector took it: what the
        // exporters delivered, counted on their side. Prometheus pulls their metrics.
        let mut services_env = vec![("OTEL_METRICS_EXPORTER", "none")];
        services_env.extend_from_slice(system_env);
        let system = System::start_with(&services_env).await;
        // order-watch gets its spans from the collector, not from the test's capture.
        let watch = Watch::alongside(&system, watch_config, watch_env).await;
        let mut stack = Self {
            system,
            watch,
            client: reqwest::Client::new(),
            ports: Ports(BTreeMap::new()),
            dir: tempfile::tempdir().expect("a directory for the stack"),
            env: Vec::new(),
            commands: BTreeMap::new(),
            processes: BTreeMap::new(),
        };
        // Ports are free when chosen, but a parallel test can take one before its component
        // binds it: then the whole stack starts again on new ones (they are wired into each
        // other's configuration).
        const ATTEMPTS: u32 = 4;
        for attempt in 1..=ATTEMPTS {
            stack.configure(on_call);
            match stack.launch_all().await {
                Ok(()) => return stack,
                Err(log) if attempt < ATTEMPTS && log.contains("address already in use") => {
                    stack.processes.clear();
                }
                Err(log) => panic!("the stack did not start:\n{log}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Chooses the stack's ports, renders its configuration for them with scripts/stack.sh and
    /// reads the command lines of its components.
    fn configure(&mut self, on_call: Option<&str>) {
        self.ports = Ports::choose();
        self.dir = tempfile::tempdir().expect("a directory for the stack");
        self.system.otlp.forward_only_to(&self.collector_url());
        let mut env: Vec<(String, String)> = self
            .ports
            .0
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.extend(TEST_TIMINGS.map(|(k, v)| (k.to_owned(), v.to_owned())));
        env.extend([
            ("SHOP_PORT".to_owned(), self.system.shop.port().to_string()),
            ("CRM_PORT".to_owned(), self.system.crm.port().to_string()),
            ("MES_PORT".to_owned(), self.system.mes.port().to_string()),
            (
                "ORDER_WATCH_PORT".to_owned(),
                self.watch.process.port().to_string(),
            ),
            (
                "ORDER_WATCH_OTLP_HTTP_PORT".to_owned(),
                self.watch.otlp_port().to_string(),
            ),
        ]);
        if let Some(url) = on_call {
            env.push(("HALLMARK_ON_CALL_WEBHOOK_URL".to_owned(), url.to_owned()));
        }
        for tool in [
            "HALLMARK_JAEGER",
            "HALLMARK_PROMETHEUS",
            "HALLMARK_ALERTMANAGER",
            "HALLMARK_OAUTH2_PROXY",
        ] {
            if let Ok(path) = std::env::var(tool) {
                env.push((tool.to_owned(), path));
            }
        }
        // The proxies trust the tests' identity provider (stack.sh's default otherwise: they are
        // started only by `start_proxies`, which requires it).
        if let Some(issuer) = testkit::oidc::Issuer::from_env() {
            env.push((
                "HALLMARK_STACK_OIDC_ISSUER".to_owned(),
                issuer.url().to_owned(),
            ));
        }
        let dir = self.dir.path().display().to_string();
        stack_script(
            &format!("render_stack_config {dir} && check_stack_config {dir}"),
            &env,
        );
        // The stack's own variables, as stack.sh derives them, for the components' environment.
        let derived = stack_script("env | grep -E '^(HALLMARK|ORDER_WATCH)_'", &env);
        self.env = derived
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        self.read_commands();
    }

    /// Reads each component's command line from scripts/stack.sh's `stack_commands`.
    fn read_commands(&mut self) {
        let dir = self.dir.path().display().to_string();
        self.commands = stack_script(&format!("stack_commands {dir}"), &self.env)
            .lines()
            .filter_map(|line| {
                let (name, command) = line.split_once('\t')?;
                let component = Component::ALL
                    .into_iter()
                    .chain(Component::PROXIES)
                    .find(|c| c.name() == name)?;
                Some((
                    component,
                    command.split_whitespace().map(str::to_owned).collect(),
                ))
            })
            .collect();
    }

    /// Starts the authenticating proxies in front of Jaeger's query API, Prometheus and
    /// Alertmanager, trusting the identity provider of `HALLMARK_TEST_OIDC_ISSUER` (a test of
    /// them fails, saying how to start one, when it is not set). A proxy whose port was taken
    /// meanwhile starts again on another.
    pub async fn start_proxies(&mut self) {
        let issuer = testkit::oidc::Issuer::required();
        assert!(
            self.env
                .iter()
                .any(|(k, v)| k == "HALLMARK_STACK_OIDC_ISSUER" && v == issuer.url()),
            "the stack was configured for another identity provider than {}",
            issuer.url()
        );
        const ATTEMPTS: u32 = 4;
        for proxy in Component::PROXIES {
            for attempt in 1..=ATTEMPTS {
                match self.try_launch(proxy).await {
                    Ok(()) => break,
                    Err(log) if attempt < ATTEMPTS && log.contains("address already in use") => {
                        self.move_proxy(proxy);
                    }
                    Err(log) => panic!("{} did not start:\n{log}", proxy.name()),
                }
            }
        }
    }

    /// Gives `proxy` another port and renders the proxies' configuration for it.
    fn move_proxy(&mut self, proxy: Component) {
        let (variable, _) = proxy.proxy().expect("a proxy");
        let port = free_port();
        self.ports.0.insert(variable, port);
        for (k, v) in &mut self.env {
            if k == variable {
                *v = port.to_string();
            }
        }
        let dir = self.dir.path().display().to_string();
        stack_script(&format!("render_proxies {dir}"), &self.env);
        self.read_commands();
    }

    /// Starts every component; what the first one that failed printed, if one did.
    async fn launch_all(&mut self) -> Result<(), String> {
        for component in Component::ALL {
            self.try_launch(component).await?;
        }
        Ok(())
    }

    /// Where `component` says it is ready.
    fn ready_url(&self, component: Component) -> String {
        let port = |name| self.ports.get(name);
        match component {
            Component::Jaeger => format!(
                "http://127.0.0.1:{}/status",
                port("HALLMARK_JAEGER_HEALTH_PORT")
            ),
            Component::Collector => format!(
                "http://127.0.0.1:{}/status",
                port("HALLMARK_COLLECTOR_HEALTH_PORT")
            ),
            Component::Prometheus => format!("{}/-/ready", self.prometheus_url()),
            Component::Alertmanager => format!("{}/-/ready", self.alertmanager_url()),
            // oauth2-proxy's own health check, which needs no login.
            proxy => format!("{}/ping", self.proxy_url(proxy)),
        }
    }

    async fn try_launch(&mut self, component: Component) -> Result<(), String> {
        let command = self.commands[&component].clone();
        // `env NAME=VALUE program …` as stack.sh writes it: the variables go to the process.
        let mut env = self.env.clone();
        let mut words = command.as_slice();
        if words.first().map(String::as_str) == Some("env") {
            words = &words[1..];
            while let Some((assignment, rest)) = words.split_first() {
                let Some((k, v)) = assignment.split_once('=') else {
                    break;
                };
                env.push((k.to_owned(), v.to_owned()));
                words = rest;
            }
        }
        let ready = self.ready_url(component);
        let process = ServiceProcess::try_launch(component.name(), words, &env, &ready).await?;
        self.processes.insert(component, process);
        Ok(())
    }

    /// Stops `component` the way its supervisor would for a restart (SIGTERM, then SIGKILL after
    /// 10 s), leaves it down for `down_for`, and starts it again on the same ports and data.
    pub async fn restart(&mut self, component: Component, down_for: Duration) {
        if let Some(mut process) = self.processes.remove(&component) {
            process.stop(Duration::from_secs(10)).await;
        }
        tokio::time::sleep(down_for).await;
        if let Err(log) = self.try_launch(component).await {
            panic!("{} did not start again:\n{log}", component.name());
        }
    }

    /// Where the authenticating proxy `proxy` ([`Component::PROXIES`]) answers.
    pub fn proxy_url(&self, proxy: Component) -> String {
        let (variable, _) = proxy
            .proxy()
            .unwrap_or_else(|| panic!("{} is no proxy", proxy.name()));
        format!("http://127.0.0.1:{}", self.ports.get(variable))
    }

    /// The port of `component` itself (for a proxy: the port it listens on), as the stack's
    /// configuration gives it.
    pub fn port(&self, component: Component) -> u16 {
        self.ports.get(match component {
            Component::Jaeger => "HALLMARK_JAEGER_QUERY_PORT",
            Component::Collector => "HALLMARK_COLLECTOR_HTTP_PORT",
            Component::Prometheus => "HALLMARK_PROMETHEUS_PORT",
            Component::Alertmanager => "HALLMARK_ALERTMANAGER_PORT",
            proxy => proxy.proxy().expect("a proxy").0,
        })
    }

    /// The addresses on which the running `component` listens (from /proc).
    pub fn listening_addresses(&self, component: Component) -> Vec<std::net::SocketAddr> {
        let pid = self.processes[&component]
            .pid()
            .unwrap_or_else(|| panic!("{} is not running", component.name()));
        testkit::process::listening_addresses(pid)
    }

    pub fn jaeger_url(&self) -> String {
        format!(
            "http://127.0.0.1:{}",
            self.ports.get("HALLMARK_JAEGER_QUERY_PORT")
        )
    }

    pub fn prometheus_url(&self) -> String {
        format!(
            "http://127.0.0.1:{}",
            self.ports.get("HALLMARK_PROMETHEUS_PORT")
        )
    }

    pub fn alertmanager_url(&self) -> String {
        format!(
            "http://127.0.0.1:{}",
            self.ports.get("HALLMARK_ALERTMANAGER_PORT")
        )
    }

    /// The OTLP/HTTP endpoint of the collector.
    pub fn collector_url(&self) -> String {
        format!(
            "http://127.0.0.1:{}",
            self.ports.get("HALLMARK_COLLECTOR_HTTP_PORT")
        )
    }

    /// Where Jaeger keeps its data.
    pub fn jaeger_data(&self) -> PathBuf {
        self.dir.path().join("jaeger")
    }

    async fn get_json(&self, url: &str) -> (u16, Value) {
        let response = self.client.get(url).send().await.expect("it answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Prometheus's answer to instant query `promql`: the status code and the body.
    pub async fn query(&self, promql: &str) -> (u16, Value) {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v1/query", self.prometheus_url()),
            [("query", promql)],
        )
        .expect("a URL");
        self.get_json(url.as_str()).await
    }

    /// The series of instant query `promql` (empty when it has none; panics on an error).
    pub async fn series(&self, promql: &str) -> Vec<Value> {
        let (status, body) = self.query(promql).await;
        assert_eq!(status, 200, "{promql}: {body}");
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The alerts Prometheus holds now (pending and firing).
    pub async fn prometheus_alerts(&self) -> Vec<Value> {
        let (status, body) = self
            .get_json(&format!("{}/api/v1/alerts", self.prometheus_url()))
            .await;
        assert_eq!(status, 200, "{body}");
        body["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The alerts Alertmanager holds now, with their status (active, suppressed by inhibition).
    pub async fn alertmanager_alerts(&self) -> Vec<Value> {
        let (status, body) = self
            .get_json(&format!("{}/api/v2/alerts", self.alertmanager_url()))
            .await;
        assert_eq!(status, 200, "{body}");
        body.as_array().cloned().unwrap_or_default()
    }

    /// Jaeger's traces for `query` (e.g. `service=shop-api&tags=…`).
    pub async fn jaeger_traces(&self, query: &str) -> Vec<Value> {
        let (status, body) = self
            .get_json(&format!("{}/api/traces?{query}", self.jaeger_url()))
            .await;
        assert_eq!(status, 200, "{body}");
        body["data"].as_array().cloned().unwrap_or_default()
    }

    /// Jaeger's traces holding a span of order `id` (`order.id` tag), from every service.
    pub async fn jaeger_traces_of_order(&self, service: &str, id: uuid::Uuid) -> Vec<Value> {
        let tags = format!("{{\"order.id\":\"{id}\"}}");
        let query = reqwest::Url::parse_with_params(
            "http://unused/",
            [
                ("service", service),
                ("tags", tags.as_str()),
                ("lookback", "1h"),
                ("limit", "100"),
            ],
        )
        .expect("a URL");
        self.jaeger_traces(query.query().unwrap_or_default()).await
    }
}

/// The OpenTelemetry Collector alone, as scripts/stack.sh configures and runs it, on ports of
/// its own: for a test of the collector itself, with nothing else of the stack around it (its
/// trace store is not running: its export there just fails, which holds up no other).
pub struct Collector {
    /// Its OTLP/HTTP receiver's port.
    pub http_port: u16,
    /// Its OTLP/gRPC receiver's port.
    pub grpc_port: u16,
    _process: ServiceProcess,
    _dir: tempfile::TempDir,
}

impl Collector {
    /// Starts the collector with `env` (e.g. `HALLMARK_STACK_TLS_CERT`, `ORDER_WATCH_OTLP_HTTP_PORT`)
    /// on top of its ports, and waits until its health check answers.
    pub async fn start(env: &[(&str, &str)]) -> Self {
        const ATTEMPTS: u32 = 4;
        for attempt in 1..=ATTEMPTS {
            let ports = Ports(
                [
                    "HALLMARK_COLLECTOR_GRPC_PORT",
                    "HALLMARK_COLLECTOR_HTTP_PORT",
                    "HALLMARK_COLLECTOR_METRICS_PORT",
                    "HALLMARK_SPANMETRICS_PORT",
                    "HALLMARK_COLLECTOR_HEALTH_PORT",
                    "HALLMARK_JAEGER_GRPC_PORT",
                ]
                .into_iter()
                .map(|name| (name, free_port()))
                .collect(),
            );
            let mut given: Vec<(String, String)> = ports
                .0
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            given.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            given.push((
                "HALLMARK_JAEGER".to_owned(),
                std::env::var("HALLMARK_JAEGER").unwrap_or_default(),
            ));
            // The variables as stack.sh derives them, and its command line for the collector.
            let derived: Vec<(String, String)> =
                stack_script("env | grep -E '^(HALLMARK|ORDER_WATCH)_'", &given)
                    .lines()
                    .filter_map(|line| line.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
            let dir = tempfile::tempdir().expect("a directory for the collector");
            let commands = stack_script(
                &format!("stack_commands {}", dir.path().display()),
                &derived,
            );
            let command: Vec<String> = commands
                .lines()
                .find_map(|line| line.strip_prefix("otel-collector\t"))
                .expect("stack.sh runs a collector")
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            let ready = format!(
                "http://127.0.0.1:{}/status",
                ports.get("HALLMARK_COLLECTOR_HEALTH_PORT")
            );
            match ServiceProcess::try_launch("otel-collector", &command, &derived, &ready).await {
                Ok(process) => {
                    return Self {
                        http_port: ports.get("HALLMARK_COLLECTOR_HTTP_PORT"),
                        grpc_port: ports.get("HALLMARK_COLLECTOR_GRPC_PORT"),
                        _process: process,
                        _dir: dir,
                    };
                }
                Err(log) if attempt < ATTEMPTS && log.contains("address already in use") => {}
                Err(log) => panic!("the collector did not start:\n{log}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }
}

//! Realistic spans of many orders' journeys through Hallmark, cut into the export requests the
//! services would send them in: load for order-watch without running the services.
//!
//! A journey follows the status machine from `created` along the happy path (`submitted`,
//! `registered`, `pricing`, `priced`, `confirmed`, `in_production`, `quality_check`, `ready`,
//! `shipped`, `delivered`) up to the status it is to end in, branching off to `rejected` or
//! `failed` after `pricing` and to `cancelled` after `priced`. Each step moves the order one
//! status on, [`STEP_GAP`] after the one before, and consists of the spans the service owning
//! that status records, 2 ms apart:
//!
//! * what set it off: shop-api's `POST /api/orders` SERVER span; the outbox relay's PRODUCER
//!   span; a consumer's `process hallmark.orders` span, child of and linked to the PRODUCER
//!   span of the message it handles (two in a hundred are a retry after a failed attempt);
//!   MES pricing the model (`price model`, the calc engine run, mes-calc's `calculate price`);
//!   or a person's request, which starts a trace of its own whose SERVER span links to the
//!   order's last span, with the owner's `UPDATE orders` inside it;
//! * the owner's transition span (`order.status.from` and `order.status.to`, `order.stage`,
//!   `order.idempotency_key`; at `created` and `registered` also `order.source`,
//!   `order.external_id`, `customer.id`, `order.material` and, for partner orders,
//!   `partner.id`; `hallmark.error.code` on `rejected` and `failed`);
//! * the PRODUCER span of the message announcing the change (`order.pricing_requested` or
//!   `order.status_changed`); at `created` shop-api's `INSERT orders` instead, and nothing at
//!   `submitted`, whose trigger was the relay publishing `order.created`.
//!
//! Every span carries `order.id` (as its first attribute) and `order.activity`, and the
//! attributes its service puts on such a span (`http.*`, `url.*`, `db.*`, `messaging.*`,
//! `process.*`, `hallmark.*`), so each one is a span order-watch stores. The spans of each
//! [`Service`] collect until they fill a request of [`BATCH_SPANS`], under that service's
//! resource and an instrumentation scope named after it ([`exporter_of`]); one request holds
//! parts of many orders' journeys, as a real export does.
//!
//! A generator is deterministic from its seed: the same seed and the same end times give the
//! same orders and spans (ids, attributes, times). What is not: [`Journeys::add_random_order`]
//! dates its order relative to the clock, and each generator's resources carry a
//! `service.instance.id` of their own, as separately started services would.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use domain::OrderStatus;
use domain::events::{ORDER_CREATED, ORDER_PRICING_REQUESTED, ORDER_STATUS_CHANGED};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Link, SpanKind};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use telemetry::attr::{self, semconv};
use uuid::Uuid;

use crate::otlp::build::{int, string};

/// Spans per export request.
pub const BATCH_SPANS: usize = 512;

/// Time between the steps of a journey.
pub const STEP_GAP: chrono::Duration = chrono::Duration::seconds(90);

/// Where [`Journeys::add_random_order`] has orders end up, per thousand: most open orders wait
/// for people (a customer to accept a price, production), a few are in the machine stages,
/// 15 % are finished.
const FINAL_STATUSES: [(OrderStatus, u32); 13] = [
    (OrderStatus::Created, 5),
    (OrderStatus::Submitted, 5),
    (OrderStatus::Registered, 5),
    (OrderStatus::Pricing, 10),
    (OrderStatus::Priced, 220),
    (OrderStatus::Confirmed, 130),
    (OrderStatus::InProduction, 260),
    (OrderStatus::QualityCheck, 70),
    (OrderStatus::Ready, 70),
    (OrderStatus::Shipped, 75),
    (OrderStatus::Delivered, 110),
    (OrderStatus::Rejected, 15),
    (OrderStatus::Cancelled, 25),
];

/// The service that exported `request` (its instrumentation scope is named after it).
pub fn exporter_of(request: &ExportTraceServiceRequest) -> &str {
    request.resource_spans[0].scope_spans[0]
        .scope
        .as_ref()
        .map_or("", |scope| scope.name.as_str())
}

/// The services that report spans of orders.
#[derive(Debug, Clone, Copy)]
pub enum Service {
    Shop,
    Crm,
    Mes,
    MesCalc,
}

impl Service {
    pub const ALL: [Self; 4] = [Self::Shop, Self::Crm, Self::Mes, Self::MesCalc];

    /// Its `service.name`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Shop => "shop-api",
            Self::Crm => "crm-api",
            Self::Mes => "mes-api",
            Self::MesCalc => "mes-calc",
        }
    }

    fn database(self) -> &'static str {
        match self {
            Self::Shop => "hallmark_shop",
            Self::Crm => "hallmark_crm",
            Self::Mes | Self::MesCalc => "hallmark_mes",
        }
    }

    fn resource(self) -> Resource {
        Resource {
            attributes: vec![
                string(semconv::SERVICE_NAME, self.name()),
                string(semconv::SERVICE_VERSION, "0.1.0"),
                string(semconv::DEPLOYMENT_ENVIRONMENT_NAME, "production"),
                string(semconv::SERVICE_INSTANCE_ID, Uuid::new_v4().to_string()),
                string("telemetry.sdk.language", "rust"),
                string("telemetry.sdk.name", "opentelemetry"),
                string("telemetry.sdk.version", "0.33.0"),
            ],
            ..Default::default()
        }
    }
}

/// `(trace id, span id)` of a span, for parents and links.
type SpanRef = ([u8; 16], [u8; 8]);

/// What a generated order keeps between the steps of its journey.
struct Order {
    id: String,
    trace: [u8; 16],
    /// The span the next step continues from: the message's PRODUCER span, or the last one.
    previous: SpanRef,
    /// `messaging.message.id` of the last message published about the order.
    message_id: String,
    /// Identity attributes, repeated on the spans that record them.
    external_id: String,
    idempotency_key: String,
    customer_id: String,
    partner_id: Option<String>,
    material: &'static str,
    source: &'static str,
}

/// The timing of the step being generated: its spans start 2 ms apart and end by `end`.
struct StepClock {
    end: DateTime<Utc>,
    next_start: DateTime<Utc>,
}

/// One span to add to an order's journey.
struct SpanSpec {
    service: Service,
    kind: SpanKind,
    name: String,
    attributes: Vec<KeyValue>,
    parent: Option<[u8; 8]>,
    link: Option<SpanRef>,
    error: Option<&'static str>,
    /// `order.activity`: `progress`, but for a person's request itself (what it does is).
    activity: &'static str,
}

impl SpanSpec {
    fn new(
        service: Service,
        kind: SpanKind,
        name: impl Into<String>,
        attributes: Vec<KeyValue>,
    ) -> Self {
        Self {
            service,
            kind,
            name: name.into(),
            attributes,
            parent: None,
            link: None,
            error: None,
            activity: "progress",
        }
    }

    fn observing(mut self) -> Self {
        self.activity = "observation";
        self
    }

    fn child_of(mut self, parent: [u8; 8]) -> Self {
        self.parent = Some(parent);
        self
    }

    fn linked_to(mut self, span: SpanRef) -> Self {
        self.link = Some(span);
        self
    }

    fn failed(mut self, message: &'static str) -> Self {
        self.error = Some(message);
        self
    }
}

/// An endless supply of export requests carrying order journeys, as one instance of each
/// service would export them: each request holds spans of one service, [`BATCH_SPANS`] of them
/// but for the partial ones [`Journeys::drain`] returns.
pub struct Journeys {
    rng: SmallRng,
    resources: [Resource; 4],
    /// Spans waiting until their service has a full request.
    pending: [Vec<Span>; 4],
    ready: VecDeque<ExportTraceServiceRequest>,
    delivery_tag: i64,
}

impl Journeys {
    /// A generator whose orders and spans follow from `seed`; give each generator that sends
    /// to the same order-watch a seed of its own, or their ids collide.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: SmallRng::seed_from_u64(seed),
            resources: Service::ALL.map(Service::resource),
            pending: Default::default(),
            ready: VecDeque::new(),
            delivery_tag: 0,
        }
    }

    /// The next full request, generating orders as needed.
    pub fn next_batch(&mut self) -> ExportTraceServiceRequest {
        loop {
            if let Some(request) = self.ready.pop_front() {
                return request;
            }
            self.add_random_order();
        }
    }

    /// A full request, if one is waiting.
    pub fn take_ready(&mut self) -> Option<ExportTraceServiceRequest> {
        self.ready.pop_front()
    }

    /// Every request still waiting, the partial ones included.
    pub fn drain(mut self) -> Vec<ExportTraceServiceRequest> {
        for service in Service::ALL {
            let spans = std::mem::take(&mut self.pending[service as usize]);
            if !spans.is_empty() {
                let request = self.request(service, spans);
                self.ready.push_back(request);
            }
        }
        self.ready.into()
    }

    /// Adds an order ending where `FINAL_STATUSES` says, its last span at most ten minutes
    /// old; returns whether it is open.
    pub fn add_random_order(&mut self) -> bool {
        let mut pick = self.rng.random_range(0..1000);
        let last = FINAL_STATUSES
            .iter()
            .find_map(|&(status, weight)| {
                if pick < weight {
                    Some(status)
                } else {
                    pick -= weight;
                    None
                }
            })
            .expect("the weights add up to 1000");
        let end = Utc::now() - chrono::Duration::milliseconds(self.rng.random_range(0..600_000));
        self.add_order(last, end);
        !last.is_terminal()
    }

    /// Adds the journey of one order up to `last`, its last step ending at `end`; returns the
    /// order's id (a UUIDv7 of the time it was created).
    pub fn add_order(&mut self, last: OrderStatus, end: DateTime<Utc>) -> Uuid {
        let path = journey(last);
        let steps = path.len() as i32;
        let created = end - STEP_GAP * (steps - 1);
        let order_id = uuid::Builder::from_unix_timestamp_millis(
            created.timestamp_millis() as u64,
            &self.rng.random(),
        )
        .into_uuid();
        let (source, external_id, partner_id) = match self.rng.random_range(0..10) {
            0..6 => {
                let external_id = format!("WEB-{:08}", self.rng.random_range(0..100_000_000));
                ("web", external_id, None)
            }
            6..9 => {
                let partner = self.rng.random_range(1..40);
                let external_id = format!("PO-{}", self.rng.random_range(10_000..100_000));
                (
                    "partner_api",
                    external_id,
                    Some(format!("partner-{partner:03}")),
                )
            }
            _ => {
                let external_id = format!("CRM-{:06}", self.rng.random_range(0..1_000_000));
                ("crm", external_id, None)
            }
        };
        let mut order = Order {
            id: order_id.to_string(),
            trace: self.trace_id(),
            previous: ([0; 16], [0; 8]),
            message_id: String::new(),
            external_id,
            idempotency_key: self.random_uuid(),
            customer_id: self.random_uuid(),
            partner_id,
            material: ["gold_585", "gold_750", "silver_925", "platinum_950"]
                [self.rng.random_range(0..4)],
            source,
        };
        for (index, to) in (0..).zip(path) {
            let step_end = created + STEP_GAP * index;
            let mut clock = StepClock {
                end: step_end,
                next_start: step_end - chrono::Duration::milliseconds(40),
            };
            self.step(&mut order, to, &mut clock);
        }
        order_id
    }

    /// The spans of the step that moves `order` to `to`: what triggered it, the owner's
    /// transition span and the message announcing the change.
    fn step(&mut self, order: &mut Order, to: OrderStatus, clock: &mut StepClock) {
        use OrderStatus::*;
        let (owner, trigger) = trigger(to);
        let trigger = match trigger {
            Trigger::NewOrder(route) => {
                let spec = http_server(order, owner, route, 201);
                self.add(order, clock, spec)
            }
            Trigger::OutboxRelay => {
                let kind = ORDER_CREATED;
                self.publish(order, clock, owner, kind, kind)
            }
            Trigger::Message(queue) => self.consume(order, clock, owner, queue),
            Trigger::Calculation => self.price(order, clock, to != Priced),
            Trigger::Person(route) => self.person_starts(order, clock, owner, route),
        };

        let mut attributes = vec![
            string(attr::ORDER_STATUS_TO, to.as_str()),
            string(attr::ORDER_STAGE, to.stage().as_str()),
            string(attr::ORDER_IDEMPOTENCY_KEY, order.idempotency_key.clone()),
        ];
        if let Some(from) = previous_status(to) {
            attributes.push(string(attr::ORDER_STATUS_FROM, from.as_str()));
        }
        if matches!(to, Created | Registered) {
            attributes.extend([
                string(attr::ORDER_SOURCE, order.source),
                string(attr::ORDER_EXTERNAL_ID, order.external_id.clone()),
                string(attr::CUSTOMER_ID, order.customer_id.clone()),
                string(attr::ORDER_MATERIAL, order.material),
            ]);
            if let Some(partner) = &order.partner_id {
                attributes.push(string(attr::PARTNER_ID, partner.clone()));
            }
        }
        if matches!(to, Rejected | Failed) {
            attributes.push(string(attr::ERROR_CODE, "stl_not_closed"));
        }
        let name = if to == Created {
            "order create".to_owned()
        } else {
            format!("order {to}")
        };
        let spec = SpanSpec::new(owner, SpanKind::Internal, name, attributes).child_of(trigger);
        let transition = self.add(order, clock, spec);
        order.previous = (order.trace, transition);
        match to {
            Created => self.db(order, clock, owner, "INSERT", "orders", transition),
            // The relay's publication was this step's trigger.
            Submitted => {}
            Registered => {
                let kind = ORDER_PRICING_REQUESTED;
                self.publish(order, clock, owner, kind, kind);
            }
            _ => {
                let key = format!("{ORDER_STATUS_CHANGED}.{to}");
                self.publish(order, clock, owner, ORDER_STATUS_CHANGED, &key);
            }
        }
    }

    /// Work a person starts later: a new trace whose SERVER span links to the order's last
    /// span, with the owner's database update inside it.
    fn person_starts(
        &mut self,
        order: &mut Order,
        clock: &mut StepClock,
        service: Service,
        route: &str,
    ) -> [u8; 8] {
        let previous = order.previous;
        order.trace = self.trace_id();
        let spec = http_server(order, service, route, 200)
            .linked_to(previous)
            .observing();
        let server = self.add(order, clock, spec);
        self.db(order, clock, service, "UPDATE", "orders", server);
        server
    }

    /// The outbox relay's PRODUCER span for a message about the order.
    fn publish(
        &mut self,
        order: &mut Order,
        clock: &mut StepClock,
        service: Service,
        kind: &str,
        routing_key: &str,
    ) -> [u8; 8] {
        order.message_id = self.random_uuid();
        let attributes = vec![
            string(semconv::MESSAGING_SYSTEM, "rabbitmq"),
            string(semconv::MESSAGING_OPERATION_TYPE, "send"),
            string(semconv::MESSAGING_OPERATION_NAME, "publish"),
            string(semconv::MESSAGING_DESTINATION_NAME, "hallmark.orders"),
            string(
                semconv::MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY,
                routing_key,
            ),
            string(semconv::MESSAGING_MESSAGE_ID, order.message_id.clone()),
            int(
                semconv::MESSAGING_MESSAGE_BODY_SIZE,
                self.rng.random_range(300..900),
            ),
            string(attr::MESSAGE_TYPE, kind),
        ];
        let spec = SpanSpec::new(
            service,
            SpanKind::Producer,
            "publish hallmark.orders",
            attributes,
        )
        .child_of(order.previous.1);
        let publish = self.add(order, clock, spec);
        order.previous = (order.trace, publish);
        publish
    }

    /// A consumer's `process` span for the message the order's last step published: a child
    /// of the PRODUCER span that also links to it. Two deliveries in a hundred are retries,
    /// after a failed first attempt.
    fn consume(
        &mut self,
        order: &mut Order,
        clock: &mut StepClock,
        service: Service,
        queue: &str,
    ) -> [u8; 8] {
        let retries = i64::from(self.rng.random_range(0..100) < 2);
        let mut process = [0; 8];
        for attempt in 0..=retries {
            self.delivery_tag += 1;
            let failed = attempt < retries;
            let mut attributes = vec![
                string(semconv::MESSAGING_SYSTEM, "rabbitmq"),
                string(semconv::MESSAGING_OPERATION_TYPE, "process"),
                string(semconv::MESSAGING_OPERATION_NAME, "process"),
                string(semconv::MESSAGING_DESTINATION_NAME, "hallmark.orders"),
                string(semconv::MESSAGING_DESTINATION_SUBSCRIPTION_NAME, queue),
                int(
                    semconv::MESSAGING_RABBITMQ_MESSAGE_DELIVERY_TAG,
                    self.delivery_tag,
                ),
                string(semconv::MESSAGING_MESSAGE_ID, order.message_id.clone()),
                int(
                    semconv::MESSAGING_MESSAGE_BODY_SIZE,
                    self.rng.random_range(300..900),
                ),
                int(attr::QUEUE_WAIT_MS, self.rng.random_range(1..250)),
                int(attr::RETRY_COUNT, attempt),
            ];
            if failed {
                attributes.extend([
                    string(semconv::ERROR_TYPE, "dependency_unavailable"),
                    string(attr::ERROR_CODE, "dependency_unavailable"),
                ]);
            }
            let mut spec = SpanSpec::new(
                service,
                SpanKind::Consumer,
                "process hallmark.orders",
                attributes,
            )
            .child_of(order.previous.1)
            .linked_to(order.previous);
            if failed {
                spec = spec.failed("the database did not answer in time");
            }
            process = self.add(order, clock, spec);
        }
        process
    }

    /// MES pricing the model: `price model`, the calc engine run and the engine's own span.
    fn price(&mut self, order: &Order, clock: &mut StepClock, unmakeable: bool) -> [u8; 8] {
        let attributes = vec![
            string(attr::ORDER_MATERIAL, order.material),
            int(attr::RETRY_COUNT, 0),
        ];
        let spec = SpanSpec::new(
            Service::Mes,
            SpanKind::Internal,
            attr::span_names::PRICE_MODEL,
            attributes,
        )
        .child_of(order.previous.1);
        let model = self.add(order, clock, spec);
        let attributes = vec![
            string(semconv::PROCESS_COMMAND, "mes-calc"),
            int(semconv::PROCESS_PID, self.rng.random_range(1000..60_000)),
            int(semconv::PROCESS_EXIT_CODE, if unmakeable { 2 } else { 0 }),
        ];
        let spec = SpanSpec::new(
            Service::Mes,
            SpanKind::Client,
            attr::span_names::CALC_ENGINE_RUN,
            attributes,
        )
        .child_of(model);
        let run = self.add(order, clock, spec);
        let mut attributes = vec![string(attr::ORDER_MATERIAL, order.material)];
        if unmakeable {
            attributes.push(string(attr::ERROR_CODE, "stl_not_closed"));
        }
        let mut spec = SpanSpec::new(
            Service::MesCalc,
            SpanKind::Server,
            "calculate price",
            attributes,
        )
        .child_of(run);
        if unmakeable {
            spec = spec.failed("the model is not a closed solid");
        }
        self.add(order, clock, spec);
        model
    }

    /// A CLIENT span of a database statement.
    fn db(
        &mut self,
        order: &Order,
        clock: &mut StepClock,
        service: Service,
        operation: &str,
        table: &str,
        parent: [u8; 8],
    ) {
        let summary = format!("{operation} {table}");
        let attributes = vec![
            string(semconv::DB_SYSTEM_NAME, "postgresql"),
            string(semconv::DB_NAMESPACE, service.database()),
            string(semconv::DB_OPERATION_NAME, operation),
            string(semconv::DB_COLLECTION_NAME, table),
            string(semconv::DB_QUERY_SUMMARY, summary.clone()),
        ];
        let spec = SpanSpec::new(service, SpanKind::Client, summary, attributes).child_of(parent);
        self.add(order, clock, spec);
    }

    /// Adds a span of `order` (with `order.id` first, as every span of an order has it) to
    /// its current trace and returns the span's id.
    fn add(&mut self, order: &Order, clock: &mut StepClock, spec: SpanSpec) -> [u8; 8] {
        let mut attributes = Vec::with_capacity(spec.attributes.len() + 2);
        attributes.push(string(attr::ORDER_ID, order.id.clone()));
        attributes.push(string(attr::ORDER_ACTIVITY, spec.activity));
        attributes.extend(spec.attributes);
        let id = (self.rng.random::<u64>() | 1).to_be_bytes();
        let start = clock.next_start;
        clock.next_start += chrono::Duration::milliseconds(2);
        let duration = chrono::Duration::milliseconds(self.rng.random_range(1..30));
        let status = match spec.error {
            Some(message) => Status {
                code: StatusCode::Error as i32,
                message: message.into(),
            },
            None => Status::default(),
        };
        let span = Span {
            trace_id: order.trace.to_vec(),
            span_id: id.to_vec(),
            parent_span_id: spec.parent.map(|p| p.to_vec()).unwrap_or_default(),
            name: spec.name,
            kind: spec.kind as i32,
            start_time_unix_nano: nanos(start),
            end_time_unix_nano: nanos((start + duration).min(clock.end)),
            attributes,
            links: spec
                .link
                .map(|(trace, span)| Link {
                    trace_id: trace.to_vec(),
                    span_id: span.to_vec(),
                    ..Default::default()
                })
                .into_iter()
                .collect(),
            status: Some(status),
            ..Default::default()
        };
        let pending = &mut self.pending[spec.service as usize];
        pending.push(span);
        if pending.len() == BATCH_SPANS {
            let spans = std::mem::take(pending);
            let request = self.request(spec.service, spans);
            self.ready.push_back(request);
        }
        id
    }

    fn request(&self, service: Service, spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resources[service as usize].clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: service.name().into(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn trace_id(&mut self) -> [u8; 16] {
        (self.rng.random::<u128>() | 1).to_be_bytes()
    }

    fn random_uuid(&mut self) -> String {
        uuid::Builder::from_random_bytes(self.rng.random())
            .into_uuid()
            .to_string()
    }
}

/// What makes a service move an order.
enum Trigger {
    /// A request creating the order, to this route.
    NewOrder(&'static str),
    /// The outbox relay handing the new order to the broker.
    OutboxRelay,
    /// A message, consumed from this queue.
    Message(&'static str),
    /// A price calculation.
    Calculation,
    /// A person's request, later and in a trace of its own, to this route.
    Person(&'static str),
}

/// Which service moves an order to `to`, and why.
fn trigger(to: OrderStatus) -> (Service, Trigger) {
    use OrderStatus::*;
    match to {
        Created => (Service::Shop, Trigger::NewOrder("/api/orders")),
        Submitted => (Service::Shop, Trigger::OutboxRelay),
        Registered => (Service::Crm, Trigger::Message("crm.orders")),
        Pricing => (Service::Mes, Trigger::Message("mes.pricing")),
        Priced | Rejected | Failed => (Service::Mes, Trigger::Calculation),
        Confirmed => (
            Service::Shop,
            Trigger::Person("/api/orders/{order_id}/confirm"),
        ),
        Cancelled => (
            Service::Shop,
            Trigger::Person("/api/orders/{order_id}/cancel"),
        ),
        InProduction | QualityCheck | Ready => (
            Service::Mes,
            Trigger::Person("/api/orders/{order_id}/production"),
        ),
        Shipped => (Service::Crm, Trigger::Person("/api/orders/{order_id}/ship")),
        Delivered => (
            Service::Crm,
            Trigger::Person("/api/orders/{order_id}/deliver"),
        ),
    }
}

/// A SERVER span of `service` for a request to `route`, in the order's current trace.
fn http_server(order: &Order, service: Service, route: &str, status: i64) -> SpanSpec {
    let attributes = vec![
        string(semconv::HTTP_REQUEST_METHOD, "POST"),
        string(semconv::HTTP_ROUTE, route),
        string(semconv::URL_PATH, route.replace("{order_id}", &order.id)),
        string(semconv::URL_SCHEME, "http"),
        int(semconv::HTTP_RESPONSE_STATUS_CODE, status),
        string(semconv::NETWORK_PROTOCOL_VERSION, "1.1"),
        string(
            semconv::SERVER_ADDRESS,
            format!("{}.hallmark.internal", service.name()),
        ),
        int(semconv::SERVER_PORT, 8080),
    ];
    SpanSpec::new(
        service,
        SpanKind::Server,
        format!("POST {route}"),
        attributes,
    )
}

/// The statuses an order passes through to reach `last`: the happy path (the status machine's
/// own, `OrderStatus::moves_to`), and for a terminal status the step it ends from.
fn journey(last: OrderStatus) -> Vec<OrderStatus> {
    use OrderStatus::*;
    let (through, then) = match last {
        Rejected | Failed => (Pricing, Some(last)),
        Cancelled => (Priced, Some(last)),
        other => (other, None),
    };
    OrderStatus::moves_to(None, through)
        .into_iter()
        .chain(then)
        .collect()
}

/// The status before `to` on the journeys [`journey`] builds.
fn previous_status(to: OrderStatus) -> Option<OrderStatus> {
    let path = journey(to);
    path.len().checked_sub(2).map(|before| path[before])
}

fn nanos(time: DateTime<Utc>) -> u64 {
    time.timestamp_nanos_opt().unwrap_or_default() as u64
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;

    use super::*;

    fn text<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
        span.attributes
            .iter()
            .find(|attribute| attribute.key == key)
            .and_then(
                |attribute| match attribute.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(text) => Some(text.as_str()),
                    _ => None,
                },
            )
    }

    fn spans(requests: &[ExportTraceServiceRequest]) -> Vec<(&str, &Span)> {
        requests
            .iter()
            .flat_map(|request| {
                request.resource_spans[0].scope_spans[0]
                    .spans
                    .iter()
                    .map(|span| (exporter_of(request), span))
            })
            .collect()
    }

    fn end() -> DateTime<Utc> {
        "2025-03-01T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn a_journey_to_priced_has_spans_of_every_service_each_carrying_the_order_id() {
        let mut journeys = Journeys::new(7);
        let order = journeys.add_order(OrderStatus::Priced, end()).to_string();
        let requests = journeys.drain();
        let spans = spans(&requests);
        for service in Service::ALL {
            assert!(
                spans
                    .iter()
                    .any(|(exporter, _)| *exporter == service.name()),
                "no span of {}",
                service.name()
            );
        }
        for (_, span) in &spans {
            assert_eq!(span.attributes[0].key, attr::ORDER_ID, "{}", span.name);
            assert_eq!(text(span, attr::ORDER_ID), Some(order.as_str()));
            assert!(span.end_time_unix_nano <= nanos(end()), "{}", span.name);
        }
        // One transition span per status on the way.
        let mut reached: Vec<&str> = spans
            .iter()
            .filter_map(|(_, span)| text(span, attr::ORDER_STATUS_TO))
            .collect();
        reached.sort_unstable();
        let mut path = ["created", "submitted", "registered", "pricing", "priced"];
        path.sort_unstable();
        assert_eq!(reached, path);
    }

    #[test]
    fn the_same_seed_gives_the_same_spans_and_another_seed_other_ones() {
        let generate = |seed| {
            let mut journeys = Journeys::new(seed);
            for last in [OrderStatus::Delivered, OrderStatus::Rejected] {
                journeys.add_order(last, end());
            }
            let requests = journeys.drain();
            spans(&requests)
                .into_iter()
                .map(|(exporter, span)| (exporter.to_owned(), span.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(generate(3), generate(3));
        assert_ne!(generate(3), generate(4));
    }

    #[test]
    fn full_requests_hold_a_batch_of_one_services_spans() {
        let mut journeys = Journeys::new(1);
        for _ in 0..4 {
            let request = journeys.next_batch();
            let spans = &request.resource_spans[0].scope_spans[0].spans;
            assert_eq!(spans.len(), BATCH_SPANS);
            let resource = request.resource_spans[0].resource.as_ref().unwrap();
            let name = resource
                .attributes
                .iter()
                .find(|attribute| attribute.key == semconv::SERVICE_NAME)
                .and_then(|attribute| attribute.value.as_ref()?.value.as_ref());
            assert_eq!(
                name,
                Some(&Value::StringValue(exporter_of(&request).to_owned()))
            );
        }
    }

    #[test]
    fn every_journey_starts_created_ends_where_asked_and_moves_only_as_the_status_machine_allows() {
        for last in OrderStatus::ALL {
            let path = journey(last);
            assert_eq!(path.first(), Some(&OrderStatus::Created), "{last:?}");
            assert_eq!(path.last(), Some(&last));
            for step in path.windows(2) {
                assert!(step[0].can_transition_to(step[1]), "{step:?}");
            }
            assert_eq!(previous_status(last), path.iter().rev().nth(1).copied());
        }
        assert_eq!(
            previous_status(OrderStatus::Rejected),
            Some(OrderStatus::Pricing)
        );
        assert_eq!(
            previous_status(OrderStatus::Cancelled),
            Some(OrderStatus::Priced)
        );
    }
}

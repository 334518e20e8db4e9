//! OTLP/gRPC receiver: the trace service, plus metrics and logs services that accept and drop.
//!
//! The trace service is served through `TraceRoute` rather than the generated server so that a
//! request that is not an OTLP message is answered `INVALID_ARGUMENT`, as OTLP asks for
//! malformed data (the generated server follows gRPC's default, `INTERNAL`). Neither is retried
//! by an exporter; `INVALID_ARGUMENT` also tells its operator the data, not order-watch, is wrong.

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codec::{
    BufferSettings, Codec, CompressionEncoding, DecodeBuf, Decoder, EnabledCompressionEncodings,
};
use tonic::{Code, Request, Response, Status};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

use super::{Ingest, IngestError};

#[tonic::async_trait]
impl TraceService for Ingest {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        match Ingest::export(self, request.into_inner()).await {
            Ok(response) => Ok(Response::new(response)),
            // Both are retryable for an OTLP exporter.
            Err(IngestError::Busy) => Err(Status::resource_exhausted(
                "order-watch is at capacity; retry",
            )),
            Err(IngestError::Unavailable(err)) => {
                tracing::warn!(
                    error = &err as &dyn std::error::Error,
                    "spans not stored; the exporter will retry"
                );
                Err(Status::unavailable(super::UNAVAILABLE_MESSAGE))
            }
        }
    }
}

struct Discard;

#[tonic::async_trait]
impl MetricsService for Discard {
    async fn export(
        &self,
        _: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Discard {
    async fn export(
        &self,
        _: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        Ok(Response::new(ExportLogsServiceResponse::default()))
    }
}

/// The generated codec, but a message that does not decode is `INVALID_ARGUMENT`.
#[derive(Default)]
struct OtlpCodec(ProstCodec<ExportTraceServiceResponse, ExportTraceServiceRequest>);

impl Codec for OtlpCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = ExportTraceServiceRequest;
    type Encoder = ProstEncoder<ExportTraceServiceResponse>;
    type Decoder = InvalidArgument;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        InvalidArgument(self.0.decoder())
    }
}

struct InvalidArgument(ProstDecoder<ExportTraceServiceRequest>);

impl Decoder for InvalidArgument {
    type Item = ExportTraceServiceRequest;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        self.0.decode(buf).map_err(|status| match status.code() {
            Code::Internal => Status::invalid_argument(format!(
                "the request is not an OTLP ExportTraceServiceRequest: {}",
                status.message()
            )),
            _ => status,
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// `TraceService/Export` with [`OtlpCodec`], gzip both ways and the request size limit; what
/// the generated `TraceServiceServer` does otherwise.
#[derive(Clone)]
struct TraceRoute {
    ingest: Arc<Ingest>,
    max_request_bytes: usize,
}

struct Export(Arc<Ingest>);

impl tonic::server::UnaryService<ExportTraceServiceRequest> for Export {
    type Response = ExportTraceServiceResponse;
    type Future =
        Pin<Box<dyn Future<Output = Result<Response<Self::Response>, Status>> + Send + 'static>>;

    fn call(&mut self, request: Request<ExportTraceServiceRequest>) -> Self::Future {
        let ingest = self.0.clone();
        Box::pin(async move { TraceService::export(ingest.as_ref(), request).await })
    }
}

impl<B> tower::Service<http::Request<B>> for TraceRoute
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let route = self.clone();
        Box::pin(async move {
            if request.uri().path() != EXPORT_PATH {
                return Ok(Status::unimplemented("no such method").into_http());
            }
            let mut gzip = EnabledCompressionEncodings::default();
            gzip.enable(CompressionEncoding::Gzip);
            let mut grpc = tonic::server::Grpc::new(OtlpCodec::default())
                .apply_compression_config(gzip, gzip)
                .apply_max_message_size_config(Some(route.max_request_bytes), None);
            Ok(grpc.unary(Export(route.ingest), request).await)
        })
    }
}

impl tonic::server::NamedService for TraceRoute {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The gRPC services, with gzip and the request size limit.
pub fn routes(ingest: Ingest) -> tonic::service::Routes {
    let limit = ingest.max_request_bytes;
    let traces = TraceRoute {
        ingest: Arc::new(ingest),
        max_request_bytes: limit,
    };
    let metrics = MetricsServiceServer::new(Discard)
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(limit);
    let logs = LogsServiceServer::new(Discard)
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(limit);
    tonic::service::Routes::new(traces)
        .add_service(metrics)
        .add_service(logs)
}

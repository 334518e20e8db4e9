use crm_api::{Application, SERVICE, Settings};

#[global_allocator]
static ALLOCATOR: platform::Allocator = platform::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::service::run(SERVICE, |cancel| async move {
        Application::build(Settings::from_env()?, cancel)
            .await?
            .run_until_stopped()
            .await
    })
    .await
}

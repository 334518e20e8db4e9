use order_watch::clock::Clock;
use order_watch::{Application, SERVICE, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::service::run(SERVICE, |cancel| async move {
        Application::build(Settings::from_env()?, Clock::System, cancel)
            .await?
            .run_until_stopped()
            .await
    })
    .await
}

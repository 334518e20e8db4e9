use mes_api::{Application, SERVICE, Settings};

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

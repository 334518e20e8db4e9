//! The time order-watch judges silence by. Production reads the system clock; tests drive a
//! manual clock, so thresholds are crossed exactly when a test says, not when a machine gets
//! around to it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub enum Clock {
    System,
    Manual(Arc<watch::Sender<DateTime<Utc>>>),
}

impl Clock {
    /// A manual clock standing at `start`.
    pub fn manual(start: DateTime<Utc>) -> Self {
        Self::Manual(Arc::new(watch::Sender::new(start)))
    }

    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Self::System => Utc::now(),
            Self::Manual(time) => *time.borrow(),
        }
    }

    /// Moves a manual clock forward (waking anything sleeping on it); no effect on the system
    /// clock.
    pub fn advance(&self, by: Duration) {
        if let Self::Manual(time) = self {
            time.send_modify(|t| *t += chrono::Duration::from_std(by).unwrap_or_default());
        }
    }

    /// Returns once the clock reads `deadline` or later.
    pub async fn sleep_until(&self, deadline: DateTime<Utc>) {
        match self {
            Self::System => {
                let wait = (deadline - Utc::now()).to_std().unwrap_or_default();
                tokio::time::sleep(wait).await;
            }
            Self::Manual(time) => {
                let mut receiver = time.subscribe();
                // The sender lives as long as the clock; `wait_for` only ends early if it is gone.
                let _ = receiver.wait_for(|now| *now >= deadline).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_clock_wakes_sleepers_when_it_passes_their_deadline() {
        let start = Utc::now();
        let clock = Clock::manual(start);
        let sleeper = tokio::spawn({
            let clock = clock.clone();
            async move {
                clock
                    .sleep_until(start + chrono::Duration::seconds(60))
                    .await
            }
        });
        clock.advance(Duration::from_secs(30));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(Duration::from_secs(30));
        tokio::time::timeout(Duration::from_secs(1), sleeper)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(clock.now(), start + chrono::Duration::seconds(60));
    }
}

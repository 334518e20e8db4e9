//! The UI's login: the authorization code flow with PKCE against the identity provider, and a
//! session cookie afterwards.
//!
//! `GET /login` sends the browser to the provider with a fresh `state` and PKCE challenge
//! (S256); `GET /auth/callback` takes the code back, exchanges it (with the verifier) for tokens,
//! checks the access token exactly as a bearer token is checked, and opens a session: a random
//! id in an `HttpOnly`, `SameSite=Lax` cookie (`Secure` when order-watch's public URL is https).
//! The session holds the tokens on the server, never in the browser; it is refreshed with the
//! refresh token shortly before the access token expires and ends when that fails, at
//! `POST /logout`, or when order-watch restarts. A state-changing request made with the cookie
//! must carry the session's CSRF token in `X-CSRF-Token` (read from `GET /api/me`), so another
//! site cannot make a logged-in browser change anything.
//!
//! Sessions and pending logins live in this process's memory, bounded; behind several replicas
//! a browser must stick to one (or log in again).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rand::RngCore as _;
use serde::Deserialize;
use sha2::Digest as _;
use tokio::sync::Mutex;

use super::Principal;

/// The session cookie's name.
pub const COOKIE: &str = "order_watch_session";
/// The header a state-changing request made with the session cookie carries.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a login may take between `/login` and the provider's redirect back.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(600);
/// Most logins under way and sessions kept; the oldest give way.
const MAX_PENDING: usize = 10_000;
const MAX_SESSIONS: usize = 10_000;
/// A session's tokens are refreshed when they expire within this.
const REFRESH_AHEAD: Duration = Duration::from_secs(60);

/// A random, URL-safe value of 32 bytes.
pub fn random_token() -> String {
    let mut bytes = [0_u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The PKCE S256 challenge of `verifier`.
pub fn challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier))
}

/// A login under way: what the callback needs to finish it.
pub struct Pending {
    pub verifier: String,
    pub redirect_uri: String,
    pub next: String,
    started: Instant,
}

/// A logged-in browser.
#[derive(Clone)]
pub struct Session {
    pub principal: Principal,
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires: Instant,
    pub csrf: String,
}

impl Session {
    pub fn needs_refresh(&self) -> bool {
        self.expires.saturating_duration_since(Instant::now()) < REFRESH_AHEAD
    }
}

/// The tokens the provider's token endpoint answers with.
#[derive(Deserialize)]
pub struct Tokens {
    pub access_token: String,
    #[serde(default)]
    pub refresh_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

impl Tokens {
    pub fn expires(&self) -> Instant {
        Instant::now() + Duration::from_secs(self.expires_in.unwrap_or(60))
    }
}

#[derive(Default)]
pub struct Store {
    pending: Mutex<HashMap<String, Pending>>,
    sessions: Mutex<HashMap<String, Session>>,
}

impl Store {
    /// Remembers a login under way; answers its `state`.
    pub async fn begin(&self, verifier: String, redirect_uri: String, next: String) -> String {
        let state = random_token();
        insert_bounded(
            &mut *self.pending.lock().await,
            MAX_PENDING,
            state.clone(),
            Pending {
                verifier,
                redirect_uri,
                next,
                started: Instant::now(),
            },
            |p| p.started.elapsed() < LOGIN_TIMEOUT,
            |p| p.started,
        );
        state
    }

    /// The login `state` belongs to, once: a state is good for one callback.
    pub async fn finish(&self, state: &str) -> Option<Pending> {
        let pending = self.pending.lock().await.remove(state)?;
        (pending.started.elapsed() < LOGIN_TIMEOUT).then_some(pending)
    }

    /// Opens a session; answers its id.
    pub async fn open(&self, session: Session) -> String {
        let id = random_token();
        insert_bounded(
            &mut *self.sessions.lock().await,
            MAX_SESSIONS,
            id.clone(),
            session,
            |s| s.expires > Instant::now() || s.refresh_token.is_some(),
            |s| s.expires,
        );
        id
    }

    pub async fn get(&self, id: &str) -> Option<Session> {
        self.sessions.lock().await.get(id).cloned()
    }

    pub async fn replace(&self, id: &str, session: Session) {
        if let Some(slot) = self.sessions.lock().await.get_mut(id) {
            *slot = session;
        }
    }

    pub async fn close(&self, id: &str) -> Option<Session> {
        self.sessions.lock().await.remove(id)
    }
}

/// Inserts `value` under `key`, first dropping the entries `live` says are over and, when `map`
/// still holds `max`, the one `age` says is oldest: memory stays bounded whoever calls.
fn insert_bounded<V, A: Ord>(
    map: &mut HashMap<String, V>,
    max: usize,
    key: String,
    value: V,
    live: impl Fn(&V) -> bool,
    age: impl Fn(&V) -> A,
) {
    map.retain(|_, v| live(v));
    if map.len() >= max
        && let Some(oldest) = map
            .iter()
            .min_by_key(|(_, v)| age(v))
            .map(|(k, _)| k.clone())
    {
        map.remove(&oldest);
    }
    map.insert(key, value);
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Where to go after logging in: a path of this site only (never `//host` or a URL), else `/`.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && !path.contains('\\')
                && !path.chars().any(char::is_control) =>
        {
            path.to_owned()
        }
        _ => "/".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pkce_challenge_is_the_unpadded_base64url_sha256_of_the_verifier() {
        // As Python's hashlib and base64 compute it.
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWEOEjXk"),
            "TP3DZQl9rJnri9eRuZaFS6Q7czCrth7sEZC00LreApo"
        );
    }

    #[test]
    fn after_login_only_a_path_of_this_site_is_followed() {
        assert_eq!(safe_next(Some("/api/config")), "/api/config");
        for hostile in [
            "//evil.example/",
            "https://evil.example/",
            "/\\evil.example",
            "evil",
            "/a\nb",
        ] {
            assert_eq!(safe_next(Some(hostile)), "/", "{hostile:?}");
        }
        assert_eq!(safe_next(None), "/");
    }

    #[tokio::test]
    async fn a_login_state_is_good_for_one_callback() {
        let store = Store::default();
        let state = store
            .begin("v".into(), "http://x/auth/callback".into(), "/".into())
            .await;
        assert!(store.finish(&state).await.is_some());
        assert!(store.finish(&state).await.is_none());
        assert!(store.finish("made-up").await.is_none());
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            axum::http::header::COOKIE,
            "a=1; order_watch_session=abc; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&headers, COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "c"), None);
    }

    #[test]
    fn a_full_store_gives_way_to_its_oldest_entry_and_drops_what_is_over() {
        let mut map = HashMap::new();
        for (key, age) in [("a", 3), ("b", 1), ("c", 2)] {
            insert_bounded(&mut map, 3, key.into(), age, |_| true, |v| *v);
        }
        insert_bounded(&mut map, 3, "d".into(), 4, |_| true, |v| *v);
        assert!(!map.contains_key("b") && map.len() == 3, "{map:?}");
        insert_bounded(&mut map, 3, "e".into(), 5, |v| *v > 3, |v| *v);
        let mut keys: Vec<_> = map.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["d", "e"]);
    }
}

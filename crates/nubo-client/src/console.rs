//! The console relay's client side: a user's console websocket (the
//! upgrade is made through this client's HTTP connection, so it trusts the
//! same certificates as every other call), and the two streams an agent
//! opens to join a console session.

use crate::{api_error, path_segment, transport, Client, ClientError};
use std::time::Duration;

/// Longest one console session's streams stay open.
const SESSION_LIFETIME: Duration = Duration::from_secs(24 * 3600);

impl Client {
    /// Opens the websocket at `path` (e.g. `/api/v1/instances/ID/console/ws`)
    /// with this client's token; returns the upgraded connection, on which
    /// the websocket protocol runs (as a client).
    pub async fn websocket(&self, path: &str) -> Result<reqwest::Upgraded, ClientError> {
        use base64::Engine;
        let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
        let url = format!("{}{path}", self.base_url());
        let resp = self
            .http
            .get(&url)
            .timeout(SESSION_LIFETIME)
            .bearer_auth(&self.token)
            .header(reqwest::header::CONNECTION, "Upgrade")
            .header(reqwest::header::UPGRADE, "websocket")
            .header(reqwest::header::SEC_WEBSOCKET_VERSION, "13")
            .header(reqwest::header::SEC_WEBSOCKET_KEY, key)
            .send()
            .await
            .map_err(|source| transport(&url, source))?;
        if resp.status() != reqwest::StatusCode::SWITCHING_PROTOCOLS {
            let status = resp.status().as_u16();
            let bytes = resp.bytes().await.map_err(|source| transport(&url, source))?;
            return Err(api_error(status, &bytes));
        }
        resp.upgrade().await.map_err(|source| transport(&url, source))
    }

    /// The viewer's input of console session `session` on `host`: a
    /// response whose body streams until the viewer leaves.
    pub async fn console_input(
        &self,
        host: &nubo_api::ids::HostId,
        session: &str,
    ) -> Result<reqwest::Response, ClientError> {
        let url = format!("{}/api/v1/agent/hosts/{host}/consoles/{}/input", self.base_url(), path_segment(session));
        let resp = self
            .http
            .get(&url)
            .timeout(SESSION_LIFETIME)
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|source| transport(&url, source))?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let bytes = resp.bytes().await.map_err(|source| transport(&url, source))?;
            return Err(api_error(status, &bytes));
        }
        Ok(resp)
    }

    /// Sends the guest's output of console session `session` on `host` as
    /// the streamed `body`; returns when it ends or the session does.
    pub async fn console_output(
        &self,
        host: &nubo_api::ids::HostId,
        session: &str,
        body: reqwest::Body,
    ) -> Result<(), ClientError> {
        let url = format!("{}/api/v1/agent/hosts/{host}/consoles/{}/output", self.base_url(), path_segment(session));
        let resp = self
            .http
            .post(&url)
            .timeout(SESSION_LIFETIME)
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body)
            .send()
            .await
            .map_err(|source| transport(&url, source))?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let bytes = resp.bytes().await.map_err(|source| transport(&url, source))?;
            return Err(api_error(status, &bytes));
        }
        Ok(())
    }
}

//! LDAP sign-in. This module owns everything Nubo says to an LDAP
//! directory: the settings (`LdapConfig`: where the server is, how a user
//! name becomes a DN, where the groups are and which LDAP group gives which
//! project and role), the escaping of user input into DNs (RFC 4514) and
//! search filters (RFC 4515), and `authenticate`, which binds as the user
//! with their password, reads their groups as that user and maps the
//! groups to Nubo grants; and `lookup`, which re-reads a known user's
//! standing (still there? which grants?) between sign-ins, bound as the
//! settings' service account. It holds no state and keeps no user's
//! password: each call is one short connection, closed before it returns.
//! What a grant means inside Nubo (users, projects, tokens) is the caller's
//! business (`ldap_sync`).
//!
//! `ldap://` sends the password in clear text: outside a loopback or
//! otherwise trusted network use `ldaps://` (TLS, checked against the
//! host's trusted CA certificates).

use ldap3::asn1::{StructureTag, PL};
use ldap3::{LdapConnAsync, LdapConnSettings, ResultEntry, Scope};
use std::time::Duration;

/// The group filter used when the settings name none: groupOfNames,
/// groupOfUniqueNames and posixGroup memberships.
pub const DEFAULT_GROUP_FILTER: &str = "(|(member={dn})(uniqueMember={dn})(memberUid={user}))";

/// How long one step (connect, bind, search) may take unless the settings
/// say otherwise.
pub const DEFAULT_TIMEOUT_SECS: u64 = 5;

/// The roles a mapping may grant, strongest first.
pub const ROLES: &[&str] = &["admin", "member", "reader"];

/// Longest user name accepted.
pub const MAX_USERNAME_LEN: usize = 64;

/// Seconds between re-checks of the directory's users unless the settings
/// say otherwise.
pub const DEFAULT_REFRESH_SECS: u64 = 300;

fn default_group_filter() -> String {
    DEFAULT_GROUP_FILTER.to_string()
}

/// Where the directory is and how its groups map to Nubo projects.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LdapConfig {
    /// `ldap://host:port`, `ldaps://host:port` or `ldapi://`.
    pub url: String,
    /// The user's DN, with `{user}` standing for the (RFC 4514 escaped)
    /// user name, e.g. `uid={user},ou=people,dc=nubo,dc=test`.
    pub user_dn_template: String,
    /// Where groups are searched (whole subtree).
    pub group_base: String,
    /// Finds the user's groups; `{dn}` and `{user}` are replaced by the
    /// user's DN and name, escaped per RFC 4515.
    #[serde(default = "default_group_filter")]
    pub group_filter: String,
    /// Which LDAP group (by `cn`) gives which project and role.
    pub mappings: Vec<GroupMapping>,
    /// Seconds each step may take (default 5).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// The DN the server binds as to re-check its LDAP users between
    /// sign-ins (it needs to read their entries and the groups); without
    /// it the re-check searches anonymously.
    #[serde(default)]
    pub bind_dn: Option<String>,
    /// The password of `bind_dn` (never written back out).
    #[serde(default, skip_serializing)]
    pub bind_password: Option<String>,
    /// Seconds between re-checks of every LDAP user (default 300): a user
    /// removed from the directory, or from every mapped group, loses its
    /// roles, tokens and access keys within this long.
    #[serde(default)]
    pub refresh_secs: Option<u64>,
}

/// What the directory says of a known user now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// The user's entry is gone.
    Gone,
    /// The mapped grants the user's groups give (none: every mapped group
    /// dropped the user).
    Grants(Vec<GroupMapping>),
}

/// Members of the LDAP group `group` (its `cn`, compared ignoring ASCII
/// case, as LDAP does) get `role` in `project`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct GroupMapping {
    pub group: String,
    pub project: String,
    /// `admin`, `member` or `reader`.
    pub role: String,
}

/// A user whose password the directory accepted, with what they may do.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LdapIdentity {
    pub username: String,
    /// The DN the user bound as.
    pub dn: String,
    /// The `cn`s of every group the search found, sorted.
    pub groups: Vec<String>,
    /// The mappings that matched, in the order of the settings; never empty.
    pub grants: Vec<GroupMapping>,
}

impl LdapIdentity {
    /// The strongest role the grants give in `project`, if any.
    pub fn role_in(&self, project: &str) -> Option<&str> {
        ROLES.iter().copied().find(|role| self.grants.iter().any(|g| g.project == project && g.role == *role))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LdapError {
    /// Wrong password, unknown user, or a user name or password that
    /// cannot be right (refused before asking the server).
    #[error("invalid username or password: check both and try again")]
    InvalidCredentials,
    /// No connection, a dropped connection, a timeout or a busy server.
    #[error(
        "cannot reach the LDAP server at {url}: {detail}; check that the server is running and reachable from the \
         control plane, and that the url in the LDAP settings is right"
    )]
    Unreachable { url: String, detail: String },
    /// The password was right, but no mapped group lists the user.
    #[error(
        "user '{user}' signed in to LDAP but is in no group that maps to a Nubo project: ask an administrator to add \
         the user to a mapped group, or to map one of the user's groups in the LDAP settings"
    )]
    NoMatchingGroup { user: String },
    /// The settings cannot work; the message says which one and why.
    #[error("the LDAP settings are not valid: {0}")]
    Config(String),
    /// The server answered something other than expected.
    #[error("the LDAP server gave an unexpected answer: {0}; check the server's log")]
    Protocol(String),
}

/// Checks a user name before it goes anywhere near the directory:
/// 1-64 ASCII letters, digits, `.`, `-`, `_` or `@`.
pub fn valid_username(username: &str) -> bool {
    !username.is_empty()
        && username.len() <= MAX_USERNAME_LEN
        && username.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_@".contains(&b))
}

/// Escapes a value for use inside an RDN (RFC 4514, section 2.4): `"`,
/// `+`, `,`, `;`, `<`, `=`, `>`, `\` and NUL anywhere, a leading space or
/// `#`, and a trailing space become `\` and two hex digits.
pub fn escape_dn_value(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = String::with_capacity(value.len());
    for (i, ch) in value.char_indices() {
        let special = matches!(ch, '"' | '+' | ',' | ';' | '<' | '=' | '>' | '\\' | '\0')
            || (i == 0 && matches!(ch, ' ' | '#'))
            || (i + 1 == bytes.len() && ch == ' ');
        if special {
            out.push_str(&format!("\\{:02x}", ch as u32));
        } else {
            out.push(ch);
        }
    }
    out
}

/// Escapes a value for use inside a search filter (RFC 4515, section 3):
/// `*`, `(`, `)`, `\` and NUL become `\` and two hex digits.
pub fn escape_filter_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for ch in value.chars() {
        if matches!(ch, '*' | '(' | ')' | '\\' | '\0') {
            out.push_str(&format!("\\{:02x}", ch as u32));
        } else {
            out.push(ch);
        }
    }
    out
}

/// Replaces each `{name}` of `vars` in `template` in one pass, so a
/// replaced value is never itself searched for placeholders.
fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    'outer: while let Some(pos) = rest.find('{') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        for (name, value) in vars {
            let placeholder_len = name.len() + 2;
            if tail.len() >= placeholder_len
                && tail[1..].starts_with(name)
                && tail.as_bytes()[placeholder_len - 1] == b'}'
            {
                out.push_str(value);
                rest = &tail[placeholder_len..];
                continue 'outer;
            }
        }
        out.push('{');
        rest = &tail[1..];
    }
    out.push_str(rest);
    out
}

impl LdapConfig {
    /// How long each step may take.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS))
    }

    /// How often the directory's users are re-checked.
    pub fn refresh(&self) -> Duration {
        Duration::from_secs(self.refresh_secs.unwrap_or(DEFAULT_REFRESH_SECS))
    }

    /// The mappings the groups named `groups` (cns) give.
    pub fn grants_for(&self, groups: &[String]) -> Vec<GroupMapping> {
        let mut grants: Vec<GroupMapping> = Vec::new();
        for m in &self.mappings {
            if groups.iter().any(|g| g.eq_ignore_ascii_case(&m.group)) && !grants.contains(m) {
                grants.push(m.clone());
            }
        }
        grants
    }

    /// The DN of `username` (escaped into the template).
    pub fn user_dn(&self, username: &str) -> String {
        fill(&self.user_dn_template, &[("user", &escape_dn_value(username))])
    }

    /// The group search filter for a user (both values escaped).
    pub fn group_filter_for(&self, username: &str, dn: &str) -> String {
        fill(&self.group_filter, &[("dn", &escape_filter_value(dn)), ("user", &escape_filter_value(username))])
    }

    /// Checks the settings without contacting the server; call it when the
    /// settings are loaded so that a mistake shows at startup.
    pub fn validate(&self) -> Result<(), LdapError> {
        let bad = |m: String| Err(LdapError::Config(m));
        let url = self.url.trim();
        let lower = url.to_ascii_lowercase();
        let scheme_ok = ["ldap://", "ldaps://", "ldapi://"].iter().any(|s| lower.starts_with(s));
        if !scheme_ok || url != self.url {
            return bad(format!(
                "url '{}' is not an LDAP URL: use ldap://HOST:PORT, ldaps://HOST:PORT or ldapi://",
                self.url
            ));
        }
        if !self.user_dn_template.contains("{user}") || self.user_dn_template.contains("{dn}") {
            return bad(format!(
                "user_dn_template '{}' must contain {{user}} (and not {{dn}}), e.g. uid={{user}},ou=people,dc=example,dc=org",
                self.user_dn_template
            ));
        }
        if self.group_base.trim().is_empty() {
            return bad(
                "group_base is empty: name the subtree holding the groups, e.g. ou=groups,dc=example,dc=org".into()
            );
        }
        let sample = self.group_filter_for("user", &self.user_dn("user"));
        if !self.group_filter.starts_with('(') || ldap3::parse_filter(&sample).is_err() {
            return bad(format!(
                "group_filter '{}' is not an LDAP filter: write one in parentheses, e.g. {DEFAULT_GROUP_FILTER}",
                self.group_filter
            ));
        }
        if self.mappings.is_empty() {
            return bad(
                "mappings is empty, so nobody could sign in: map at least one LDAP group to a project and role".into(),
            );
        }
        for m in &self.mappings {
            if m.group.trim().is_empty() {
                return bad(format!("a mapping to project '{}' has an empty group: name the group's cn", m.project));
            }
            if let Err(e) = crate::validate::name(&m.project) {
                return bad(format!("the mapping of group '{}' names a bad project: {e}", m.group));
            }
            if !ROLES.contains(&m.role.as_str()) {
                return bad(format!(
                    "the mapping of group '{}' has role '{}': use one of {}",
                    m.group,
                    m.role,
                    ROLES.join(", ")
                ));
            }
        }
        if self.bind_dn.is_some() != self.bind_password.is_some() {
            return bad("bind_dn and bind_password go together: give both (a service account that may read users \
                 and groups) or neither (anonymous re-checks)"
                .into());
        }
        if self.bind_password.as_deref() == Some("") {
            return bad(
                "bind_password is empty: an empty password binds anonymously; give the account's password".into()
            );
        }
        match self.refresh_secs {
            Some(0) => return bad("refresh_secs is 0: leave it out (300 s) or give 1 or more seconds".into()),
            Some(t) if t > 86400 => {
                return bad(format!("refresh_secs {t} is too long: give at most 86400 seconds (a day)"))
            }
            _ => {}
        }
        match self.timeout_secs {
            Some(0) => bad("timeout_secs is 0: leave it out (5 s) or give 1 or more seconds".into()),
            Some(t) if t > 600 => bad(format!("timeout_secs {t} is too long: give at most 600 seconds")),
            _ => Ok(()),
        }
    }
}

/// Stops the connection's driver task when the sign-in is done, whichever
/// way it ends.
struct Driver(tokio::task::JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Opens a connection to the directory within `timeout`; the connection
/// lives as long as the returned `Driver`.
async fn connect(cfg: &LdapConfig, timeout: std::time::Duration) -> Result<(ldap3::Ldap, Driver), LdapError> {
    let settings = LdapConnSettings::new().set_conn_timeout(timeout);
    let (conn, ldap) = tokio::time::timeout(timeout, LdapConnAsync::with_settings(settings, &cfg.url))
        .await
        .map_err(|_| LdapError::Unreachable {
            url: cfg.url.clone(),
            detail: format!("no connection within {} s", timeout.as_secs()),
        })?
        .map_err(|e| map_ldap_error(cfg, timeout, e))?;
    let driver = Driver(tokio::spawn(async move {
        if let Err(e) = conn.drive().await {
            tracing::debug!("LDAP connection ended: {e}");
        }
    }));
    Ok((ldap, driver))
}

/// Signs `username` in with `password`: binds to the directory as the
/// user, reads the user's groups (as the user) and maps them to grants.
/// Malformed user names and empty passwords are refused before any
/// connection is made (an LDAP simple bind with an empty password is an
/// anonymous bind that "succeeds").
pub async fn authenticate(cfg: &LdapConfig, username: &str, password: &str) -> Result<LdapIdentity, LdapError> {
    if !valid_username(username) {
        tracing::debug!("LDAP sign-in refused: malformed user name");
        return Err(LdapError::InvalidCredentials);
    }
    if password.is_empty() {
        tracing::debug!(username, "LDAP sign-in refused: empty password");
        return Err(LdapError::InvalidCredentials);
    }
    cfg.validate()?;
    let timeout = cfg.timeout();
    let unreachable = |detail: String| LdapError::Unreachable { url: cfg.url.clone(), detail };
    let from_ldap = |e: ldap3::LdapError| map_ldap_error(cfg, timeout, e);

    let (mut ldap, _driver) = connect(cfg, timeout).await?;

    let dn = cfg.user_dn(username);
    let bind = ldap.with_timeout(timeout).simple_bind(&dn, password).await.map_err(from_ldap)?;
    match bind.rc {
        0 => {}
        49 => {
            tracing::debug!(username, "LDAP sign-in refused: invalid credentials");
            return Err(LdapError::InvalidCredentials);
        }
        51 | 52 => return Err(unreachable(format!("the server is busy or unavailable ({})", describe(&bind)))),
        _ => return Err(LdapError::Protocol(format!("the bind as {dn} was refused ({})", describe(&bind)))),
    }

    let filter = cfg.group_filter_for(username, &dn);
    let search = ldap
        .with_timeout(timeout)
        .search(&cfg.group_base, Scope::Subtree, &filter, vec!["cn"])
        .await
        .map_err(from_ldap)?;
    let ldap3::SearchResult(entries, result) = search;
    match result.rc {
        0 => {}
        // Size or time limit: use what came back.
        3 | 4 => tracing::warn!(username, "LDAP group search was cut short ({})", describe(&result)),
        32 => {
            return Err(LdapError::Config(format!(
                "group_base '{}' does not exist on the server: check it",
                cfg.group_base
            )))
        }
        50 => {
            return Err(LdapError::Protocol(format!(
                "user {dn} may not search {} ({}): let users read their groups' cn and members",
                cfg.group_base,
                describe(&result)
            )))
        }
        _ => return Err(LdapError::Protocol(format!("the group search failed ({})", describe(&result)))),
    }
    // Polite close; the sign-in's outcome does not depend on it.
    let _ = ldap.with_timeout(timeout).unbind().await;

    let mut groups = Vec::new();
    for entry in entries {
        let Some((group_dn, cns)) = entry_cns(entry) else {
            return Err(LdapError::Protocol("a group search result could not be decoded".into()));
        };
        if cns.is_empty() {
            tracing::debug!(group_dn, "LDAP group without a readable cn ignored");
        }
        groups.extend(cns);
    }
    groups.sort();
    groups.dedup();

    let grants = cfg.grants_for(&groups);
    if grants.is_empty() {
        tracing::debug!(username, ?groups, "LDAP sign-in refused: no mapped group");
        return Err(LdapError::NoMatchingGroup { user: username.to_string() });
    }
    tracing::debug!(username, ?groups, "LDAP sign-in accepted");
    Ok(LdapIdentity { username: username.to_string(), dn, groups, grants })
}

/// Re-reads the standing of `username`, a user who signed in before,
/// bound as the settings' service account (or anonymously). The group
/// base must be visible, or nothing is concluded: a service account that
/// cannot read the directory must not make every user look gone.
pub async fn lookup(cfg: &LdapConfig, username: &str) -> Result<Standing, LdapError> {
    if !valid_username(username) {
        return Ok(Standing::Gone);
    }
    let timeout = cfg.timeout();
    let from_ldap = |e: ldap3::LdapError| map_ldap_error(cfg, timeout, e);
    let (mut ldap, _driver) = connect(cfg, timeout).await?;
    if let (Some(dn), Some(pw)) = (&cfg.bind_dn, &cfg.bind_password) {
        let bind = ldap.with_timeout(timeout).simple_bind(dn, pw).await.map_err(from_ldap)?;
        if bind.rc != 0 {
            return Err(LdapError::Config(format!(
                "the service account {dn} cannot bind ({}): check bind_dn and bind_password",
                describe(&bind)
            )));
        }
    }
    let base_visible = |entries: &[ResultEntry], rc: u32| rc == 0 && !entries.is_empty();
    let ldap3::SearchResult(entries, result) = ldap
        .with_timeout(timeout)
        .search(&cfg.group_base, Scope::Base, "(objectClass=*)", vec!["1.1"])
        .await
        .map_err(from_ldap)?;
    if !base_visible(&entries, result.rc) {
        return Err(LdapError::Config(format!(
            "the re-check cannot read group_base '{}' ({}): give bind_dn and bind_password of an account that may \
             read users and groups",
            cfg.group_base,
            describe(&result)
        )));
    }
    let dn = cfg.user_dn(username);
    let ldap3::SearchResult(entries, result) =
        ldap.with_timeout(timeout).search(&dn, Scope::Base, "(objectClass=*)", vec!["1.1"]).await.map_err(from_ldap)?;
    match result.rc {
        0 if !entries.is_empty() => {}
        0 | 32 => return Ok(Standing::Gone),
        _ => return Err(LdapError::Protocol(format!("reading {dn} failed ({})", describe(&result)))),
    }
    let filter = cfg.group_filter_for(username, &dn);
    let ldap3::SearchResult(entries, result) = ldap
        .with_timeout(timeout)
        .search(&cfg.group_base, Scope::Subtree, &filter, vec!["cn"])
        .await
        .map_err(from_ldap)?;
    if result.rc != 0 {
        return Err(LdapError::Protocol(format!("the group search failed ({})", describe(&result))));
    }
    let _ = ldap.with_timeout(timeout).unbind().await;
    let mut groups = Vec::new();
    for entry in entries {
        let (_, cns) =
            entry_cns(entry).ok_or_else(|| LdapError::Protocol("a group search result could not be decoded".into()))?;
        groups.extend(cns);
    }
    Ok(Standing::Grants(cfg.grants_for(&groups)))
}

fn describe(r: &ldap3::LdapResult) -> String {
    if r.text.is_empty() {
        format!("result code {}", r.rc)
    } else {
        format!("result code {}: {}", r.rc, r.text)
    }
}

fn map_ldap_error(cfg: &LdapConfig, timeout: Duration, e: ldap3::LdapError) -> LdapError {
    use ldap3::LdapError as E;
    let unreachable = |detail: String| LdapError::Unreachable { url: cfg.url.clone(), detail };
    match e {
        E::Io { source } => unreachable(source.to_string()),
        E::Timeout { .. } => unreachable(format!("no answer within {} s", timeout.as_secs())),
        E::OpSend { .. } | E::ResultRecv { .. } | E::EndOfStream => {
            unreachable("the connection closed before the server answered".into())
        }
        E::Rustls { source } => {
            unreachable(format!("TLS failed ({source}); check that this host trusts the server's certificate"))
        }
        E::DNSName { source } => LdapError::Config(format!("url '{}' has no usable host name: {source}", cfg.url)),
        E::UrlParsing { source } => LdapError::Config(format!("url '{}' cannot be parsed: {source}", cfg.url)),
        E::UnknownScheme(s) => LdapError::Config(format!("url '{}' has unknown scheme '{s}'", cfg.url)),
        E::EmptyUnixPath | E::PortInUnixPath => LdapError::Config(format!("url '{}': {e}", cfg.url)),
        E::FilterParsing => LdapError::Config("group_filter is not a valid LDAP filter".into()),
        other => LdapError::Protocol(other.to_string()),
    }
}

/// The DN and `cn` values of one SearchResultEntry, decoded without
/// trusting its shape: `[APPLICATION 4] { objectName, { { type, {vals} } } }`.
fn entry_cns(entry: ResultEntry) -> Option<(String, Vec<String>)> {
    let tag = entry.0;
    if tag.id != 4 {
        return None;
    }
    let mut parts = constructed(tag)?.into_iter();
    let dn = String::from_utf8(primitive(parts.next()?)?).ok()?;
    let mut cns = Vec::new();
    for attr in constructed(parts.next()?)? {
        let mut attr = constructed(attr)?.into_iter();
        let name = String::from_utf8(primitive(attr.next()?)?).ok()?;
        let values = constructed(attr.next()?)?;
        if !(name.eq_ignore_ascii_case("cn") || name.eq_ignore_ascii_case("commonName") || name == "2.5.4.3") {
            continue;
        }
        for v in values {
            // A cn that is not UTF-8 cannot match a mapping.
            if let Ok(s) = String::from_utf8(primitive(v)?) {
                cns.push(s);
            }
        }
    }
    Some((dn, cns))
}

fn constructed(t: StructureTag) -> Option<Vec<StructureTag>> {
    match t.payload {
        PL::C(v) => Some(v),
        PL::P(_) => None,
    }
}

fn primitive(t: StructureTag) -> Option<Vec<u8>> {
    match t.payload {
        PL::P(v) => Some(v),
        PL::C(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LdapConfig {
        serde_json::from_str(
            r#"{
                "url": "ldap://127.0.0.1:3890",
                "user_dn_template": "uid={user},ou=people,dc=nubo,dc=test",
                "group_base": "ou=groups,dc=nubo,dc=test",
                "mappings": [
                    {"group": "devs", "project": "dev", "role": "member"},
                    {"group": "ops", "project": "ops", "role": "admin"}
                ]
            }"#,
        )
        .unwrap()
    }

    #[test]
    fn usernames() {
        for ok in ["alice", "a", "alice.smith", "a-b_c", "alice@nubo.test", "A1", &"x".repeat(64)] {
            assert!(valid_username(ok), "{ok}");
        }
        for bad in [
            "",
            &"x".repeat(65),
            "*)(uid=*",
            "alice)(|(uid=*",
            "uid=alice,dc=x",
            "alice bob",
            "al\\ice",
            "al\0ice",
            "élise",
            "alice\n",
            "a+b",
            "#a",
        ] {
            assert!(!valid_username(bad), "{bad:?}");
        }
    }

    #[test]
    fn dn_escaping() {
        assert_eq!(escape_dn_value("alice"), "alice");
        assert_eq!(escape_dn_value("a,b"), "a\\2cb");
        assert_eq!(escape_dn_value("a+b=c"), "a\\2bb\\3dc");
        assert_eq!(escape_dn_value("\"<>;\\"), "\\22\\3c\\3e\\3b\\5c");
        assert_eq!(escape_dn_value("#a#"), "\\23a#");
        assert_eq!(escape_dn_value(" a b "), "\\20a b\\20");
        assert_eq!(escape_dn_value(" "), "\\20");
        assert_eq!(escape_dn_value("a\0b"), "a\\00b");
        assert_eq!(escape_dn_value("é"), "é");
        assert_eq!(escape_dn_value(""), "");
    }

    #[test]
    fn filter_escaping() {
        assert_eq!(escape_filter_value("alice"), "alice");
        assert_eq!(escape_filter_value("*)(uid=*"), "\\2a\\29\\28uid=\\2a");
        assert_eq!(escape_filter_value("a\\b"), "a\\5cb");
        assert_eq!(escape_filter_value("a\0"), "a\\00");
        // A DN that was escaped for RFC 4514 stays one value in a filter.
        assert_eq!(escape_filter_value("uid=a\\2cb,dc=x"), "uid=a\\5c2cb,dc=x");
    }

    #[test]
    fn templates() {
        let cfg = config();
        assert_eq!(cfg.user_dn("alice"), "uid=alice,ou=people,dc=nubo,dc=test");
        assert_eq!(cfg.user_dn("a,b"), "uid=a\\2cb,ou=people,dc=nubo,dc=test");
        assert_eq!(
            cfg.group_filter_for("alice", "uid=alice,ou=people,dc=nubo,dc=test"),
            "(|(member=uid=alice,ou=people,dc=nubo,dc=test)(uniqueMember=uid=alice,ou=people,dc=nubo,dc=test)\
             (memberUid=alice))"
        );
        assert_eq!(
            cfg.group_filter_for("*", "uid=\\2a"),
            "(|(member=uid=\\5c2a)(uniqueMember=uid=\\5c2a)(memberUid=\\2a))"
        );
        // One pass: a value holding a placeholder is not expanded again.
        assert_eq!(fill("{a}{b}", &[("a", "{b}"), ("b", "x")]), "{b}x");
        assert_eq!(fill("{}{a", &[("a", "x")]), "{}{a");
        assert_eq!(fill("é{a}é", &[("a", "x")]), "éxé");
    }

    #[test]
    fn config_parsing() {
        let cfg = config();
        assert_eq!(cfg.group_filter, DEFAULT_GROUP_FILTER);
        assert_eq!(cfg.timeout(), Duration::from_secs(DEFAULT_TIMEOUT_SECS));
        assert_eq!(cfg.refresh(), Duration::from_secs(DEFAULT_REFRESH_SECS));
        cfg.validate().unwrap();
        // Unknown fields are refused, so a typo does not silently fall back to a default.
        let err = serde_json::from_str::<LdapConfig>(
            r#"{"url":"ldap://x","user_dn_template":"uid={user}","group_base":"o=x","mappings":[],"group_fliter":"(x=1)"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("group_fliter"), "{err}");
        let err = serde_json::from_str::<GroupMapping>(r#"{"group":"g","project":"p","role":"admin","extra":1}"#)
            .unwrap_err();
        assert!(err.to_string().contains("extra"), "{err}");
        // A round trip keeps everything.
        let json = serde_json::to_string(&cfg).unwrap();
        let back: LdapConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back.mappings, cfg.mappings);
        assert_eq!(back.url, cfg.url);
    }

    #[test]
    fn config_validation() {
        let check = |f: &dyn Fn(&mut LdapConfig), needle: &str| {
            let mut cfg = config();
            f(&mut cfg);
            match cfg.validate() {
                Err(LdapError::Config(m)) => assert!(m.contains(needle), "{m} lacks {needle}"),
                other => panic!("expected a Config error naming {needle}, got {other:?}"),
            }
        };
        check(&|c| c.url = "http://x".into(), "url");
        check(&|c| c.url = " ldap://x".into(), "url");
        check(&|c| c.user_dn_template = "uid=alice,dc=x".into(), "{user}");
        check(&|c| c.group_base = " ".into(), "group_base");
        check(&|c| c.group_filter = "member={dn}".into(), "group_filter");
        check(&|c| c.group_filter = "(&(member={dn})".into(), "group_filter");
        check(&|c| c.mappings.clear(), "mappings");
        check(&|c| c.mappings[0].role = "owner".into(), "admin, member, reader");
        check(&|c| c.mappings[0].project = "../etc".into(), "devs");
        check(&|c| c.mappings[0].group = "".into(), "group");
        check(&|c| c.timeout_secs = Some(0), "timeout_secs");
        check(&|c| c.refresh_secs = Some(0), "refresh_secs");
        check(&|c| c.bind_dn = Some("cn=nubo,dc=x".into()), "bind_password");
        check(
            &|c| {
                c.bind_dn = Some("cn=nubo,dc=x".into());
                c.bind_password = Some(String::new());
            },
            "bind_password",
        );
        let mut cfg = config();
        cfg.url = "LDAPS://ldap.example.org:636".into();
        cfg.timeout_secs = Some(2);
        cfg.validate().unwrap();
        assert_eq!(cfg.timeout(), Duration::from_secs(2));
    }

    #[test]
    fn strongest_role() {
        let grant =
            |project: &str, role: &str| GroupMapping { group: "g".into(), project: project.into(), role: role.into() };
        let id = LdapIdentity {
            username: "u".into(),
            dn: "uid=u".into(),
            groups: vec!["g".into()],
            grants: vec![grant("dev", "reader"), grant("dev", "admin"), grant("ops", "member")],
        };
        assert_eq!(id.role_in("dev"), Some("admin"));
        assert_eq!(id.role_in("ops"), Some("member"));
        assert_eq!(id.role_in("other"), None);
    }

    #[tokio::test]
    async fn refused_before_connecting() {
        // Nothing listens on port 1; these must fail without trying.
        let mut cfg = config();
        cfg.url = "ldap://127.0.0.1:1".into();
        for (user, pw) in [("alice", ""), ("*)(uid=*", "pw"), ("", "pw"), ("a,b", "pw")] {
            assert!(matches!(authenticate(&cfg, user, pw).await, Err(LdapError::InvalidCredentials)), "{user:?}");
        }
        assert!(matches!(authenticate(&cfg, "alice", "pw").await, Err(LdapError::Unreachable { .. })));
    }

    #[test]
    fn messages_say_what_to_do() {
        let e = LdapError::Unreachable { url: "ldap://h:1".into(), detail: "refused".into() };
        assert!(e.to_string().contains("ldap://h:1") && e.to_string().contains("check that the server"));
        assert!(LdapError::InvalidCredentials.to_string().contains("invalid username or password"));
        assert!(LdapError::NoMatchingGroup { user: "carol".into() }.to_string().contains("carol"));
    }
}

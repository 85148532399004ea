//! Pages of long lists, for every list that pages (REST `limit` and
//! `page_token`, EC2 `MaxResults` and `NextToken`): what a client may ask
//! for, the opaque token that says where the next page starts, and how a
//! page is cut from the rows read for it.
//!
//! Pages are cut by position, not by offset: a token holds the sort key
//! of the last row returned (`created_at_ms`, then `id`), and the next page
//! is the rows after it. Rows created meanwhile sort after every existing
//! one, so paging through a list that grows returns each row that was
//! there exactly once, and a page is read with an indexed range scan
//! whatever its depth. Lists whose store query takes no cursor yet (every
//! REST list but the instances') are read whole and cut here by the same
//! key ([`paged_list`]): the same pages and tokens, without the bounded read.

use base64::Engine;
use std::ops::RangeInclusive;

/// The most rows one page may hold.
pub const MAX_PAGE: u32 = 1000;

/// Tokens carry this version mark, so that their format can change
/// without misreading the old ones.
const TOKEN_VERSION: &str = "p1";

/// Where a page ends: the sort key of its last row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created_at_ms: i64,
    pub id: String,
}

impl Cursor {
    /// The opaque token for the page after this row.
    pub fn token(&self) -> String {
        let text = format!("{TOKEN_VERSION}:{}:{}", self.created_at_ms, self.id);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    }

    /// Reads a token made by [`Cursor::token`].
    pub fn from_token(token: &str) -> Result<Self, PageError> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| PageError::Token)?;
        let text = String::from_utf8(raw).map_err(|_| PageError::Token)?;
        let mut parts = text.splitn(3, ':');
        let (Some(TOKEN_VERSION), Some(at), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(PageError::Token);
        };
        let created_at_ms = at.parse().map_err(|_| PageError::Token)?;
        // Ids are short ASCII names (`i-...`); anything else was not made here.
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(PageError::Token);
        }
        Ok(Self { created_at_ms, id: id.to_string() })
    }
}

/// Why a page request was refused; the text says what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("{name} {given} is out of range: ask for {min} to {max} items per page")]
    Limit { name: &'static str, given: i64, min: u32, max: u32 },
    #[error(
        "the page token is not valid: pass the token of the previous answer unchanged, \
         or leave it out to start from the first page"
    )]
    Token,
}

/// What a client asked for: at most `limit` rows after `after`. No limit
/// and no token is the whole list in one answer, as before lists paged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: Option<u32>,
    pub after: Option<Cursor>,
}

impl PageRequest {
    /// Checks a request's page size (named `name` in errors) against
    /// `allowed` and reads its token. A token without a size continues
    /// with pages of the largest size allowed.
    pub fn parse(
        name: &'static str,
        limit: Option<i64>,
        token: Option<&str>,
        allowed: RangeInclusive<u32>,
    ) -> Result<Self, PageError> {
        let after = match token {
            None | Some("") => None,
            Some(t) => Some(Cursor::from_token(t)?),
        };
        let limit = match limit {
            Some(n) if n < i64::from(*allowed.start()) || n > i64::from(*allowed.end()) => {
                return Err(PageError::Limit { name, given: n, min: *allowed.start(), max: *allowed.end() })
            }
            Some(n) => Some(n as u32),
            None if after.is_some() => Some(*allowed.end()),
            None => None,
        };
        Ok(Self { limit, after })
    }

    /// How many rows to read for this page: one more than it holds, so
    /// that the extra row tells whether a next page exists.
    pub fn rows_to_read(&self) -> Option<i64> {
        self.limit.map(|l| i64::from(l) + 1)
    }

    /// Cuts the page from `rows` (read in sort order, at most
    /// [`PageRequest::rows_to_read`] of them): the page's rows and the token
    /// of the next page, if there is one.
    pub fn cut<T>(&self, mut rows: Vec<T>, cursor_of: impl Fn(&T) -> Cursor) -> (Vec<T>, Option<String>) {
        match self.limit {
            Some(limit) if rows.len() > limit as usize => {
                rows.truncate(limit as usize);
                let next = rows.last().map(|r| cursor_of(r).token());
                (rows, next)
            }
            _ => (rows, None),
        }
    }
}

/// The response header that carries the next page's token (REST). Lists
/// answer with a JSON array, as before they paged, so the token travels
/// beside the body; no header means this was the last page.
pub const NEXT_PAGE_HEADER: &str = "next-page-token";

/// A REST list's paging parameters: `?limit=N&page_token=T`.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// At most this many items (1 to 1000); the answer's `Next-Page-Token`
    /// header says where the next page starts. Without `limit` and
    /// `page_token` the answer is the whole list.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// The `Next-Page-Token` of the previous answer, unchanged.
    pub page_token: Option<String>,
}

impl ListQuery {
    /// The page asked for; a bad `limit` or token is a 400 saying what is allowed.
    pub fn page(&self) -> Result<PageRequest, crate::error::AppError> {
        let limit = match self.limit.as_deref() {
            None => None,
            Some(l) => Some(l.trim().parse::<i64>().map_err(|_| {
                crate::error::AppError::BadRequest(format!(
                    "limit '{}' is not a number: ask for 1 to {MAX_PAGE} items per page",
                    l.chars().take(40).collect::<String>()
                ))
            })?),
        };
        Ok(PageRequest::parse("limit", limit, self.page_token.as_deref(), 1..=MAX_PAGE)?)
    }
}

impl From<PageError> for crate::error::AppError {
    fn from(e: PageError) -> Self {
        crate::error::AppError::BadRequest(e.to_string())
    }
}

/// A page of a REST list: the items as a JSON array, and the next page's
/// token in [`NEXT_PAGE_HEADER`] when there is one.
pub fn paged_json<T: serde::Serialize>(items: Vec<T>, next: Option<String>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut response = axum::Json(items).into_response();
    if let Some(token) = next.and_then(|t| axum::http::HeaderValue::from_str(&t).ok()) {
        response.headers_mut().insert(NEXT_PAGE_HEADER, token);
    }
    response
}

/// A REST list that is read whole and paged here (lists whose store query
/// does not take a cursor yet). Without `limit` and token the answer is
/// `items` exactly as given, in their own order and with no header, as
/// before they paged; with them, the items are ordered by
/// (`created_at_ms`, `id`) and the page is the `limit` items after the
/// token's cursor, with the next page's token beside it.
pub fn paged_list<T: serde::Serialize>(
    items: Vec<T>,
    page: &PageRequest,
    cursor_of: impl Fn(&T) -> Cursor,
) -> axum::response::Response {
    let (items, next) = cut_in_memory(items, page, cursor_of);
    paged_json(items, next)
}

/// The page of `items` that `page` asks for, cut in memory; see [`paged_list`].
pub fn cut_in_memory<T>(
    items: Vec<T>,
    page: &PageRequest,
    cursor_of: impl Fn(&T) -> Cursor,
) -> (Vec<T>, Option<String>) {
    if page.limit.is_none() && page.after.is_none() {
        return (items, None);
    }
    let key = |c: Cursor| (c.created_at_ms, c.id);
    let mut keyed: Vec<((i64, String), T)> = items.into_iter().map(|t| (key(cursor_of(&t)), t)).collect();
    if let Some(after) = &page.after {
        let after = key(after.clone());
        keyed.retain(|(k, _)| *k > after);
    }
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(n) = page.rows_to_read() {
        keyed.truncate(usize::try_from(n).unwrap_or(usize::MAX));
    }
    page.cut(keyed.into_iter().map(|(_, t)| t).collect(), cursor_of)
}

/// An item of a list that is paged by (`created_at_ms`, `id`).
pub trait Listed {
    fn cursor(&self) -> Cursor;
}

/// The views whose REST lists are read whole and paged by [`Paged`].
macro_rules! listed {
    ($($view:ty),+) => {
        $(impl Listed for $view {
            fn cursor(&self) -> Cursor {
                Cursor::of(self.created_at_ms, &self.id)
            }
        })+
    };
}

listed!(
    nubo_api::automation::Policy,
    nubo_api::automation::Group,
    nubo_api::views::Image,
    nubo_api::lb::LoadBalancer,
    nubo_api::views::Migration,
    nubo_api::monitoring::AlertRule,
    nubo_api::views::Network,
    nubo_api::views::Keypair,
    nubo_api::views::Volume,
    nubo_api::views::Snapshot
);

/// The page a REST list is asked for (`?limit=&page_token=`), checked
/// before the list is read: a bad one is a 400 even for an empty list.
pub struct Page(pub PageRequest);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Page {
    type Rejection = crate::error::AppError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        let crate::error::ApiQuery(q) = crate::error::ApiQuery::<ListQuery>::from_request_parts(parts, state).await?;
        Ok(Page(q.page()?))
    }
}

/// A REST list's answer: the items read whole, paged here as
/// [`paged_list`] says.
pub struct Paged<T>(pub Vec<T>, pub Page);

impl<T: Listed + serde::Serialize> axum::response::IntoResponse for Paged<T> {
    fn into_response(self) -> axum::response::Response {
        let Paged(items, Page(page)) = self;
        paged_list(items, &page, T::cursor)
    }
}

impl Cursor {
    /// The cursor of an item with this creation time and id.
    pub fn of(created_at_ms: i64, id: impl ToString) -> Self {
        Self { created_at_ms, id: id.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(at: i64, id: &str) -> Cursor {
        Cursor { created_at_ms: at, id: id.into() }
    }

    #[test]
    fn tokens_round_trip_and_refuse_what_they_did_not_make() {
        let c = cursor(1_700_000_000_123, "i-0123456789abcdef0");
        assert_eq!(Cursor::from_token(&c.token()).unwrap(), c);
        for bad in [
            "zzz",
            "nubo-offset-2",
            "cDE6eDppLTE",
            &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("p1:5:i 1"),
        ] {
            assert_eq!(Cursor::from_token(bad), Err(PageError::Token), "{bad}");
        }
    }

    #[test]
    fn limits_outside_the_range_are_refused_with_the_range() {
        let e = PageRequest::parse("limit", Some(0), None, 1..=MAX_PAGE).unwrap_err();
        assert_eq!(e.to_string(), "limit 0 is out of range: ask for 1 to 1000 items per page");
        assert!(PageRequest::parse("limit", Some(1001), None, 1..=MAX_PAGE).is_err());
        assert_eq!(PageRequest::parse("limit", None, None, 1..=MAX_PAGE).unwrap(), PageRequest::default());
        // A token alone continues with the largest pages.
        let t = cursor(1, "i-a").token();
        let r = PageRequest::parse("limit", None, Some(&t), 5..=MAX_PAGE).unwrap();
        assert_eq!((r.limit, r.after), (Some(MAX_PAGE), Some(cursor(1, "i-a"))));
    }

    #[test]
    fn a_page_is_cut_from_one_extra_row() {
        let req = PageRequest { limit: Some(2), after: None };
        assert_eq!(req.rows_to_read(), Some(3));
        let rows = vec![cursor(1, "i-a"), cursor(2, "i-b"), cursor(3, "i-c")];
        let (page, next) = req.cut(rows.clone(), Clone::clone);
        assert_eq!(page, rows[..2]);
        assert_eq!(Cursor::from_token(&next.unwrap()).unwrap(), rows[1]);
        let (page, next) = req.cut(rows[..2].to_vec(), Clone::clone);
        assert_eq!((page.len(), next), (2, None));
        let (page, next) = PageRequest::default().cut(rows, Clone::clone);
        assert_eq!((page.len(), next), (3, None));
    }

    #[test]
    fn in_memory_pages_keep_the_whole_list_as_it_was_and_order_pages_by_time_then_id() {
        // Listed by name today: (3, b), (1, c), (1, a).
        let rows = vec![cursor(3, "i-b"), cursor(1, "i-c"), cursor(1, "i-a")];
        let (whole, next) = cut_in_memory(rows.clone(), &PageRequest::default(), Clone::clone);
        assert_eq!((whole, next), (rows.clone(), None));
        let first = PageRequest { limit: Some(2), after: None };
        let (page, next) = cut_in_memory(rows.clone(), &first, Clone::clone);
        assert_eq!(page, vec![cursor(1, "i-a"), cursor(1, "i-c")]);
        let after = Cursor::from_token(&next.unwrap()).unwrap();
        let (page, next) = cut_in_memory(rows, &PageRequest { limit: Some(2), after: Some(after) }, Clone::clone);
        assert_eq!((page, next), (vec![cursor(3, "i-b")], None));
    }
}

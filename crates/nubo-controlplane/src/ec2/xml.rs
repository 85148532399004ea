//! XML responses in the shapes botocore's EC2 parser reads: one root
//! element `<ActionResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">`
//! with a `requestId`, members by their `locationName`, lists as `<item>`
//! elements, booleans as `true`/`false`, times in ISO 8601 (UTC), and the
//! error document `<Response><Errors><Error>...`.

use std::fmt::Write;

pub const NAMESPACE: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";

/// One element: text, or child elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct El {
    name: &'static str,
    text: Option<String>,
    children: Vec<El>,
}

impl El {
    pub fn new(name: &'static str) -> Self {
        Self { name, text: None, children: Vec::new() }
    }

    /// `<item>`, the element of every list.
    pub fn item() -> Self {
        Self::new("item")
    }

    pub fn text(name: &'static str, value: impl std::fmt::Display) -> Self {
        Self { name, text: Some(value.to_string()), children: Vec::new() }
    }

    /// A list: `<name><item>..</item>...</name>` of the given items.
    pub fn list(name: &'static str, items: impl IntoIterator<Item = El>) -> Self {
        Self { name, text: None, children: items.into_iter().collect() }
    }

    pub fn child(mut self, c: El) -> Self {
        self.children.push(c);
        self
    }

    /// Adds a text child.
    pub fn field(self, name: &'static str, value: impl std::fmt::Display) -> Self {
        self.child(El::text(name, value))
    }

    /// Adds a text child when there is a value.
    pub fn opt(self, name: &'static str, value: Option<impl std::fmt::Display>) -> Self {
        match value {
            Some(v) => self.field(name, v),
            None => self,
        }
    }

    /// The same element under another name (an `<item>` of a list
    /// answered alone, as CreateVpc's `<vpc>`).
    pub fn renamed(mut self, name: &'static str) -> Self {
        self.name = name;
        self
    }

    /// The children alone (members that go right under the response root).
    pub fn into_children(self) -> Vec<El> {
        self.children
    }

    fn render(&self, out: &mut String) {
        let _ = write!(out, "<{}>", self.name);
        if let Some(t) = &self.text {
            escape_into(t, out);
        }
        for c in &self.children {
            c.render(out);
        }
        let _ = write!(out, "</{}>", self.name);
    }
}

/// A `tagSet` from (key, value) pairs.
pub fn tag_set<'a>(tags: impl IntoIterator<Item = (&'a String, &'a String)>) -> El {
    El::list("tagSet", tags.into_iter().map(|(k, v)| El::item().field("key", k).field("value", v)))
}

/// Text with `&`, `<` and `>` escaped (quotes need no escaping outside
/// attributes, and no attribute carries user text); characters XML 1.0
/// cannot carry at all (most control characters) are dropped.
pub(crate) fn escape_into(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => {}
            c => out.push(c),
        }
    }
}

/// The whole answer to `action`.
pub fn response(action: &str, request_id: &str, body: Vec<El>) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = write!(out, "<{action}Response xmlns=\"{NAMESPACE}\"><requestId>{request_id}</requestId>");
    for el in &body {
        el.render(&mut out);
    }
    let _ = write!(out, "</{action}Response>");
    out
}

/// The error document EC2 sends (note `RequestID`, not `requestId`).
pub fn error(code: &str, message: &str, request_id: &str) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>");
    escape_into(code, &mut out);
    out.push_str("</Code><Message>");
    escape_into(message, &mut out);
    let _ = write!(out, "</Message></Error></Errors><RequestID>{request_id}</RequestID></Response>");
    out
}

/// Milliseconds since the epoch as ISO 8601 in UTC, `2024-05-01T12:00:00.000Z`.
pub fn time(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// A random request id shaped like EC2's (a UUID).
pub fn request_id() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!("{}-{}-4{}-{}-{}", &h[0..8], &h[8..12], &h[13..16], &h[16..20], &h[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_escaped_items() {
        let body =
            vec![El::list("instancesSet", [El::item().field("instanceId", "i-1").field("x", "<a & 'b'>\u{1b}")])];
        let doc = response("RunInstances", "rid", body);
        assert!(doc.contains(
            "<RunInstancesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>rid</requestId>"
        ));
        assert!(doc.contains(
            "<instancesSet><item><instanceId>i-1</instanceId><x>&lt;a &amp; 'b'&gt;</x></item></instancesSet>"
        ));
        let e = error("AuthFailure", "no <way>", "rid");
        assert!(e.ends_with("<Response><Errors><Error><Code>AuthFailure</Code><Message>no &lt;way&gt;</Message></Error></Errors><RequestID>rid</RequestID></Response>"));
    }

    #[test]
    fn times_are_iso8601_utc() {
        assert_eq!(time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(time(1_440_938_160_123), "2015-08-30T12:36:00.123Z");
        assert_eq!(request_id().len(), 36);
    }
}
